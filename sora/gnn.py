"""The DGL graph encoder: normalised message passing over every edge type (LightGCN-style).

Each layer sends ``h_src * norm`` along every edge type the encoder was built with and sums what a
node receives across edge types (``multi_update_all(..., "sum")``); item↔item and user↔user edge
types are scaled by ``side_weight`` so interaction edges stay the main signal. The output is the
mean of the layer outputs (layer 0 included), as in LightGCN. No weights are learned here: the
learned parts are the inputs (id embeddings, text projection) and the fusion that follows.
"""

from __future__ import annotations

import torch
from torch import nn

from sora.graph import import_dgl


class GraphEncoder(nn.Module):
    """(U, D), (I, D) node inputs → (U, D), (I, D) graph embeddings."""

    def __init__(self, etypes: list[tuple[str, str, str]], num_layers: int, side_weight: float = 0.5):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.etypes = list(etypes)
        self.num_layers = num_layers
        self.side_weight = side_weight

    def forward(self, graph, h_user: torch.Tensor, h_item: torch.Tensor,
                edge_keep: dict[tuple[str, str, str], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``edge_keep`` (per edge type, 0/1 floats) drops edges for perturbed views (contrastive loss)."""
        dgl = import_dgl()
        fn = dgl.function
        layers_u, layers_i = [h_user], [h_item]
        feats = {"user": h_user, "item": h_item}
        for _ in range(self.num_layers):
            with graph.local_scope():
                for ntype, h in feats.items():
                    graph.nodes[ntype].data["h"] = h
                funcs = {}
                for etype in self.etypes:
                    w = graph.edges[etype].data["norm"]
                    if etype[0] == etype[2]:
                        w = w * self.side_weight
                    if edge_keep is not None and etype in edge_keep:
                        w = w * edge_keep[etype]
                    graph.edges[etype].data["_w"] = w
                    funcs[etype] = (fn.u_mul_e("h", "_w", "m"), fn.sum("m", "h_new"))
                graph.multi_update_all(funcs, "sum")
                feats = {nt: graph.nodes[nt].data.get("h_new", torch.zeros_like(feats[nt])) for nt in ("user", "item")}
            layers_u.append(feats["user"])
            layers_i.append(feats["item"])
        return torch.stack(layers_u).mean(0), torch.stack(layers_i).mean(0)
