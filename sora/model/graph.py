"""The DGL heterograph of users and items (DESIGN.md §5.2).

Node types ``user`` and ``item``. Edge types, each carrying ``w`` (raw weight) and ``norm``
(weight / sqrt(weighted out-degree of src × weighted in-degree of dst), LightGCN's normalisation
generalised to weights):

- ``interacts`` user→item and ``interacted_by`` item→user: training interactions (duplicates once)
- ``text_sim`` item→item: text-embedding kNN, symmetrised; the only edges a cold item has
- ``cooccur`` item→item: co-interaction top-k, symmetrised (optional)
- ``social`` user→user: the ``user_edges`` table or co-interaction kNN, symmetrised (optional)

Only training interactions enter the graph, so valid/test never leak into message passing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from sora.config import GraphConfig
from sora.model.itemsim import Edges, cooccurrence_topk, interaction_matrix, knn_cosine, knn_cosine_ivf

log = logging.getLogger(__name__)

USER_ITEM, ITEM_USER = ("user", "interacts", "item"), ("item", "interacted_by", "user")
TEXT_SIM, COOCCUR, SOCIAL = ("item", "text_sim", "item"), ("item", "cooccur", "item"), ("user", "social", "user")
ALL_ETYPES = (USER_ITEM, ITEM_USER, TEXT_SIM, COOCCUR, SOCIAL)


def import_dgl():
    """Import DGL with the PyTorch backend, without DGL writing a config file to pick one."""
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import dgl

    return dgl


def item_edge_kinds(cfg: GraphConfig) -> set[str]:
    kinds = {k.strip() for k in cfg.item_edges.split(",") if k.strip() and k.strip() != "none"}
    unknown = kinds - {"text", "cooccur", "ease"}
    if unknown:
        raise ValueError(f"graph.item_edges: unknown kind(s) {sorted(unknown)}; use text, cooccur, ease or none")
    return kinds


def symmetrise(edges: Edges, self_loops: bool = False, n: int | None = None) -> Edges:
    """Union of (a→b) and (b→a); the max weight wins for a pair listed twice; self-loops dropped unless asked."""
    src, dst, w = edges
    s, d, ww = np.r_[src, dst], np.r_[dst, src], np.r_[w, w]
    if not self_loops:
        keep = s != d
        s, d, ww = s[keep], d[keep], ww[keep]
    elif n is not None:
        s, d, ww = np.r_[s, np.arange(n)], np.r_[d, np.arange(n)], np.r_[ww, np.ones(n, np.float32)]
    if len(s) == 0:
        return s.astype(np.int64), d.astype(np.int64), ww.astype(np.float32)
    order = np.lexsort((-ww, d, s))
    s, d, ww = s[order], d[order], ww[order]
    first = np.r_[True, (s[1:] != s[:-1]) | (d[1:] != d[:-1])]
    return s[first].astype(np.int64), d[first].astype(np.int64), ww[first].astype(np.float32)


def build_graph(train_users: np.ndarray, train_items: np.ndarray, num_users: int, num_items: int,
                text_vectors: np.ndarray | None, cfg: GraphConfig, user_edges: Edges | None = None,
                x: sp.csr_matrix | None = None, stage: Callable[[str], contextlib.AbstractContextManager] | None = None):
    """Build the heterograph from training interactions (index arrays) and item text vectors (I, T).

    ``x`` is the (U, I) training matrix when the caller already has it (it is built once per
    training run); ``stage(name)`` is a context manager that times each edge family.
    """
    dgl = import_dgl()
    stage = stage or (lambda name: contextlib.nullcontext())
    if x is None:
        x = interaction_matrix(train_users, train_items, num_users, num_items)
    x = x.tocsr()
    coo = x.tocoo()
    data: dict[tuple[str, str, str], Edges] = {
        USER_ITEM: (coo.row.astype(np.int64), coo.col.astype(np.int64), np.ones(coo.nnz, np.float32)),
        ITEM_USER: (coo.col.astype(np.int64), coo.row.astype(np.int64), np.ones(coo.nnz, np.float32)),
    }
    del coo
    kinds = item_edge_kinds(cfg)
    if cfg.user_edges not in ("given", "knn", "none"):
        raise ValueError(f"graph.user_edges must be given, knn or none, got {cfg.user_edges!r}")
    if "text" in kinds and text_vectors is not None and cfg.item_knn_k > 0:
        with stage("text_knn"):
            if num_items > cfg.knn_exact_max_items:  # exact kNN is I² work: ~15 min at 200k items on 2 cores
                src, dst, w = knn_cosine_ivf(text_vectors, cfg.item_knn_k)
            else:
                src, dst, w = knn_cosine(text_vectors, cfg.item_knn_k, batch_size=cfg.knn_batch_size)
            data[TEXT_SIM] = symmetrise((src, dst, np.clip(w, 1e-3, None)), cfg.self_loops, num_items)
    if "cooccur" in kinds and cfg.cooccur_k > 0:
        with stage("cooccur_edges"):
            data[COOCCUR] = symmetrise(cooccurrence_topk(x, cfg.cooccur_k), cfg.self_loops, num_items)
    if cfg.user_edges == "given" and user_edges is not None:
        with stage("user_edges"):
            data[SOCIAL] = symmetrise(user_edges, cfg.self_loops, num_users)
    elif cfg.user_edges == "knn" and cfg.user_knn_k > 0:
        with stage("user_edges"):
            data[SOCIAL] = symmetrise(cooccurrence_topk(x.T.tocsr(), cfg.user_knn_k), cfg.self_loops, num_users)
    with stage("heterograph"):
        graph = dgl.heterograph(
            {etype: (torch.from_numpy(s), torch.from_numpy(d)) for etype, (s, d, _) in data.items()},
            num_nodes_dict={"user": num_users, "item": num_items},
        )
        for etype, (_, _, w) in data.items():
            graph.edges[etype].data["w"] = torch.from_numpy(w)
            graph.edges[etype].data["norm"] = _normalised(graph, etype, torch.from_numpy(w))
    log.info("graph: %s", {e[1]: graph.num_edges(e) for e in graph.canonical_etypes})
    return graph


def _normalised(graph, etype, w: torch.Tensor) -> torch.Tensor:
    src, dst = graph.edges(etype=etype)
    src_type, _, dst_type = graph.to_canonical_etype(etype)
    out_deg = torch.zeros(graph.num_nodes(src_type)).index_add_(0, src, w)
    in_deg = torch.zeros(graph.num_nodes(dst_type)).index_add_(0, dst, w)
    return w / torch.sqrt(out_deg[src].clamp(min=1e-12) * in_deg[dst].clamp(min=1e-12))


def map_user_edges(user_edges_df, user_index: dict[str, int]) -> Edges | None:
    """``user_edges`` table → index edges; rows naming users outside the split are dropped."""
    if user_edges_df is None or len(user_edges_df) == 0:
        return None
    s = user_edges_df["src_user_id"].astype(str).map(user_index)
    d = user_edges_df["dst_user_id"].astype(str).map(user_index)
    keep = s.notna() & d.notna()
    w = (user_edges_df["weight"].astype(float) if "weight" in user_edges_df else np.ones(len(user_edges_df)))
    return (s[keep].to_numpy(np.int64), d[keep].to_numpy(np.int64), np.asarray(w)[keep.to_numpy()].astype(np.float32))
