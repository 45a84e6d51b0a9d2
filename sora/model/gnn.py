"""The graph encoder: normalised message passing over every edge type (LightGCN-style).

Each layer sends ``h_src * norm`` along every edge type the encoder was built with and sums what a
node receives across edge types; item↔item and user↔user edge types are scaled by ``side_weight``
so interaction edges stay the main signal. The output is the mean of the layer outputs (layer 0
included), as in LightGCN. No weights are learned here: the learned parts are the inputs (id
embeddings, text projection) and the fusion that follows.

Two backends behind one API, picked by the graph passed to :meth:`GraphEncoder.forward`:

- a :class:`TorchGraph` (what training uses): one sparse (U+I, U+I) adjacency in CSR, propagated
  with ``torch`` sparse-dense matmul on whatever device the tensors live on. PyPI's DGL is CPU-only
  (``graph.to('cuda')`` raises "Device API cuda is not enabled"), so this is what runs on a GPU.
- a DGL heterograph: ``multi_update_all(..., "sum")``, CPU only; the reference the torch backend
  is tested against (tests/test_gnn.py).

DGL still builds the heterograph and its normalisation (:mod:`sora.model.graph`); :meth:`TorchGraph.from_dgl`
reads them once. Letters: U users, I items, N = U + I nodes, E edges, D dim.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from sora.model.graph import import_dgl

EType = tuple[str, str, str]


class _SpMM(torch.autograd.Function):
    """y = A x with a fixed sparse A; the backward uses a precomputed Aᵀ (a CSR transpose is not free)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, ctx.a_t @ grad.contiguous()


