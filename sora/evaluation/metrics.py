"""Top-K ranking metrics and batched full ranking (DESIGN.md §4). Pure torch/numpy, no DGL.

Metrics are averaged over users with at least one relevant item; keys look like ``ndcg@10``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

METRICS = ("recall", "ndcg", "hit", "mrr", "precision")


def metrics_from_topk(topk: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...], num_items: int,
                      per_user: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """topk (N, Kmax) ranked item indices; relevant: N sets of ground-truth items. Returns ``name@K`` → mean.

    ``per_user``: a dict to fill with each metric's (N,) per-user values (paired tests across models).
    """
    kmax = max(ks)
    if topk.shape[1] < kmax:  # fewer candidates than K: the missing slots are misses
        topk = np.pad(topk, ((0, 0), (0, kmax - topk.shape[1])), constant_values=-1)
    hits = np.array([[item in rel for item in row[:kmax]] for row, rel in zip(topk, relevant, strict=True)],
                    dtype=np.float64).reshape(len(relevant), kmax)
    n_rel = np.array([len(r) for r in relevant], dtype=np.float64)
    return metrics_from_hits(topk, hits, n_rel, ks, num_items, per_user)


def metrics_from_hits(topk: np.ndarray, hits: np.ndarray, n_rel: np.ndarray, ks: tuple[int, ...], num_items: int,
                      per_user: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """:func:`metrics_from_topk` once each ranked slot is known to be a hit: hits (N, Kmax) 0/1, n_rel (N,)."""
    ks = tuple(sorted(ks))
    kmax = max(ks)
    if topk.shape[1] < kmax:
        topk = np.pad(topk, ((0, 0), (0, kmax - topk.shape[1])), constant_values=-1)
        hits = np.pad(hits, ((0, 0), (0, kmax - hits.shape[1])))
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        idcg = np.array([discounts[: int(min(n, k))].sum() for n in n_rel])
        first = np.where(h.any(1), h.argmax(1) + 1, np.inf)
        values = {
            "recall": n_hit / np.maximum(n_rel, 1),
            "ndcg": (h * discounts[:k]).sum(1) / np.maximum(idcg, 1e-12),
            "hit": (n_hit > 0).astype(float),
            "mrr": 1.0 / first,
            "precision": n_hit / k,
        }
        for name in METRICS:
            out[f"{name}@{k}"] = float(values[name].mean()) if len(n_rel) else 0.0
            if per_user is not None:
                per_user[f"{name}@{k}"] = values[name]
        shown = np.unique(topk[:, :k])
        out[f"coverage@{k}"] = float((shown >= 0).sum() / num_items) if len(n_rel) else 0.0
    return out


ScoreFn = Callable[[np.ndarray], torch.Tensor]  # user indices (B,) → scores (B, I)


def rank_all(score_fn: ScoreFn, users: np.ndarray, k: int, exclude: sp.csr_matrix | None = None,
             candidates: np.ndarray | None = None, batch_size: int = 1024, num_items: int | None = None) -> np.ndarray:
    """Full ranking in user batches: returns (N, k) item indices, best first.

    ``exclude`` (U, I) marks items never to recommend (seen in train / valid); ``candidates`` limits
    ranking to a subset of items (cold-item protocol). Memory is O(batch_size × I).
    """
    out = []
    cand = None if candidates is None else torch.as_tensor(candidates, dtype=torch.long)
    if num_items is not None and batch_size * num_items > 50_000_000:  # keep a batch under ~200 MB of scores
        batch_size = max(1, 50_000_000 // num_items)
    for s in range(0, len(users), batch_size):
        batch = users[s:s + batch_size]
        scores = score_fn(batch).float().cpu().clone()  # score_fn may return a view (e.g. expanded popularity)
        if exclude is not None:
            rows = exclude[batch].tocoo()
            scores[torch.as_tensor(rows.row, dtype=torch.long), torch.as_tensor(rows.col, dtype=torch.long)] = -torch.inf
        if cand is not None:
            scores = scores[:, cand]
        kk = min(k, scores.shape[1])
        idx = torch.topk(scores, kk, dim=1).indices
        if cand is not None:
            idx = cand[idx]
        out.append(idx.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def relevant_sets(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, list[set[int]]]:
    """Group (user, item) pairs → (sorted unique users, one set of items per user)."""
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    uniq, starts = np.unique(users, return_index=True)
    ends = np.r_[starts[1:], len(users)]
    return uniq, [set(items[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]


def evaluate_scores(score_fn: ScoreFn, eval_users: np.ndarray, eval_items: np.ndarray, num_items: int,
                    ks: tuple[int, ...], exclude: sp.csr_matrix | None = None, candidates: np.ndarray | None = None,
                    batch_size: int = 1024, per_user: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn`` on (user, item) ground-truth pairs.

    ``per_user``: filled with ``"users"`` (sorted user indices) and each metric's per-user values.
    """
    users, relevant = relevant_sets(eval_users, eval_items)
    if per_user is not None:
        per_user["users"] = users
    if len(users) == 0:
        return {f"{m}@{k}": 0.0 for k in ks for m in (*METRICS, "coverage")}
    topk = rank_all(score_fn, users, max(ks), exclude, candidates, batch_size, num_items)
    n_cand = num_items if candidates is None else len(candidates)
    return metrics_from_topk(topk, relevant, ks, n_cand, per_user)


