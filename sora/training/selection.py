"""Training, part 3 of 3: selection on valid data only — EASE's λ, the best epoch and the item–item head's weight.

:func:`choose_ease_lambda` picks the ridge λ of the EASE head (and of the EASE baselines) by EASE's
own valid NDCG@10; :class:`BestEpoch` keeps the weights of the epoch with the best valid NDCG@10
(after a warm-up) and says when patience has run out; :func:`select_alpha` picks the weight of the
item–item head and its history recency decay on valid NDCG@10, after putting the head and the dot
product on one scale; :func:`select_transitions` then adds the transition head where valid prefers it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from sora.config import SoraConfig, TrainConfig
from sora.data.protocol import history_of, recency_ease_scores, recency_matrix, with_histories
from sora.data.split import Split
from sora.evaluation.metrics import evaluate_scores, paired_difference, standard_error
from sora.model.itemsim import ease_score_fn, ease_weights
from sora.model.recommender import Recommender
from sora.model.walk import geometric_walk

log = logging.getLogger(__name__)

ALPHA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: the transition head's weight (× the ratio of the dot product's spread to its own) and the factors of
#: the item–item head's weight tried with it
BETA_GRID = (0.05, 0.1, 0.2, 0.35, 0.5)
ALPHA_SCALES = (0.5, 0.75, 1.0)
#: Where the λ walk starts, and λ wherever it is not searched (cold-item splits, the sparse head).
EASE_LAMBDA_START = 300.0


@dataclass
class EaseChoice:
    """EASE's λ, its dense (I, I) weights, the history decay chosen with it (1.0: binary history) and the
    valid NDCG@10 per λ tried (empty when λ was given and nothing was chosen)."""

    lam: float
    weights: np.ndarray
    decay: float
    valid: dict[float, float]


#: EASE weights (I, I) → (valid NDCG@10, the history decay it was reached with)
EaseMetric = Callable[[np.ndarray], tuple[float, float]]


def ease_valid_metric(x_train: sp.csr_matrix, split: Split, decays: tuple[float, ...] = (1.0,),
                      batch_size: int = 1024) -> EaseMetric:
    """Valid NDCG@10 of EASE weights, the best over ``decays`` (the first of equals) of the history row
    weighted by ``decay ** age`` (recency-EASE; 1.0 is plain EASE over the training items, which are
    excluded from the ranking)."""
    vu, vi = split.valid["u"].to_numpy(), split.valid["i"].to_numpy()
    hist = history_of(split, "valid") if any(d != 1.0 for d in decays) else None

    def metric(b: np.ndarray) -> tuple[float, float]:
        by_decay = {}
        for d in decays:
            fn = ease_score_fn(x_train, b) if d == 1.0 else with_histories(recency_ease_scores(b, d), hist)
            by_decay[d] = evaluate_scores(fn, vu, vi, x_train.shape[1], (10,), exclude=x_train,
                                          batch_size=batch_size)["ndcg@10"]
        best = max(decays, key=lambda d: (by_decay[d], -decays.index(d)))
        return by_decay[best], best

    return metric


def choose_ease_lambda(x_train: sp.csr_matrix, metric: EaseMetric, start: float = EASE_LAMBDA_START,
                       factor: float = 2.0, max_steps: int = 5) -> EaseChoice:
    """The λ of ``start · factor**k`` (|k| ≤ ``max_steps``) with the best ``metric`` on valid.

    The walk steps up from ``start`` while the metric improves strictly, and down when the first step
    up did not improve: valid NDCG@10 is unimodal in λ in practice, and each step costs one (I, I)
    inverse. Only the best weights are kept in memory.
    """
    best: dict[str, Any] = {"ndcg": -np.inf}  # the walk only moves to a strictly better λ

    def score(lam: float) -> float:
        b = ease_weights(x_train, lam)
        ndcg, decay = metric(b)
        if ndcg > best["ndcg"]:
            best.update(ndcg=ndcg, weights=b, decay=decay)
        return ndcg

    lam, valid = geometric_walk(score, start, factor, max_steps)
    log.info("graph.ease_lambda %g chosen on valid (EASE alone, decay %g, ndcg@10 %.4f; by λ %s)", lam,
             best["decay"], best["ndcg"], {f"{key:g}": round(v, 4) for key, v in sorted(valid.items())})
    return EaseChoice(lam, best["weights"], best["decay"], valid)


def valid_ranks_ease(split: Split) -> bool:
    """Whether EASE can be scored on ``split``'s valid part: a cold-item split's valid items have no
    training interactions, so EASE cannot rank them."""
    return split.spec.mode != "cold-item" and len(split.valid) > 0


def walks_lambda(split: Split, lam: float | None, num_items: int, search_max_items: int) -> bool:
    """Whether :func:`ease_on_valid` chooses λ on valid: ``lam`` null, a valid part EASE can rank, and at
    most ``search_max_items`` items."""
    return lam is None and valid_ranks_ease(split) and num_items <= search_max_items


def ease_on_valid(x_train: sp.csr_matrix, split: Split, lam: float | None, decays: tuple[float, ...] = (1.0,),
                  batch_size: int = 1024, search_max_items: int = 12_000) -> EaseChoice:
    """Dense EASE at ``lam`` (the decay of ``decays`` chosen on valid when there are several); with ``lam``
    None, at the λ and decay :func:`choose_ease_lambda` picks on ``split``'s valid.

    A cold-item split's valid items have no training interactions, so EASE cannot rank them and
    nothing is searched there (λ is :data:`EASE_LAMBDA_START`, the decay the first of ``decays``);
    above ``search_max_items`` items (``graph.ease_lambda_search_max_items``) λ is not searched either.
    """
    searchable = valid_ranks_ease(split)
    if walks_lambda(split, lam, x_train.shape[1], search_max_items):
        return choose_ease_lambda(x_train, ease_valid_metric(x_train, split, decays, batch_size))
    if lam is None:
        lam = EASE_LAMBDA_START
        why = (f"a {split.spec.mode} split" if not searchable else
               f"{x_train.shape[1]} items > graph.ease_lambda_search_max_items={search_max_items}")
        log.info("graph.ease_lambda %g (not searched: %s)", lam, why)
    b = ease_weights(x_train, lam)
    if not searchable or len(decays) == 1:
        return EaseChoice(float(lam), b, decays[0], {})
    ndcg, decay = ease_valid_metric(x_train, split, decays, batch_size)(b)  # λ given: only the decay is chosen
    return EaseChoice(float(lam), b, decay, {float(lam): ndcg})


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


def valid_metrics(rec: Recommender, valid_users: np.ndarray, valid_items: np.ndarray, cfg: SoraConfig,
                  x_train: sp.csr_matrix, candidates: np.ndarray | None = None,
                  alpha: float | None = None, per_user: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """``rec``'s valid metrics (``eval.ks``) with the item–item head at weight ``alpha`` (None: ``rec.alpha``)."""
    return evaluate_scores(lambda b: rec.score_users(b, alpha=alpha), valid_users, valid_items, rec.num_items,
                           cfg.eval.ks, exclude=x_train, candidates=candidates, batch_size=cfg.eval.batch_size,
                           per_user=per_user)


