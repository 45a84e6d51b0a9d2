"""Item–item similarity, shared by the graph builder, the EASE baseline and Sora's item–item head.

Pure numpy / scipy / torch (and faiss, through :mod:`sora.model.ann`, for the large-catalogue text kNN); no DGL,
so serving and evaluation can use it.
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
    """EASE (Steck 2019) closed form: B = I - P / diag(P), P = (XᵀX + λI)⁻¹, diag(B) = 0. (I, I) dense.

    Only the items ``x`` has interactions for enter the inverse: an item without any is its own block of
    XᵀX + λI, so its row and column of B are 0 exactly. P comes from a Cholesky factor (XᵀX + λI is
    symmetric positive definite), about 1.5× faster than a general inverse, in place where it can be.
    """
    n = x.shape[1]
    active = np.flatnonzero(np.diff(x.tocsc().indptr))
    xa = x[:, active] if len(active) < n else x
    gram = np.asarray((xa.T @ xa).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += lam
    p = spd_inverse(gram.T)  # symmetric: its transpose is the Fortran-ordered array LAPACK overwrites in place
    p /= -np.diag(p)[None, :]
    p[np.diag_indices_from(p)] = 0.0
    if len(active) == n:
        return p.astype(np.float32)
    b = np.zeros((n, n), np.float32)
    b[np.ix_(active, active)] = p
    return b


def spd_inverse(a: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite float64 matrix (overwritten) through LAPACK's potrf/potri."""
    from scipy.linalg import lapack

    if not len(a):
        return a
    c, info = lapack.dpotrf(a, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        c, info = lapack.dpotri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is not positive definite (LAPACK info {info})")
    for start in range(0, len(c), 1024):  # potri fills the upper triangle; mirror it in blocks of rows
        stop = min(start + 1024, len(c))
        c[start:stop, :start] = c[:start, start:stop].T
        block = c[start:stop, start:stop]
        block[np.tril_indices_from(block, -1)] = block.T[np.tril_indices_from(block, -1)]
    return c.T if not c.flags.c_contiguous else c  # LAPACK works in Fortran order; symmetric, so .T is C order


def ease_score_fn(x: sp.csr_matrix, b: np.ndarray):
    """Score function of fitted EASE weights ``b``: user indices (B,) → their rows of X·B as a (B, I) tensor."""
    return lambda users: torch.from_numpy(np.asarray(x[users] @ b, dtype=np.float32))


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
    """Exact cosine kNN, ``batch_size`` rows at a time (fewer for huge catalogues): memory O(batch × I).

    ``restrict_to`` (optional boolean mask over items) limits which items may be neighbours.
    """
    v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    v = torch.nn.functional.normalize(v, dim=1)
    n = v.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return _empty()
    allowed = None if restrict_to is None else torch.from_numpy(np.asarray(restrict_to, dtype=bool))
    batch_size = max(1, min(batch_size, 50_000_000 // n))  # a (batch, I) block stays under ~200 MB
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


def knn_cosine_ivf(vectors: np.ndarray, k: int, nlist: int = 0, nprobe: int = 4, seed: int = 0,
                   batch_size: int = 65_536) -> Edges:
    """Approximate cosine kNN for huge catalogues: faiss's inverted file over the unit vectors.

    :func:`sora.model.ann.build_index` (``IndexIVFFlat``, inner product: cosine on unit vectors) with
    ``nlist`` k-means cells (0 = :func:`auto_knn_nlist`) trained on a seeded sample, then every item
    asks it for ``k`` + 1 neighbours visiting the ``nprobe`` cells nearest itself; the item itself is
    dropped. Work is about I² · nprobe / nlist instead of I². Deterministic for a seed and a thread count.
    The default nprobe (4 of √I cells) already finds more of the exact neighbours than the own k-means
    inverted file it replaced (8 cells probed per cell, not per item): benchmarks/RESULTS.md, "Text kNN graph".
    """
    from sora.model.ann import build_index

    x = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)), dim=1)
    x = x.numpy()
    n = x.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return _empty()
    index = build_index(x, nlist or auto_knn_nlist(n), nprobe, seed)
    srcs, dsts, vals = [], [], []
    for s in range(0, n, batch_size):
        sims, idx = index.search(x[s:s + batch_size], k + 1)  # (b, k + 1), best first; -1 = not found
        rows = np.arange(s, s + len(idx))
        ok = (idx >= 0) & (idx != rows[:, None])
        ok &= np.cumsum(ok, axis=1) <= k  # the k best other items (the item itself is usually first)
        srcs.append(np.broadcast_to(rows[:, None], idx.shape)[ok])
        dsts.append(idx[ok])
        vals.append(sims[ok])
    return (np.concatenate(srcs).astype(np.int64), np.concatenate(dsts).astype(np.int64),
            np.concatenate(vals).astype(np.float32))