def standard_error(values: np.ndarray) -> float:
    """The standard error of the mean of per-user values (0 for fewer than two users)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean of a − b, its standard error) for two models' per-user values over the same users."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(d.mean()) if len(d) else 0.0, standard_error(d)


def metric_name(key: str) -> str:
    """One metric naming scheme for the Kubeflow UI and MLflow: ``test_ndcg@10`` → ``test_ndcg_at_10``.

    MLflow does not accept ``@`` in metric names, so the ``@K`` of the JSON reports becomes ``_at_K``.
    """
    return key.replace("@", "_at_")


class DeviceRanker:
    """Full ranking of a fixed set of evaluation users on the training device, top-k there.

    Built once per training run: the users, the items each has to exclude and the candidates move to the
    device once; each call scores a batch of users with ``score_batch`` (device user indices (B,) → (B, I)
    scores on the device), masks the excluded items, keeps the top ``max(ks)`` and brings back only those
    (N, K) indices. The metrics are :func:`metrics_from_hits`' — the same numbers as
    :func:`evaluate_scores` for the same scores (tested), without a (B, I) copy to the host per batch.
    """

    def __init__(self, eval_users: np.ndarray, eval_items: np.ndarray, num_items: int, ks: tuple[int, ...],
                 device: torch.device, exclude: sp.csr_matrix | None = None, candidates: np.ndarray | None = None,
                 batch_size: int = 1024):
        self.ks, self.num_items, self.device = tuple(ks), num_items, device
        order = np.argsort(eval_users, kind="stable")
        users, self._starts = np.unique(np.asarray(eval_users)[order], return_index=True)
        self.users = users.astype(np.int64)
        items = np.asarray(eval_items)[order].astype(np.int64)
        rows = np.repeat(np.arange(len(users)), np.diff(np.r_[self._starts, len(order)]))
        # (N, I) relevance, deduplicated: what a hit is looked up in
        self.relevant = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, items)), shape=(len(users), num_items))
        self.relevant.sum_duplicates()
        self.relevant.data[:] = 1.0
        self.n_rel = np.diff(self.relevant.indptr).astype(np.float64)
        # keep a (B, I) batch of scores under ~1 GiB on a GPU, ~200 MB on the CPU (as rank_all does)
        budget = 250_000_000 if device.type == "cuda" else 50_000_000
        self.batch_size = max(1, min(max(batch_size, 1) if device.type != "cuda" else len(users),
                                     budget // max(num_items, 1)))
        self.bounds = [(s, min(s + self.batch_size, len(users))) for s in range(0, len(users), self.batch_size)]
        self.users_t = torch.as_tensor(self.users, device=device)
        self.cand = None if candidates is None else torch.as_tensor(np.asarray(candidates), dtype=torch.long,
                                                                    device=device)
        self.ex = None
        if exclude is not None:
            ex = exclude[self.users].tocoo()  # rows in users order, sorted by row
            offsets = np.searchsorted(ex.row, [a for a, _ in self.bounds] + [len(users)])
            self.ex = (torch.as_tensor(ex.row.astype(np.int64), device=device),
                       torch.as_tensor(ex.col.astype(np.int64), device=device), offsets.tolist())

    @torch.no_grad()
    def topk(self, score_batch: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """(N, K) item indices, best first, for every evaluation user (sorted by user index)."""
        k = max(self.ks)
        out = []
        for n, (a, b) in enumerate(self.bounds):
            scores = score_batch(self.users_t[a:b]).float()
            if self.ex is not None:
                lo, hi = self.ex[2][n], self.ex[2][n + 1]
                scores = scores.index_put((self.ex[0][lo:hi] - a, self.ex[1][lo:hi]),
                                          torch.tensor(-torch.inf, device=scores.device))
            if self.cand is not None:
                scores = scores[:, self.cand]
            idx = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
            out.append(self.cand[idx] if self.cand is not None else idx)
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, k), dtype=np.int64)

    def evaluate(self, score_batch: Callable[[torch.Tensor], torch.Tensor],
                 per_user: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """The metrics of :func:`evaluate_scores` (``name@K``) for ``score_batch``'s full ranking."""
        if len(self.users) == 0:
            return {f"{m}@{k}": 0.0 for k in self.ks for m in (*METRICS, "coverage")}
        topk = self.topk(score_batch)
        rows = np.repeat(np.arange(len(topk)), topk.shape[1])
        cols = topk.ravel()
        hits = np.zeros(len(cols))
        ok = cols >= 0
        hits[ok] = np.asarray(self.relevant[rows[ok], cols[ok]]).ravel()
        n_cand = self.num_items if self.cand is None else len(self.cand)
        return metrics_from_hits(topk, hits.reshape(topk.shape), self.n_rel, self.ks, n_cand, per_user)
