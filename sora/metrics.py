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
    ks = tuple(sorted(ks))
    kmax = max(ks)
    if topk.shape[1] < kmax:  # fewer candidates than K: the missing slots are misses
        topk = np.pad(topk, ((0, 0), (0, kmax - topk.shape[1])), constant_values=-1)
    hits = np.array([[item in rel for item in row[:kmax]] for row, rel in zip(topk, relevant, strict=True)],
                    dtype=np.float64).reshape(len(relevant), kmax)
    n_rel = np.array([len(r) for r in relevant], dtype=np.float64)
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
            out[f"{name}@{k}"] = float(values[name].mean()) if len(relevant) else 0.0
            if per_user is not None:
                per_user[f"{name}@{k}"] = values[name]
        shown = np.unique(topk[:, :k])
        out[f"coverage@{k}"] = float((shown >= 0).sum() / num_items) if len(relevant) else 0.0
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


def metric_name(key: str) -> str:
    """One metric naming scheme for the Kubeflow UI and MLflow: ``test_ndcg@10`` → ``test_ndcg_at_10``.

    MLflow does not accept ``@`` in metric names, so the ``@K`` of the JSON reports becomes ``_at_K``.
    """
    return key.replace("@", "_at_")
