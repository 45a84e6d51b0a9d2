"""Evaluation under the protocol of DESIGN.md §4, for Sora and the baselines, on one split.

Valid is ranked excluding training items, test excluding training and valid items, over the full
catalogue; in ``cold-item`` mode over the held-out cold items only. Baselines (``mostpop``,
``ease``, ``bpr``, ``lightgcn``, ``textknn``) are fitted on the identical training part.

Under ``leave-last-out`` (Protocol T, :mod:`sora.data.protocol`) every model that takes a history reads the
whole prefix before the target: the training sequence for valid, plus the valid item for test (Sora
through :meth:`~sora.model.recommender.Recommender.score_user_recent`, EASE and recency-EASE through the
history row, SASRec through its sequence). MostPop, BPR and LightGCN have no history input. The
sequence baselines ``recency_ease`` (decay tuned on valid) and ``sasrec`` (early-stopped on valid)
are added to any baseline run on a leave-last-out model. ``global-temporal`` is read the same way:
every valid / test event after the cut is a target, the prefix is everything before its part.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sora.config import SEQUENTIAL_SPLIT_MODES, SoraConfig
from sora.data.contract import DataError, Dataset
from sora.data.protocol import (
    DECAY_GRID,
    HistoryScoreFn,
    history_of,
    recency_ease_scores,
    sequences,
    with_histories,
)
from sora.data.split import Split, make_split
from sora.evaluation.metrics import evaluate_scores
from sora.model.itemsim import ease_score_fn
from sora.model.recommender import Recommender
from sora.model.text import ItemEmbeddings
from sora.training.selection import EaseChoice, ease_on_valid

log = logging.getLogger(__name__)

BASELINES = ("mostpop", "ease", "bpr", "lightgcn")
COLD_BASELINES = ("mostpop", "textknn")
#: Baselines that need sequences (``split.mode=leave-last-out``); added to any baseline run there.
SEQUENCE_BASELINES = ("recency_ease", "sasrec")
PROTOCOL_T_BASELINES = ("mostpop", "ease", "recency_ease", "sasrec")
ScoreFn = Callable[[np.ndarray], torch.Tensor]


def evaluate_split(score_fn: ScoreFn, split: Split, part: str, ks: tuple[int, ...], batch_size: int = 1024,
                   per_user: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn`` on ``part`` ('valid' or 'test') of ``split`` (``per_user``: see
    :func:`~sora.evaluation.metrics.evaluate_scores`)."""
    exclude = split.matrix("train") if part == "valid" else split.matrix("train", "valid")
    cold = split.spec.mode == "cold-item"
    candidates = (split.cold_valid_items if part == "valid" else split.cold_test_items) if cold else None
    df = split.part(part)
    return evaluate_scores(score_fn, df["u"].to_numpy(), df["i"].to_numpy(), split.num_items, ks, exclude,
                           candidates, batch_size, per_user)


