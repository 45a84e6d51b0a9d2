"""Training, part 3 of 3: selection on valid data only — the best epoch and the item–item head's weight.

:class:`BestEpoch` keeps the weights of the epoch with the best valid NDCG@10 (after a warm-up) and
says when patience has run out; :func:`select_alpha` picks the weight of the item–item head and its
history recency decay on valid NDCG@10, after putting the head and the dot product on one scale.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from sora.config import SoraConfig, TrainConfig
from sora.metrics import evaluate_scores
from sora.protocol import recency_matrix
from sora.recommender import Recommender

log = logging.getLogger(__name__)

ALPHA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class BestEpoch:
    """Early stopping on valid NDCG@10: the first epochs (``warmup_epochs``) are never selected."""

    tc: TrainConfig
    metric: float = -1.0
    epoch: int = 0
    state: dict[str, Any] | None = None

    def update(self, epoch: int, metric: float, state: dict[str, Any]) -> bool:
        """Record ``epoch`` if it is selectable and beats the best so far; returns whether it did."""
        selectable = epoch >= min(self.tc.warmup_epochs, self.tc.max_epochs)
        if selectable and metric > self.metric:
            self.metric, self.epoch, self.state = metric, epoch, copy.deepcopy(state)
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        return epoch >= max(self.tc.min_epochs, self.tc.warmup_epochs) and epoch - self.epoch >= self.tc.patience


def select_alpha(rec: Recommender, valid_users: np.ndarray, valid_items: np.ndarray, cfg: SoraConfig,
                 x_train: sp.csr_matrix, candidates: np.ndarray | None = None,
                 train_sequences: list[np.ndarray] | None = None) -> dict[str, float]:
    """Choose the item–item head's weight (``rec.alpha``) and recency decay (``rec.head_decay``) on valid.

    Every decay of ``train.head_decays`` (only 1.0 without ``train_sequences``, each user's training
    items oldest first) is tried with every weight of the grid; the pair with the best valid NDCG@10
    wins (the first of equals: decay 1 and smaller weights first). Returns the valid metrics there.
    """
    vu, vi = valid_users, valid_items

    def run(alpha: float) -> dict[str, float]:
        return evaluate_scores(lambda b: rec.score_users(b, alpha=alpha), vu, vi, rec.num_items, cfg.eval.ks,
                               exclude=x_train, candidates=candidates, batch_size=cfg.eval.batch_size)

    if rec.ii is None or len(vu) == 0:
        return run(0.0)
    decays = tuple(cfg.train.head_decays) if train_sequences is not None else (1.0,)
    # Put both terms on one scale first: alpha multiplies the ratio of their spreads on valid users.
    # The sample is capped so its (sample, I) dense scores stay under ~100 MB on huge catalogues.
    n_sample = int(np.clip(25_000_000 // max(rec.num_items, 1), 16, 512))
    sample = np.unique(vu)[:n_sample]
    dot = rec.score_users(sample, alpha=0.0)
    scored: list[tuple[dict[str, float], float, float, sp.csr_matrix | None]] = []
    for decay in decays:
        weights = None if decay == 1.0 else recency_matrix(train_sequences, rec.num_items, decay)
        rec.head_decay, rec.head_weights = decay, weights
        ii = rec._ii_scores(rec._head_rows(sample))
        scale = float(dot.std() / ii.std().clamp(min=1e-12))
        scored += [(run(a * scale), a * scale, decay, weights) for a in ALPHA_GRID if a or decay == decays[0]]
    metrics, alpha, decay, weights = max(scored, key=lambda t: t[0]["ndcg@10"])
    rec.alpha, rec.head_decay, rec.head_weights = alpha, decay, weights
    rec.meta["alpha_grid"] = {f"{a:.4g}": m["ndcg@10"] for m, a, d, _ in scored if d == decay or not a}
    rec.meta["head_decay_grid"] = {f"{d:g}": max(m["ndcg@10"] for m, _, dd, _ in scored if dd == d) for d in decays}
    log.info("item-item weight %.4g, decay %g selected on valid (ndcg@10 %.4f)", alpha, decay, metrics["ndcg@10"])
    return metrics
