"""Training, part 3 of 3: selection on valid data only — the best epoch and the item–item head's weight.

:class:`BestEpoch` keeps the weights of the epoch with the best valid NDCG@10 (after a warm-up) and
says when patience has run out; :func:`select_alpha` picks the weight of the item–item head on valid
NDCG@10, after putting the head and the dot product on one scale.
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
                 x_train: sp.csr_matrix, candidates: np.ndarray | None = None) -> dict[str, float]:
    """Set ``rec.alpha`` to the grid weight with the best valid NDCG@10; returns the valid metrics at that weight."""
    vu, vi = valid_users, valid_items

    def run(alpha: float) -> dict[str, float]:
        return evaluate_scores(lambda b: rec.score_users(b, alpha=alpha), vu, vi, rec.num_items, cfg.eval.ks,
                               exclude=x_train, candidates=candidates, batch_size=cfg.eval.batch_size)

    if rec.ii is None or len(vu) == 0:
        return run(0.0)
    # Put both terms on one scale first: alpha multiplies the ratio of their spreads on valid users.
    # The sample is capped so its (sample, I) dense scores stay under ~100 MB on huge catalogues.
    n_sample = int(np.clip(25_000_000 // max(rec.num_items, 1), 16, 512))
    sample = np.unique(vu)[:n_sample]
    dot = rec.score_users(sample, alpha=0.0)
    ii = rec._ii_scores(rec.train[sample])
    scale = float(dot.std() / ii.std().clamp(min=1e-12))
    scored = [(run(a * scale), a * scale) for a in ALPHA_GRID]
    metrics, alpha = max(scored, key=lambda t: t[0]["ndcg@10"])
    rec.alpha = alpha
    rec.meta["alpha_grid"] = {f"{a:.4g}": m["ndcg@10"] for m, a in scored}
    log.info("item-item weight %.4g selected on valid (ndcg@10 %.4f)", alpha, metrics["ndcg@10"])
    return metrics
