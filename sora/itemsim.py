"""Item–item similarity, shared by the graph builder, the EASE baseline and Sora's item–item head.

Pure numpy / scipy / torch; no DGL, so serving and evaluation can use it.
Every function returns a sparse top-k neighbour list as COO arrays (src, dst, weight) with
``src`` the item whose neighbours are listed; self pairs are dropped.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]  # (src, dst, weight)


def interaction_matrix(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary (U, I) matrix; duplicate pairs count once."""
    data = np.ones(len(users), dtype=np.float32)
    x = sp.csr_matrix((data, (users, items)), shape=(num_users, num_items))
    x.data[:] = 1.0
    return x


def ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019) closed form: B = I - P / diag(P), P = (XᵀX + λI)⁻¹, diag(B) = 0. (I, I) dense."""
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def topk_dense(weights: np.ndarray, k: int, positive_only: bool = False) -> Edges:
    """Keep each row's k largest entries of a dense (I, I) matrix (diagonal excluded)."""
    w = torch.from_numpy(weights).clone()
    w.fill_diagonal_(-float("inf"))
    k = min(k, w.shape[1] - 1)
    if k <= 0:
        return _empty()
    vals, idx = torch.topk(w, k, dim=1)
    src = np.repeat(np.arange(w.shape[0]), k)
    dst, val = idx.reshape(-1).numpy(), vals.reshape(-1).numpy()
    keep = np.isfinite(val) & ((val > 0) if positive_only else np.ones_like(val, dtype=bool))
    return src[keep], dst[keep], val[keep].astype(np.float32)


def knn_cosine(vectors: np.ndarray, k: int, batch_size: int = 1024, restrict_to: np.ndarray | None = None) -> Edges:
    """Exact cosine kNN, computed ``batch_size`` rows at a time so memory stays O(batch × I).

    ``restrict_to`` (optional boolean mask over items) limits which items may be neighbours.
    """
    v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    v = torch.nn.functional.normalize(v, dim=1)
    n = v.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return _empty()
    allowed = None if restrict_to is None else torch.from_numpy(np.asarray(restrict_to, dtype=bool))
    srcs, dsts, vals = [], [], []
    for s in range(0, n, batch_size):
        sims = v[s:s + batch_size] @ v.T  # (b, I)
        rows = torch.arange(s, min(s + batch_size, n))
        sims[torch.arange(len(rows)), rows] = -float("inf")
        if allowed is not None:
            sims[:, ~allowed] = -float("inf")
        val, idx = torch.topk(sims, k, dim=1)
        srcs.append(rows.repeat_interleave(k).numpy())
        dsts.append(idx.reshape(-1).numpy())
        vals.append(val.reshape(-1).numpy())
    src, dst, val = np.concatenate(srcs), np.concatenate(dsts), np.concatenate(vals)
    keep = np.isfinite(val)
    return src[keep], dst[keep], val[keep].astype(np.float32)


def cooccurrence_topk(x: sp.csr_matrix, k: int) -> Edges:
    """Top-k items by co-interaction count (XᵀX, sparse), per item."""
    c = (x.T @ x).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    srcs, dsts, vals = [], [], []
    for i in range(c.shape[0]):
        lo, hi = c.indptr[i], c.indptr[i + 1]
        if hi == lo:
            continue
        cols, data = c.indices[lo:hi], c.data[lo:hi]
        top = np.argsort(-data, kind="stable")[:k]
        srcs.append(np.full(len(top), i))
        dsts.append(cols[top])
        vals.append(data[top])
    if not srcs:
        return _empty()
    return np.concatenate(srcs), np.concatenate(dsts), np.concatenate(vals).astype(np.float32)


def _empty() -> Edges:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
