"""Evaluation under the protocol of DESIGN.md §4, for Sora and the baselines, on one split.

Valid is ranked excluding training items, test excluding training and valid items, over the full
catalogue; in ``cold-item`` mode over the held-out cold items only. Baselines (``mostpop``,
``ease``, ``bpr``, ``lightgcn``, ``textknn``) are fitted on the identical training part.
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

from sora.config import SoraConfig
from sora.data import DataError, Dataset
from sora.itemsim import ease_weights
from sora.metrics import evaluate_scores
from sora.recommender import Recommender
from sora.split import Split, make_split
from sora.text import ItemEmbeddings

log = logging.getLogger(__name__)

BASELINES = ("mostpop", "ease", "bpr", "lightgcn")
COLD_BASELINES = ("mostpop", "textknn")
ScoreFn = Callable[[np.ndarray], torch.Tensor]


def evaluate_split(score_fn: ScoreFn, split: Split, part: str, ks: tuple[int, ...], batch_size: int = 1024) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn`` on ``part`` ('valid' or 'test') of ``split``."""
    exclude = split.matrix("train") if part == "valid" else split.matrix("train", "valid")
    cold = split.spec.mode == "cold-item"
    candidates = (split.cold_valid_items if part == "valid" else split.cold_test_items) if cold else None
    df = split.part(part)
    return evaluate_scores(score_fn, df["u"].to_numpy(), df["i"].to_numpy(), split.num_items, ks, exclude,
                           candidates, batch_size)


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


def ease_scores(x_train: sp.csr_matrix, lam: float) -> ScoreFn:
    b = ease_weights(x_train, lam)
    return lambda users: torch.from_numpy(np.asarray(x_train[users] @ b, dtype=np.float32))


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
                  items: pd.DataFrame | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Fit each baseline on the split's training part; return test metrics (plus fit seconds) per baseline."""
    x_train = split.matrix("train")
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        start = time.perf_counter()
        if name == "mostpop":
            fn = mostpop_scores(x_train)
        elif name == "ease":
            if split.num_items > cfg.graph.ease_max_items:
                log.warning("ease skipped: %d items > graph.ease_max_items", split.num_items)
                continue
            fn = ease_scores(x_train, cfg.graph.ease_lambda)
        elif name == "bpr":
            fn = bpr_scores(x_train, cfg.train.seed)
        elif name == "textknn":
            if embeddings is None:
                continue
            fn = textknn_scores(x_train, embeddings.aligned(split.item_ids))
        elif name == "lightgcn":
            from sora.train import train_model

            res = train_model(split, None, items if items is not None else pd.DataFrame({"item_id": split.item_ids}),
                              lightgcn_config(cfg), progress=progress)
            fn = res.recommender.score_users
        else:
            raise ValueError(f"unknown baseline {name!r}")
        fit_s = time.perf_counter() - start
        out[name] = evaluate_split(fn, split, "test", cfg.eval.ks, cfg.eval.batch_size)
        out[name]["fit_seconds"] = fit_s
        log.info("baseline %s: test ndcg@10 %.4f (%.1fs)", name, out[name]["ndcg@10"], fit_s)
    return out


def evaluate_model(rec: Recommender, split: Split, cfg: SoraConfig | None = None, baselines: tuple[str, ...] = (),
                   embeddings: ItemEmbeddings | None = None) -> dict[str, Any]:
    """``{"valid": {...}, "test": {...}, "baselines": {...}}`` (test metrics per baseline)."""
    cfg = cfg or rec.config
    report: dict[str, Any] = {
        "valid": evaluate_split(rec.score_users, split, "valid", cfg.eval.ks, cfg.eval.batch_size),
        "test": evaluate_split(rec.score_users, split, "test", cfg.eval.ks, cfg.eval.batch_size),
        "split": {"mode": split.spec.mode, "seed": split.spec.seed, "rating_threshold": split.spec.rating_threshold},
        "model": {"alpha": rec.alpha, "best_epoch": rec.meta.get("best_epoch"), "encoder_id": rec.meta.get("encoder_id")},
    }
    if baselines:
        report["baselines"] = run_baselines(split, cfg, baselines, embeddings, rec.items)
    return report
