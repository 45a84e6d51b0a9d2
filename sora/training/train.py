"""Training (DESIGN.md §5.5): prepare → embed → graph → train → fitted :class:`~sora.model.recommender.Recommender`.

This module is the public facade; the work is in three parts, each its own module:

1. :mod:`sora.training.prep` — preparation, built once: training matrix, graph (on the device),
   history tensors, logQ, item–item head; every stage timed with its peak memory.
2. :mod:`sora.training.loop` — the loop: epochs, losses, early stopping.
3. :mod:`sora.training.selection` — selection on valid: best epoch, item–item head weight.

Deterministic on CPU for a seed (torch, numpy and DGL seeded). The device comes from
:func:`~sora.training.device.resolve_device` and is recorded in ``rec.meta["device"]``.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from sora.config import GraphConfig, SoraConfig
from sora.data.contract import Dataset
from sora.data.protocol import sequences
from sora.data.split import Split, make_split
from sora.model.recommender import Recommender
from sora.model.text import EmbeddingCache, ItemEmbeddings, TextEncoder, embed_items, load_encoder
from sora.training.checkpoint import Checkpointer, fingerprint
from sora.training.device import (
    check_training_memory,
    deterministic,
    device_info,
    peak_device_memory_gb,
    resolve_device,
    training_memory_parts,
)
from sora.training.loop import fit, run_epochs, trained_head
from sora.training.prep import (
    Prepared,
    graph_config,
    head_lambdas,
    item_item_head,
    peak_rss_mb,
    prepare_training,
    recent_history,
)
from sora.training.selection import ALPHA_GRID, select_heads, valid_metrics, valid_uncertainty

log = logging.getLogger(__name__)

__all__ = ["ALPHA_GRID", "Prepared", "TrainResult", "item_item_head", "prepare", "prepare_training",
           "recent_history", "resolve_device", "seed_everything", "train_model", "tuning_trials"]


@dataclass
class TrainResult:
    recommender: Recommender | None  # None: a tuning trial stopped by its prune rule
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    valid: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the preparation, kept only while tuning trials share it
    prepared: Prepared | None = None

    @property
    def valid_se(self) -> float:
        """The standard error of valid NDCG@10 over valid users at the kept epoch (before the heads)."""
        return next((r.get("valid_ndcg@10_se", 0.0) for r in self.history if r["epoch"] == self.best_epoch), 0.0)


def seed_everything(seed: int) -> None:
    from sora.model.graph import import_dgl

    torch.manual_seed(seed)
    np.random.seed(seed)
    import_dgl().seed(seed)


def prepare(dataset: Dataset, cfg: SoraConfig, encoder: TextEncoder | None = None,
            cache: EmbeddingCache | None = None, progress: bool = True) -> tuple[Split, ItemEmbeddings | None]:
    """Split the data and embed item text (through the cache); what `sora train --data` runs first."""
    t0 = time.perf_counter()
    split = make_split(dataset, cfg.split)
    log.info("prepare %-14s %8.2fs  peak RSS %8.1f MiB", "split", time.perf_counter() - t0, peak_rss_mb())
    emb = None
    if cfg.model.use_text:
        t0 = time.perf_counter()
        encoder = encoder or load_encoder(cfg.text)
        emb, stats = embed_items(dataset.items, cfg.data.item_text_template, encoder, cache,
                                 cfg.text.batch_size, progress)
        log.info("embeddings: %d encoded, %d cached", stats.encoded, stats.cached)
        log.info("prepare %-14s %8.2fs  peak RSS %8.1f MiB", "embed", time.perf_counter() - t0, peak_rss_mb())
    return split, emb


def _graph_config(cfg: SoraConfig) -> GraphConfig:
    """Kept for callers of the old name; see :func:`sora.training.prep.graph_config`."""
    return graph_config(cfg)


def build_model(prep: Prepared, cfg: SoraConfig):
    """The SoraModel for ``prep`` (graph encoder over every edge type), on the training device."""
    from sora.model.gnn import GraphEncoder
    from sora.model.network import SoraModel

    cfg = cfg.resolved()
    mc = cfg.model
    encoder = GraphEncoder(prep.etypes, mc.num_layers, mc.side_weight) if prep.graph is not None else None
    text_dim = prep.text.shape[1] if prep.text is not None else 0
    return SoraModel(mc, prep.split.num_users, prep.split.num_items, text_dim, prep.warm, encoder,
                     causal=cfg.causal_training).to(prep.device)


#: keys a tuning trial may change without preparing the data again (the graph, histories and head stay)
_SHARES_PREPARATION = ("train.temperature", "train.lr", "train.weight_decay", "train.max_epochs", "train.patience",
                       "model.dropout", "model.transformer_layers", "model.transformer_heads", "model.anonymous_prob",
                       "model.position_std")


def tuning_trials(cfg: SoraConfig) -> list[list[str]]:
    """One override list per combination of ``tune.grid`` (in grid order); ``[[]]`` without a grid."""
    axes = []
    for entry in cfg.tune.grid or ():
        key, _, values = entry.partition("=")
        axes.append([f"{key.strip()}={v.strip()}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)]


def train_model(split: Split, embeddings: ItemEmbeddings | None, items: pd.DataFrame, cfg: SoraConfig,
                user_edges_df: pd.DataFrame | None = None, progress: bool = True,
                prepared: Prepared | None = None, checkpoint: Checkpointer | None = None) -> TrainResult:
    """Train Sora on ``split`` and return the fitted recommender with its per-epoch history.

    With a ``tune.grid``, trains once per combination and returns the one with the best valid NDCG@10
    (the first of equals); its config carries the chosen values and ``meta["tuning"]`` every trial, with
    its valid standard error. A trial after the first that does not lead the first by ``tune.prune_lead_se``
    standard errors at the end of the warm-up stops there (:func:`prune_rule`) and is not a candidate.
    ``prepared`` reuses a :class:`Prepared` built earlier for the same split and config. ``checkpoint``:
    where each trial's loop saves its state and resumes from (:mod:`sora.training.checkpoint`); a finished trial's
    last checkpoint lets a restarted run skip its epochs.
    """
    start = time.perf_counter()
    cfg = cfg.resolved()  # null AUTO keys take their training mode's values, saved with the model
    trials = tuning_trials(cfg)

    def trial_checkpoint(n: int, trial_cfg: SoraConfig) -> Checkpointer | None:
        if checkpoint is None or trial_cfg.train.checkpoint_every <= 0:
            return None
        return checkpoint.for_trial(n, fingerprint(trial_cfg.to_dict(), split.spec.__dict__))

    if len(trials) == 1:
        one = cfg.with_overrides(trials[0])
        return _train_once(split, embeddings, items, one, user_edges_df, progress, prepared,
                           checkpoint=trial_checkpoint(1, one))
    shared = all(o.split("=", 1)[0] in _SHARES_PREPARATION for o in trials[0])
    best: TrainResult | None = None
    report = []
    prepared = prepared if shared else None  # a caller's preparation fits trials that do not change it
    first: list[dict[str, Any]] | None = None  # the first trial's per-epoch history: what later ones must beat
    for n, overrides in enumerate(trials, 1):
        log.info("tuning on valid, trial %d/%d: %s", n, len(trials), " ".join(overrides))
        trial_cfg = cfg.with_overrides(overrides)
        prune = None if first is None else prune_rule(first, trial_cfg)
        res = _train_once(split, embeddings, items, trial_cfg, user_edges_df, progress, prepared,
                          keep_prepared=shared, checkpoint=trial_checkpoint(n, trial_cfg), prune=prune)
        prepared, res.prepared = res.prepared, None
        first = res.history if first is None else first
        entry = {"overrides": overrides, "valid_ndcg@10": res.valid.get("ndcg@10", 0.0),
                 "valid_ndcg@10_se": res.valid_se, "best_epoch": res.best_epoch, "seconds": round(res.seconds, 1)}
        if res.recommender is None:
            entry["pruned_at_epoch"] = res.history[-1]["epoch"]
            log.info("trial %d/%d: stopped at epoch %d, valid ndcg@10 %.4f: not ahead of trial 1 by %g standard "
                     "errors", n, len(trials), entry["pruned_at_epoch"], res.history[-1]["valid_ndcg@10"],
                     cfg.tune.prune_lead_se)
        else:
            log.info("trial %d/%d: valid ndcg@10 %.4f ± %.4f", n, len(trials), entry["valid_ndcg@10"],
                     entry["valid_ndcg@10_se"])
        report.append(entry)
        if res.recommender is not None and (best is None or entry["valid_ndcg@10"] > best.valid.get("ndcg@10", 0.0)):
            best = res
    assert best is not None
    best.seconds = time.perf_counter() - start
    best.recommender.meta["tuning"] = report
    best.recommender.meta["train_seconds"] = best.seconds
    chosen = next(r["overrides"] for r in report
                  if "pruned_at_epoch" not in r and r["valid_ndcg@10"] == best.valid.get("ndcg@10", 0.0))
    log.info("tuned on valid: %s (valid ndcg@10 %.4f)", " ".join(chosen), best.valid.get("ndcg@10", 0.0))
    return best


def prune_rule(first: list[dict[str, Any]], cfg: SoraConfig) -> Callable[[int, float], bool] | None:
    """``run_epochs``' prune rule for a trial after the first (None: ``tune.prune_lead_se`` null).

    At its first evaluated epoch from ``train.warmup_epochs`` on, the trial goes on only if its valid
    NDCG@10 is at least the first trial's at that epoch plus ``tune.prune_lead_se`` times the first
    trial's standard error there; the first trial's last evaluation stands in when it stopped earlier.
    """
    lead = cfg.tune.prune_lead_se
    evaluated = [r for r in first if "valid_ndcg@10" in r]
    tc = cfg.train
    # the one epoch judged: the first evaluated one from the warm-up on (a function of the config alone, so a
    # trial resumed from its checkpoint is judged where the uninterrupted one was, and only there)
    judged = next((e for e in range(max(tc.warmup_epochs, 1), tc.max_epochs + 1)
                   if e % tc.eval_every == 0 or e == tc.max_epochs), None)
    if lead is None or not evaluated or judged is None:
        return None
    ref = next((r for r in evaluated if r["epoch"] >= judged), evaluated[-1])
    bar = ref["valid_ndcg@10"] + lead * ref.get("valid_ndcg@10_se", 0.0)

    def prune(epoch: int, metric: float) -> bool:
        return epoch == judged and metric < bar

    return prune


def _train_once(split: Split, embeddings: ItemEmbeddings | None, items: pd.DataFrame, cfg: SoraConfig,
                user_edges_df: pd.DataFrame | None, progress: bool, prepared: Prepared | None,
                keep_prepared: bool = False, checkpoint: Checkpointer | None = None,
                prune: Callable[[int, float], bool] | None = None) -> TrainResult:
    start = time.perf_counter()
    tc = cfg.train  # resolved by train_model
    device = resolve_device(tc.device)  # an impossible device fails here, before any work
    seed_everything(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    info = device_info(device)
    log.info("training on %s", info)
    check_training_memory(device, training_memory_parts(split.num_users, split.num_items, len(split.train), cfg))
    prep = prepared or prepare_training(split, embeddings, items, cfg, device, user_edges_df)
    model = build_model(prep, cfg)
    with deterministic(device):  # the same seed gives the same model on the CPU, run after run
        loop = run_epochs(model, prep, cfg, progress, checkpoint=checkpoint, prune=prune)
    if loop.pruned_at is not None:  # not a candidate: nothing is fitted or selected for it
        return TrainResult(None, loop.history, loop.best.epoch, time.perf_counter() - start,
                           {"ndcg@10": loop.history[-1].get("valid_ndcg@10", 0.0)}, prep.stages,
                           prep if keep_prepared else None)
    rec = fit(model, prep, prep.ii)
    if loop.head_weight is not None:
        trained_head(rec, prep, loop.head_weight)
    rec.config = cfg  # a shared preparation was built with another trial's config
    if cfg.graph.ease_lambda is None and prep.ease_lambda is not None:  # the λ chosen on valid is saved
        rec.config = cfg.with_overrides([f"graph.ease_lambda={prep.ease_lambda}"])
    rec.meta.update({"best_epoch": loop.best.epoch, "epochs_run": len(loop.history), "history": loop.history,
                     "prepare": prep.stages})
    vu, vi = split.valid["u"].to_numpy(), split.valid["i"].to_numpy()
    candidates = split.cold_valid_items if split.spec.mode == "cold-item" else None
    if loop.head_weight is None:
        lambdas = head_lambdas(split, cfg, prep.ease_lambda)
        with_transitions = tc.transition_head if tc.transition_head is not None else cfg.causal_training
        valid = select_heads(rec, vu, vi, cfg, prep.x_train, sequences(split, "train"), with_transitions,
                             candidates, partial(prep.head_at, cfg=cfg.graph), lambdas)
        if lambdas:  # the saved config holds the head's λ
            rec.config = rec.config.with_overrides([f"graph.ease_lambda={rec.meta['head_lambda']}"])
    else:  # train.head_in_loss: the head's weight and decay are the ones training learned with
        valid = valid_metrics(rec, vu, vi, cfg, prep.x_train, candidates)
        log.info("item-item weight %.4g, decay %g learned in training (valid ndcg@10 %.4f)", rec.alpha,
                 rec.head_decay, valid["ndcg@10"])
    if len(vu):
        rec.meta["valid_uncertainty"] = valid_uncertainty(rec, vu, vi, cfg, prep.x_train, candidates)
    result = TrainResult(rec, loop.history, loop.best.epoch, time.perf_counter() - start, valid, prep.stages,
                         prep if keep_prepared else None)
    info["peak_memory_gb"] = peak_device_memory_gb(device)
    info["peak_rss_mb"] = round(peak_rss_mb(), 1)
    rec.meta["device"] = info
    rec.meta["train_seconds"] = result.seconds
    rec.meta["valid"] = valid
    return result