def auto_knn_nlist(num_items: int) -> int:
    """Cells of the kNN graph's index: √I (each item is a query, so cells are fewer and larger than serving's 4·√I)."""
    return int(max(1, min(num_items // 39, round(np.sqrt(num_items)))))  # faiss wants ≥ 39 points per cell


def cooccurrence_topk(x: sp.csr_matrix, k: int, max_block_nnz: int = 20_000_000, workers: int | None = None) -> Edges:
    """Top-k items by co-interaction count (XᵀX), per item; ties broken by the lower index.

    XᵀX is computed a block of rows at a time, each block sized so its product holds at most about
    ``max_block_nnz`` entries: memory stays O(block + I·k) rather than O(nnz(XᵀX)), which is near
    I² for a popular-heavy catalogue. Blocks run on ``workers`` threads (default: torch's thread count).
    """
    if k <= 0 or x.shape[1] == 0:
        return _empty()
    x = x.tocsr()
    xt = x.T.tocsr()  # (I, U)
    user_deg = np.diff(x.indptr).astype(np.int64)
    # cost of row i of XᵀX (an upper bound on its entries): sum of the degrees of i's users
    cum = np.r_[0, np.cumsum(user_deg[xt.indices])]
    cost = cum[xt.indptr[1:]] - cum[xt.indptr[:-1]]
    def block(lo_hi: tuple[int, int]) -> Edges:
        lo, hi = lo_hi
        c = (xt[lo:hi] @ x).tocoo()  # (b, I) co-occurrence counts of the block's items
        rows, cols, data = c.row.astype(np.int64) + lo, c.col.astype(np.int64), c.data
        keep = rows != cols
        return _row_topk(rows[keep], cols[keep], data[keep], k)

    workers = _workers(workers)
    # blocks small enough that every worker has several (the budget is memory per block in flight)
    blocks = _blocks(cost, max(1, min(max_block_nnz // workers, int(cost.sum()) // (4 * workers) + 1)))
    parts = _parallel_map(block, blocks, workers)
    if not parts:
        return _empty()
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]).astype(np.float32))


def _workers(workers: int | None) -> int:
    """Threads for the parallel item–item work: torch's intra-op thread count unless given."""
    return max(1, workers if workers else torch.get_num_threads())


def _parallel_map(fn, items: list, workers: int) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads, in order.

    The work inside (scipy sparse products, numpy sorts, torch's small batched solves) runs without the
    GIL, so threads use the cores; torch is held at one intra-op thread meanwhile, because its batched
    Cholesky of many small matrices is ~10× slower multi-threaded than single (measured: 9.9 ms vs
    0.95 ms for 42 matrices of 48×48 on 2 cores), which is what made the head slow on 16 cores.
    """
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(before)


def _blocks(cost: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose summed ``cost`` stays under ``budget`` (one row at least)."""
    out, lo, acc = [], 0, 0
    for i, c in enumerate(cost.tolist()):
        if acc and acc + c > budget:
            out.append((lo, i))
            lo, acc = i, 0
        acc += c
    if lo < len(cost):
        out.append((lo, len(cost)))
    return out


def _row_topk(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int) -> Edges:
    """The k largest ``vals`` of each row of a COO list (ties: lower column first), sorted by row then value."""
    if len(rows) == 0:
        return _empty()
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = rank < k
    return rows[keep], cols[keep], vals[keep].astype(np.float32)


def auto_neighbours(num_items: int, work: float = 1.2e8, low: int = 16, high: int = 256) -> int:
    """Neighbourhood size for :func:`ease_sparse` whose solves cost about ``work`` (I × n² grows with n²)."""
    return int(np.clip(np.sqrt(work / max(num_items, 1)), low, high))


def ease_sparse(x: sp.csr_matrix, lam: float, neighbours: int, gram_k: int | None = None,
                max_union: int = 2048, workers: int | None = None) -> sp.csr_matrix:
    """EASE restricted to each item's top-``neighbours`` co-occurrence neighbourhood: a sparse (I, I) head.

    EASE's column k is the ridge regression of item k on the other items, ``b = (G₋ₖ₋ₖ + λI)⁻¹ G₋ₖₖ``
    with G = XᵀX. Here each column regresses only on N(k), the n items that co-occur most with k,
    so ``B[N(k), k] = (G_NN + λI)⁻¹ G_Nk``: one small dense solve per item, batched. G_NN is read
    from XᵀX pruned to each row's top ``gram_k`` entries (default 2n) and symmetrised, so memory is
    O(I·gram_k + b·n²) for batches of b targets, never the dense (I, I) inverse. The batches of solves
    run on ``workers`` threads (default: torch's thread count). Returns B as CSR, row j = the items
    history item j reaches (the dense head's orientation).
    """
    num_items = x.shape[1]
    n = max(1, min(neighbours, num_items - 1))
    gram_k = max(n, gram_k if gram_k is not None else 2 * n)
    deg = np.asarray(x.sum(0)).ravel().astype(np.float64)  # diag(G), exact
    src, dst, w = cooccurrence_topk(x, gram_k, workers=workers)  # sorted by src, then decreasing count
    # an entry kept by either of its two rows is exact, so the symmetric union is a pruned XᵀX; a local
    # Gram is looked up in it entry by entry (sorted keys), never densified
    lookup = _symmetric(src, dst, w, num_items)
    starts = np.searchsorted(src, np.arange(num_items))
    rank = np.arange(len(src)) - np.repeat(starts, np.diff(np.r_[starts, len(src)]))
    keep = rank < n
    nb = np.full((num_items, n), -1, dtype=np.int64)  # -1 pads items with fewer than n co-occurring items
    rhs = np.zeros((num_items, n), dtype=np.float64)
    nb[src[keep], rank[keep]] = dst[keep]
    rhs[src[keep], rank[keep]] = w[keep]
    batch = max(1, max_union // n) * 8

    def solve(lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        targets = np.arange(lo, min(lo + batch, num_items))
        sol = _local_solve(lookup, num_items, deg, nb[targets], rhs[targets], lam)  # (b, n)
        valid = nb[targets] >= 0
        return nb[targets][valid], np.broadcast_to(targets[:, None], valid.shape)[valid], sol[valid]

    parts = _parallel_map(solve, list(range(0, num_items, batch)), _workers(workers))
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    vals = np.concatenate([p[2] for p in parts]).astype(np.float32) if parts else np.zeros(0, np.float32)
    return sp.csr_matrix((vals, (rows, cols)), shape=(num_items, num_items))


def _symmetric(src: np.ndarray, dst: np.ndarray, w: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A top-k list made symmetric, (a, b) and (b, a) both present, each pair once, as the lookup
    :func:`_local_solve` reads: its keys ``row · n + col``, sorted, and their values (float64)."""
    s, d, ww = np.r_[src, dst], np.r_[dst, src], np.r_[w, w].astype(np.float64)
    key, first = np.unique(s * n + d, return_index=True)  # sorted
    return torch.from_numpy(key.astype(np.int64)), torch.from_numpy(np.ascontiguousarray(ww[first]))


def _local_solve(lookup: tuple[torch.Tensor, torch.Tensor], num_items: int, deg: np.ndarray, nb: np.ndarray,
                 rhs: np.ndarray, lam: float) -> np.ndarray:
    """Solve (G_NN + λI) b = G_Nk for a batch of targets; nb (b, n) neighbour ids (-1 = padding) → (b, n).

    ``lookup``: the pruned XᵀX's sorted keys (row · I + col) and values; absent pairs are 0.
    """
    n = nb.shape[1]
    valid = nb >= 0
    safe = torch.from_numpy(np.where(valid, nb, 0))
    keys, values = lookup
    query = (safe[:, :, None] * num_items + safe[:, None, :]).reshape(-1)  # (b·n·n,)
    at = torch.searchsorted(keys, query).clamp(max=max(len(keys) - 1, 0))
    found = keys[at] == query if len(keys) else torch.zeros_like(query, dtype=torch.bool)
    gram = torch.where(found, values[at] if len(keys) else 0.0, 0.0).reshape(len(nb), n, n).numpy().copy()
    idx = np.arange(n)
    gram[:, idx, idx] = np.where(valid, deg[np.where(valid, nb, 0)] + lam, 1.0)  # padding: identity row, zero rhs
    gram *= valid[:, :, None] & valid[:, None, :] | np.eye(n, dtype=bool)
    gram_t = torch.from_numpy(gram)
    chol, info = torch.linalg.cholesky_ex(gram_t)
    bad = torch.nonzero(info).squeeze(1)
    if len(bad):
        # pruning can leave a few local Grams indefinite; shift their spectrum so ridge stays defined
        low = torch.linalg.eigvalsh(gram_t[bad])[:, 0]
        shift = (-low).clamp(min=0) + lam
        gram_t[bad] += shift[:, None, None] * torch.eye(n, dtype=gram_t.dtype)
        chol[bad] = torch.linalg.cholesky(gram_t[bad])
    b = torch.from_numpy(np.where(valid, rhs, 0.0))[..., None]
    return torch.cholesky_solve(b, chol)[..., 0].numpy()


def _empty() -> Edges:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