@contextlib.contextmanager
def _scoring(rec: Recommender, **fields: float) -> Iterator[None]:
    """``rec`` scoring with ``fields`` (its weights) set for the block, put back after it whatever happens."""
    kept = {f: getattr(rec, f) for f in fields}
    for f, v in fields.items():
        setattr(rec, f, v)
    try:
        yield
    finally:
        for f, v in kept.items():
            setattr(rec, f, v)


def valid_uncertainty(rec: Recommender, valid_users: np.ndarray, valid_items: np.ndarray, cfg: SoraConfig,
                      x_train: sp.csr_matrix, candidates: np.ndarray | None = None) -> dict[str, Any]:
    """How far valid can tell ``rec``'s choice apart: the standard error of its valid NDCG@10 over valid
    users, and its paired difference (± standard error) over the network alone (no head) and over the heads
    alone (no network), as far as those differ from the choice."""
    def per_user() -> np.ndarray:
        out: dict[str, np.ndarray] = {}
        valid_metrics(rec, valid_users, valid_items, cfg, x_train, candidates, per_user=out)
        return out.get("ndcg@10", np.zeros(0))

    chosen = per_user()
    report: dict[str, Any] = {"ndcg@10_se": standard_error(chosen)}
    if rec.alpha or rec.beta:
        with _scoring(rec, alpha=0.0, beta=0.0, network_weight=1.0):
            report["over network alone"] = paired_difference(chosen, per_user())
        if rec.network_weight:
            with _scoring(rec, network_weight=0.0):
                report["over heads alone"] = paired_difference(chosen, per_user())
    log.info("valid ndcg@10 standard error %.4f; %s", report["ndcg@10_se"],
             "; ".join(f"{k}: {d:+.4f} ± {e:.4f}" for k, (d, e) in
                       ((k, v) for k, v in report.items() if k.startswith("over"))) or "no alternative")
    return report