def evaluate_history(fn: HistoryScoreFn, split: Split, part: str, ks: tuple[int, ...],
                     batch_size: int = 1024, per_user: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Like :func:`evaluate_split`, for a model fed each user's prefix before ``part``'s target (Protocol T)."""
    return evaluate_split(with_histories(fn, history_of(split, part)), split, part, ks, batch_size, per_user)


def model_scores(rec: Recommender, split: Split, part: str, alpha: float | None = None) -> ScoreFn:
    """Sora's score function for ``part``: under leave-last-out, test reads the valid item as a recent event.

    The fitted user vectors already encode the training history (the prefix before the valid target);
    for the test target the valid item is folded in through :meth:`Recommender.score_user_recent`.
    """
    if split.spec.mode not in SEQUENTIAL_SPLIT_MODES or part != "test":
        return lambda users: rec.score_users(users, alpha)
    recent = sequences(split, "valid")

    def score(users: np.ndarray) -> torch.Tensor:
        return torch.stack([rec.score_user_recent(int(u), recent[u].tolist(), alpha) for u in users])

    return score


def rebuild_split(rec: Recommender, dataset: Dataset) -> Split:
    """The model's own split, rebuilt from its saved spec; refuses data other than what it was trained on."""
    expected = rec.meta.get("data_fingerprint")
    actual = dataset.fingerprint()
    if expected and expected != actual:
        raise DataError(f"{dataset.source}: data hash {actual} differs from the model's training data "
                        f"({expected}); evaluate on the data the model was trained on")
    split = make_split(dataset, rec.config.split)
    if split.item_ids != rec.item_ids or split.user_ids != rec.user_ids:
        raise DataError(f"{dataset.source}: id maps differ from the model's")
    return split


# ------------------------------------------------------------------------------------ baselines

def mostpop_scores(x_train: sp.csr_matrix) -> ScoreFn:
    pop = torch.from_numpy(np.asarray(x_train.sum(0)).ravel().astype(np.float32))
    return lambda users: pop.repeat(len(users), 1)


def sasrec_baseline(split: Split, cfg: SoraConfig, sasrec_cfg=None) -> tuple[HistoryScoreFn, dict[str, Any]]:
    """SASRec trained on the training sequences, early-stopped on valid NDCG@10; (score fn, fit info)."""
    from sora.model.sasrec import SASRecConfig, fit_sasrec

    sc = sasrec_cfg or SASRecConfig(seed=cfg.train.seed)
    valid_hist = history_of(split, "valid")

    def validate(model) -> float:
        fn = with_histories(lambda users, hists: model.score(hists), valid_hist)
        return evaluate_split(fn, split, "valid", (10,), cfg.eval.batch_size)["ndcg@10"]

    res = fit_sasrec(sequences(split, "train"), split.num_items, sc, validate)
    info = {"valid_ndcg@10": res.best_valid, "best_epoch": res.best_epoch, "epochs_run": len(res.history)}
    return (lambda users, hists: res.model.score(hists)), info


def bpr_scores(x_train: sp.csr_matrix, seed: int, factors: int = 64, iterations: int = 100) -> ScoreFn:
    """BPR-MF from the `implicit` library."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    model = BayesianPersonalizedRanking(factors=factors, iterations=iterations, learning_rate=0.01,
                                        regularization=0.01, random_state=seed)
    with threadpool_limits(1, "blas"):
        model.fit(x_train.astype(np.float32), show_progress=False)
    uf, itf = torch.from_numpy(np.asarray(model.user_factors)), torch.from_numpy(np.asarray(model.item_factors))
    return lambda users: uf[torch.as_tensor(users, dtype=torch.long)] @ itf.T


def textknn_scores(x_train: sp.csr_matrix, text: np.ndarray) -> ScoreFn:
    """Cold-start text baseline: cosine between an item's text and the mean text of the user's items."""
    t = torch.nn.functional.normalize(torch.from_numpy(text), dim=1)
    profile = torch.from_numpy(np.asarray(x_train @ t.numpy(), dtype=np.float32))
    profile = torch.nn.functional.normalize(profile, dim=1)
    return lambda users: profile[torch.as_tensor(users, dtype=torch.long)] @ t.T


def lightgcn_config(cfg: SoraConfig) -> SoraConfig:
    """The LightGCN-like ablation: ids only, no text, no Transformer, no side edges, no item–item head."""
    abl = copy.deepcopy(cfg)
    abl.model.use_text = abl.model.use_transformer = False
    abl.model.use_item_item_score = False
    abl.graph.item_edges = abl.graph.user_edges = "none"
    return abl


def run_baselines(split: Split, cfg: SoraConfig, names: tuple[str, ...], embeddings: ItemEmbeddings | None = None,
                  items: pd.DataFrame | None = None, progress: bool = False,
                  per_user: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, dict[str, Any]]:
    """Fit each baseline on the split's training part; return test metrics (plus fit seconds) per baseline.

    ``per_user``: filled with each baseline's per-user test metrics (see :func:`~sora.evaluation.metrics.evaluate_scores`).

    ease and recency_ease report their ``lambda`` (chosen on valid when ``graph.ease_lambda`` is null,
    jointly with recency_ease's ``decay``: tuned EASE) and, when chosen, its ``valid_ndcg@10``. On a
    leave-last-out split each also reports ``valid_ndcg@10`` (sasrec its ``best_epoch``); the sequence
    baselines are skipped, with a warning, on other splits.
    """
    x_train = split.matrix("train")
    sequential = split.spec.mode in SEQUENTIAL_SPLIT_MODES
    out: dict[str, dict[str, Any]] = {}

    def tuned_ease(decays: tuple[float, ...]) -> EaseChoice:
        """EASE with λ (and recency-EASE's decay) chosen on its own valid when graph.ease_lambda is null."""
        return ease_on_valid(x_train, split, cfg.graph.ease_lambda, decays, cfg.eval.batch_size,
                             cfg.graph.ease_lambda_search_max_items)

    for name in names:
        start = time.perf_counter()
        hist_fn: HistoryScoreFn | None = None  # set for models that read the prefix (Protocol T)
        extra: dict[str, Any] = {}
        ease: EaseChoice | None = None
        if name in ("ease", "recency_ease") and split.num_items > cfg.graph.ease_max_items:
            log.warning("%s skipped: %d items > graph.ease_max_items", name, split.num_items)
            continue
        if name in SEQUENCE_BASELINES and not sequential:
            log.warning("%s skipped: it needs a next-item split (split.mode=leave-last-out or global-temporal), not %s",
                        name, split.spec.mode)
            continue
        if name == "mostpop":
            fn = mostpop_scores(x_train)
        elif name == "ease" and sequential:
            ease = tuned_ease((1.0,))
            hist_fn = recency_ease_scores(ease.weights, 1.0)  # decay 1: the binary prefix row, plain EASE
        elif name == "ease":
            ease = tuned_ease((1.0,))
            fn = ease_score_fn(x_train, ease.weights)
        elif name == "recency_ease":
            ease = tuned_ease(DECAY_GRID)
            hist_fn = recency_ease_scores(ease.weights, ease.decay)
            extra["decay"] = ease.decay
        elif name == "sasrec":
            hist_fn, extra = sasrec_baseline(split, cfg)
        elif name == "bpr":
            fn = bpr_scores(x_train, cfg.train.seed)
        elif name == "textknn":
            if embeddings is None:
                continue
            fn = textknn_scores(x_train, embeddings.aligned(split.item_ids))
        elif name == "lightgcn":
            from sora.training.train import train_model

            res = train_model(split, None, items if items is not None else pd.DataFrame({"item_id": split.item_ids}),
                              lightgcn_config(cfg), progress=progress)
            fn = res.recommender.score_users
        else:
            raise ValueError(f"unknown baseline {name!r}")
        if ease is not None:
            extra["lambda"] = ease.lam
            if ease.valid:
                extra["valid_ndcg@10"] = ease.valid[ease.lam]
        fit_s = time.perf_counter() - start
        pu = None if per_user is None else per_user.setdefault(name, {})
        if hist_fn is not None:
            out[name] = evaluate_history(hist_fn, split, "test", cfg.eval.ks, cfg.eval.batch_size, pu)
            if "valid_ndcg@10" not in extra:
                extra["valid_ndcg@10"] = evaluate_history(hist_fn, split, "valid", (10,), cfg.eval.batch_size)["ndcg@10"]
        else:
            out[name] = evaluate_split(fn, split, "test", cfg.eval.ks, cfg.eval.batch_size, pu)
            if sequential:
                extra["valid_ndcg@10"] = evaluate_split(fn, split, "valid", (10,), cfg.eval.batch_size)["ndcg@10"]
        out[name].update(extra)
        out[name]["fit_seconds"] = fit_s
        log.info("baseline %s: test ndcg@10 %.4f (%.1fs)", name, out[name]["ndcg@10"], fit_s)
    return out


def evaluate_model(rec: Recommender, split: Split, cfg: SoraConfig | None = None, baselines: tuple[str, ...] = (),
                   embeddings: ItemEmbeddings | None = None) -> dict[str, Any]:
    """``{"valid": {...}, "test": {...}, "baselines": {...}}`` (test metrics per baseline).

    On a leave-last-out split the sequence baselines join any requested baselines, and Sora's test
    scores read the valid item as the newest history event (:func:`model_scores`).
    """
    cfg = cfg or rec.config
    if baselines and split.spec.mode in SEQUENTIAL_SPLIT_MODES:
        baselines = tuple(dict.fromkeys((*baselines, *SEQUENCE_BASELINES)))
    report: dict[str, Any] = {
        "valid": evaluate_split(model_scores(rec, split, "valid"), split, "valid", cfg.eval.ks, cfg.eval.batch_size),
        "test": evaluate_split(model_scores(rec, split, "test"), split, "test", cfg.eval.ks, cfg.eval.batch_size),
        "split": {"mode": split.spec.mode, "seed": split.spec.seed, "rating_threshold": split.spec.rating_threshold},
        "model": {"alpha": rec.alpha, "best_epoch": rec.meta.get("best_epoch"), "encoder_id": rec.meta.get("encoder_id")},
    }
    if baselines:
        report["baselines"] = run_baselines(split, cfg, baselines, embeddings, rec.items)
    return report