@dataclass
class TorchGraph:
    """Every edge type of a heterograph as one (N, N) adjacency, N = U + I (users first, then items).

    Edges are kept in DGL's edge-id order per type (so per-type ``edge_keep`` masks line up); ``slot``
    maps each edge to its entry of the adjacency's CSR (rows = destination), ``slot_t`` to its entry of
    the transpose's. Two edges joining the same pair (an item pair that is both a text and a
    co-occurrence neighbour) share an entry whose value is their sum, DGL's cross-type "sum": the
    CSR stays coalesced, which every sparse backend (MKL, cuSPARSE) accepts.
    """

    num_users: int
    num_items: int
    canonical_etypes: list[EType]
    offsets: list[int]  # edges of canonical_etypes[k] are [offsets[k], offsets[k+1]) in the flat arrays
    norm: torch.Tensor  # (E,) LightGCN-normalised weight, flat in etype order
    crow: torch.Tensor  # (N+1,) CSR of A (dst × src)
    col: torch.Tensor  # (nnz,) source node of each CSR entry, nnz ≤ E
    slot: torch.Tensor  # (E,) CSR entry of each edge
    crow_t: torch.Tensor  # (N+1,) CSR of Aᵀ (src × dst)
    col_t: torch.Tensor
    slot_t: torch.Tensor
    #: (etypes, side_weight) → (A, Aᵀ): the unperturbed adjacency is built once, not every step
    _adjacency: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_edges(cls, num_users: int, num_items: int,
                   edges: dict[EType, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> TorchGraph:
        """From per-type (src, dst, norm) index tensors (node indices local to their type)."""
        base = {"user": 0, "item": num_users}
        etypes = list(edges)
        offsets = [0]
        for et in etypes:
            offsets.append(offsets[-1] + len(edges[et][0]))
        empty = torch.zeros(0, dtype=torch.long)
        src = torch.cat([edges[et][0].long() + base[et[0]] for et in etypes]) if etypes else empty
        dst = torch.cat([edges[et][1].long() + base[et[2]] for et in etypes]) if etypes else empty
        norm = torch.cat([edges[et][2].float() for et in etypes]) if etypes else torch.zeros(0)
        n = num_users + num_items
        crow, col, slot = _csr_structure(dst, src, n)
        crow_t, col_t, slot_t = _csr_structure(src, dst, n)
        return cls(num_users, num_items, etypes, offsets, norm, crow, col, slot, crow_t, col_t, slot_t)

    @classmethod
    def from_dgl(cls, graph) -> TorchGraph:
        """Read the structure and ``norm`` of every edge type of a DGL heterograph (built on CPU)."""
        edges = {}
        for et in graph.canonical_etypes:
            s, d = graph.edges(etype=et, order="eid")
            edges[et] = (s, d, graph.edges[et].data["norm"])
        return cls.from_edges(graph.num_nodes("user"), graph.num_nodes("item"), edges)

    @property
    def device(self) -> torch.device:
        return self.norm.device

    def num_edges(self, etype: EType) -> int:
        k = self.canonical_etypes.index(etype)
        return self.offsets[k + 1] - self.offsets[k]

    def to(self, device: torch.device | str) -> TorchGraph:
        """A copy on ``device`` (the graph moves to the training device in one call)."""
        moved = {name: getattr(self, name).to(device) for name in
                 ("norm", "crow", "col", "slot", "crow_t", "col_t", "slot_t")}
        return TorchGraph(self.num_users, self.num_items, list(self.canonical_etypes), list(self.offsets), **moved)

    def edge_weights(self, etypes: list[EType], side_weight: float,
                     edge_keep: dict[EType, torch.Tensor] | None = None) -> torch.Tensor:
        """(E,) message weights: ``norm``, × side_weight on same-type edges, × keep mask; 0 for etypes not used."""
        parts = []
        for k, et in enumerate(self.canonical_etypes):
            w = self.norm[self.offsets[k]:self.offsets[k + 1]]
            if et not in etypes:
                w = torch.zeros_like(w)
            elif et[0] == et[2]:
                w = w * side_weight
            if edge_keep is not None and et in edge_keep:
                w = w * edge_keep[et].to(w.dtype)
            parts.append(w)
        return torch.cat(parts) if parts else self.norm

    def fixed_adjacency(self, etypes: list[EType], side_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Aᵀ) without perturbation, built on the first call and reused (the weights never change)."""
        key = (tuple(etypes), float(side_weight))
        if key not in self._adjacency:
            self._adjacency[key] = self.adjacency(self.edge_weights(list(etypes), side_weight))
        return self._adjacency[key]

    def adjacency(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Aᵀ) as sparse CSR tensors (N, N) carrying ``weights`` (flat etype order)."""
        n = self.num_users + self.num_items
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are tested
            warnings.simplefilter("ignore", UserWarning)
            a = torch.sparse_csr_tensor(self.crow, self.col, _summed(weights, self.slot, len(self.col)), (n, n))
            a_t = torch.sparse_csr_tensor(self.crow_t, self.col_t, _summed(weights, self.slot_t, len(self.col_t)),
                                          (n, n))
        return a, a_t


def _csr_structure(rows: torch.Tensor, cols: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coalesced CSR (crow, col) of the (n, n) pattern of ``(rows, cols)`` and each pair's entry index."""
    uniq, slot = torch.unique(rows * n + cols, sorted=True, return_inverse=True)
    crow = torch.zeros(n + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(uniq // n, minlength=n), 0)
    return crow, (uniq % n).contiguous(), slot


def _summed(weights: torch.Tensor, slot: torch.Tensor, nnz: int) -> torch.Tensor:
    """(nnz,) CSR values: the weights of the edges sharing an entry, summed."""
    return torch.zeros(nnz, dtype=weights.dtype, device=weights.device).index_add_(0, slot, weights)


class GraphEncoder(nn.Module):
    """(U, D), (I, D) node inputs → (U, D), (I, D) graph embeddings, over a :class:`TorchGraph` or a DGL graph."""

    def __init__(self, etypes: list[EType], num_layers: int, side_weight: float = 0.5):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.etypes = list(etypes)
        self.num_layers = num_layers
        self.side_weight = side_weight

    def forward(self, graph, h_user: torch.Tensor, h_item: torch.Tensor,
                edge_keep: dict[EType, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``edge_keep`` (per edge type, (E_t,) floats in edge-id order) drops edges for perturbed views."""
        if isinstance(graph, TorchGraph):
            return self._forward_torch(graph, h_user, h_item, edge_keep)
        return self._forward_dgl(graph, h_user, h_item, edge_keep)

    def _forward_torch(self, graph: TorchGraph, h_user, h_item, edge_keep) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_layers == 0:
            return h_user, h_item
        a, a_t = (graph.fixed_adjacency(self.etypes, self.side_weight) if edge_keep is None
                  else graph.adjacency(graph.edge_weights(self.etypes, self.side_weight, edge_keep)))
        h = torch.cat([h_user, h_item])  # (N, D)
        total = h
        for _ in range(self.num_layers):
            h = _SpMM.apply(a, a_t, h)
            total = total + h
        total = total / (self.num_layers + 1)
        return total[:graph.num_users], total[graph.num_users:]

    def _forward_dgl(self, graph, h_user, h_item, edge_keep) -> tuple[torch.Tensor, torch.Tensor]:
        fn = import_dgl().function
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