def _dot_on_sample(rec: Recommender, valid_users: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """(valid users sampled, their (sample, I) network scores ``user · item``): the spread a head's weight is
    scaled to (whatever the network's weight in the score).

    The sample is capped so its dense scores stay under ~100 MB on huge catalogues.
    """
    n_sample = int(np.clip(25_000_000 // max(rec.num_items, 1), 16, 512))
    sample = np.unique(valid_users)[:n_sample]
    return sample, rec.user_vectors[torch.as_tensor(sample, dtype=torch.long)] @ rec.item_vectors.T


def select_alpha(rec: Recommender, valid_users: np.ndarray, valid_items: np.ndarray, cfg: SoraConfig,
                 x_train: sp.csr_matrix, candidates: np.ndarray | None = None,
                 train_sequences: list[np.ndarray] | None = None) -> dict[str, float]:
    """Choose the item–item head's weight (``rec.alpha``) and recency decay (``rec.head_decay``) on valid.

    Every decay of ``train.head_decays`` (only 1.0 without ``train_sequences``, each user's training
    items oldest first) is tried with every weight of the grid; the pair with the best valid NDCG@10
    wins (the first of equals: decay 1 and smaller weights first). Returns the valid metrics there.
    """
    vu, vi = valid_users, valid_items
    rec.network_weight = 1.0
    run = partial(valid_metrics, rec, vu, vi, cfg, x_train, candidates)

    if rec.ii is None or len(vu) == 0:
        return run(0.0)
    decays = tuple(cfg.train.head_decays) if train_sequences is not None else (1.0,)
    # Put both terms on one scale first: alpha multiplies the ratio of their spreads on valid users.
    sample, dot = _dot_on_sample(rec, vu)
    scored: list[tuple[dict[str, float], float, float, sp.csr_matrix | None, float]] = []
    for decay in decays:
        weights = None if decay == 1.0 else recency_matrix(train_sequences, rec.num_items, decay)
        rec.head_decay, rec.head_weights = decay, weights
        ii = rec._ii_scores(rec._head_rows(sample))
        scale = float(dot.std() / ii.std().clamp(min=1e-12))
        scored += [(run(a * scale), a * scale, decay, weights, 1.0) for a in ALPHA_GRID if a or decay == decays[0]]
        if candidates is None:  # cold candidates have no interactions: the head alone scores them all 0
            with _scoring(rec, network_weight=0.0):  # Sora never serves a network valid says is worse than it
                scored.append((run(scale), scale, decay, weights, 0.0))
    metrics, alpha, decay, weights, network = max(scored, key=lambda t: t[0]["ndcg@10"])
    rec.alpha, rec.head_decay, rec.head_weights, rec.network_weight = alpha, decay, weights, network
    rec.meta["alpha_grid"] = {(f"{a:.4g}" if n else "head alone"): m["ndcg@10"]
                              for m, a, d, _, n in scored if d == decay or not a}
    rec.meta["head_decay_grid"] = {f"{d:g}": max(m["ndcg@10"] for m, _, dd, _, _ in scored if dd == d)
                                   for d in decays}
    log.info("item-item weight %.4g, decay %g%s selected on valid (ndcg@10 %.4f)", alpha, decay,
             "" if network else ", the network left out (the head alone)", metrics["ndcg@10"])
    return metrics


#: the Recommender fields the heads' selection sets (restored to the winner's after trying each λ)
_HEAD_FIELDS = ("ii", "alpha", "head_decay", "head_weights", "transitions", "beta", "transition_decay",
                "transition_rows", "network_weight")
_HEAD_META = ("alpha_grid", "head_decay_grid", "transition_grid")


def select_heads(rec: Recommender, valid_users: np.ndarray, valid_items: np.ndarray, cfg: SoraConfig,
                 x_train: sp.csr_matrix, train_sequences: list[np.ndarray], transitions: bool,
                 candidates: np.ndarray | None = None, head_at: Callable[[float], Any] | None = None,
                 lambdas: tuple[float, ...] = ()) -> dict[str, float]:
    """Choose both heads on valid: :func:`select_alpha`, then (``transitions``) :func:`select_transitions`.

    ``lambdas`` (the first is ``rec.ii``'s EASE λ) with ``head_at`` (λ → the item–item head's weights):
    the whole selection runs once per λ, since the λ best for EASE alone need not be the best beside the
    network and the transition head; another λ is kept only when the final valid NDCG@10 improves
    strictly. Each further head is built when it is tried and dropped unless it wins. Sets
    ``rec.meta["head_lambda"]`` and ``rec.meta["head_lambda_grid"]`` (final valid NDCG@10 per λ).
    Returns the valid metrics of what is kept.
    """
    def once() -> dict[str, float]:
        metrics = select_alpha(rec, valid_users, valid_items, cfg, x_train, candidates, train_sequences)
        if transitions:
            metrics = select_transitions(rec, valid_users, valid_items, cfg, x_train, train_sequences, metrics,
                                         candidates)
        return metrics

    if head_at is None or len(lambdas) < 2 or rec.ii is None or not len(valid_users):
        return once()
    best: tuple[dict[str, float], float, dict[str, Any], dict[str, Any]] | None = None
    by_lambda: dict[str, float] = {}
    for n, lam in enumerate(lambdas):
        if n:
            rec.ii = head_at(lam)
            rec.transitions, rec.transition_rows, rec.beta, rec.transition_decay = None, None, 0.0, 1.0
        metrics = once()
        by_lambda[f"{lam:g}"] = metrics["ndcg@10"]
        if best is None or metrics["ndcg@10"] > best[0]["ndcg@10"]:
            best = (metrics, lam, {f: getattr(rec, f) for f in _HEAD_FIELDS},
                    {k: rec.meta[k] for k in _HEAD_META if k in rec.meta})
    assert best is not None
    metrics, lam, fields, meta = best
    for f, v in fields.items():
        setattr(rec, f, v)
    for k in _HEAD_META:
        rec.meta.pop(k, None)
    rec.meta.update(meta, head_lambda=lam, head_lambda_grid=by_lambda)
    log.info("item-item head: EASE λ %g selected on valid (ndcg@10 %.4f; by λ %s)", lam, metrics["ndcg@10"],
             {k: round(v, 4) for k, v in by_lambda.items()})
    return metrics


def select_transitions(rec: Recommender, valid_users: np.ndarray, valid_items: np.ndarray, cfg: SoraConfig,
                       x_train: sp.csr_matrix, train_sequences: list[np.ndarray], base: dict[str, float],
                       candidates: np.ndarray | None = None) -> dict[str, float]:
    """Add the transition head (:mod:`sora.model.transitions`) to ``rec`` if valid NDCG@10 prefers it.

    ``base``: the valid metrics without it (:func:`select_alpha`'s). Every decay of
    :data:`~sora.model.transitions.DECAYS` is tried with every weight of :data:`BETA_GRID` (on the scale of the
    dot product) and every factor of :data:`ALPHA_SCALES` on the item–item head's weight; the best of
    them replaces ``base`` only when it is strictly better. Returns the valid metrics of what is kept.
    """
    from sora.model.transitions import DECAYS, transition_matrix

    if not len(valid_users):
        return base
    run = partial(valid_metrics, rec, valid_users, valid_items, cfg, x_train, candidates)
    sample, dot = _dot_on_sample(rec, valid_users)
    alpha = rec.alpha
    rec.transitions = transition_matrix(train_sequences, rec.num_items)
    best: tuple[dict[str, float], float, float, float, sp.csr_matrix | None] = (base, 0.0, 1.0, alpha, None)
    tried = {}
    for decay in DECAYS:
        rows = recency_matrix(train_sequences, rec.num_items, decay)
        rec.transition_rows, rec.transition_decay, rec.beta = rows, decay, 0.0
        scale = float(dot.std() / rec._transition_scores(rows[sample]).std().clamp(min=1e-12))
        for b in BETA_GRID:
            for m in ALPHA_SCALES:
                rec.beta, rec.alpha = b * scale, alpha * m
                metrics = run()
                tried[f"decay {decay:g}, beta {b:g}, alpha x{m:g}"] = metrics["ndcg@10"]
                if metrics["ndcg@10"] > best[0]["ndcg@10"]:
                    best = (metrics, b * scale, decay, alpha * m, rows)
    metrics, rec.beta, rec.transition_decay, rec.alpha, rec.transition_rows = best
    if not rec.beta:
        rec.transitions, rec.transition_rows, rec.transition_decay = None, None, 1.0
    rec.meta["transition_grid"] = {"without": base["ndcg@10"], **tried}
    log.info("transition head: weight %.4g, decay %g, item-item weight %.4g selected on valid (ndcg@10 %.4f; "
             "%.4f without)", rec.beta, rec.transition_decay, rec.alpha, metrics["ndcg@10"], base["ndcg@10"])
    return metrics
