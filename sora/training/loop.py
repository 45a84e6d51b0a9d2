"""Training, part 2 of 3: the loop — epochs, losses, early stopping (DESIGN.md §5.5).

The losses of a step live in :mod:`sora.training.losses`. AdamW; valid NDCG@10 every ``eval_every`` epochs drives
:class:`~sora.training.selection.BestEpoch`. Under torchrun each rank takes its share of every batch and
gradients are averaged, so every rank ends with the same weights. :func:`fit` freezes the weights
into the fitted vectors serving uses.

Letters: B batch, U users, I items, L history length, D dim.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from sora.config import SoraConfig
from sora.evaluation.metrics import DeviceRanker, evaluate_scores, standard_error
from sora.model.network import SoraModel
from sora.model.recommender import Recommender
from sora.training.checkpoint import Checkpointer
from sora.training.losses import step_loss, window_loss
from sora.training.prep import Prepared
from sora.training.selection import BestEpoch

log = logging.getLogger(__name__)


@dataclass
class LoopResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestEpoch | None = None
    #: the epoch a ``prune`` rule stopped the run at (None: it ran to the end or early stopping)
    pruned_at: int | None = None

    @property
    def head_weight(self) -> float | None:
        """``train.head_in_loss``: the learned weight of the item–item head at the best epoch (the Recommender's alpha)."""
        best = self.best.epoch if self.best is not None else None
        return next((r["head_weight"] for r in self.history if r["epoch"] == best and "head_weight" in r), None)


def trained_head(rec: Recommender, prep: Prepared, alpha: float) -> Recommender:
    """``rec`` scoring with the head as training saw it: weight ``alpha``, the preparation's decay and rows."""
    rec.alpha = alpha
    rec.head_decay, rec.head_weights = prep.head_decay, prep.head_weights
    return rec


def run_epochs(model: SoraModel, prep: Prepared, cfg: SoraConfig, progress: bool = True,
               max_steps: int | None = None, checkpoint: Checkpointer | None = None,
               prune: Callable[[int, float], bool] | None = None) -> LoopResult:
    """Train ``model`` on ``prep`` until ``train.max_epochs`` or early stopping; loads the best epoch's weights.

    Every evaluated epoch records valid NDCG@10 and its standard error over valid users
    (``valid_ndcg@10_se``). ``prune(epoch, valid NDCG@10)`` True stops the run there
    (``LoopResult.pruned_at``; a tuning trial that did not earn its full training).
    ``max_steps`` (benchmarks) stops each epoch after that many optimiser steps. ``checkpoint``: every
    ``train.checkpoint_every`` epochs the loop's whole state is saved there, and a run that finds one
    resumes from it (``resumed from epoch N``) and ends with the model an uninterrupted run gives.

    Everything a step reads is on the training device before the first step (pairs or windows,
    histories, negatives, logQ); the random draws come from one CPU generator, so CPU and CUDA consume
    the same streams, but each epoch's permutation moves to the device in one copy. The loss is summed
    on the device and read once an epoch, and valid users are ranked on the device
    (:class:`~sora.evaluation.metrics.DeviceRanker`): on CUDA no step waits on the host.
    """
    cfg = cfg.resolved()
    tc = cfg.train
    device = prep.device
    pu, pi = (t.to(device) for t in prep.pairs)
    windows = None if prep.windows is None else tuple(t.to(device) for t in prep.windows)
    num_items = prep.split.num_items
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    head = prep.head_term  # train.head_in_loss: the head's weight is learned (log scale, no weight decay)
    log_gain = None
    if head is not None:
        log_gain = torch.nn.Parameter(torch.tensor(float(np.log(head.init_gain)), device=device))
        opt.add_param_group({"params": [log_gain], "weight_decay": 0.0})
    gen = torch.Generator().manual_seed(tc.seed)
    rank, world = distributed()
    split = prep.split
    candidates = split.cold_valid_items if split.spec.mode == "cold-item" else None
    vu, vi = split.valid["u"].to_numpy(), split.valid["i"].to_numpy()
    # the dot product alone is ranked on the device; the learned head (head_in_loss) goes through the Recommender
    ranker = (DeviceRanker(vu, vi, num_items, (10, 20), device, exclude=prep.x_train, candidates=candidates,
                           batch_size=cfg.eval.batch_size) if log_gain is None else None)
    # full-softmax negatives: the warm items (None: all of them), on the device once, not per step
    negatives = None if bool(prep.warm.all()) else prep.warm.to(device)
    best = BestEpoch(tc)
    history: list[dict[str, Any]] = []
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if tc.amp and device.type == "cuda"
           else contextlib.nullcontext())
    # causal training steps over windows of L next-item targets: about train.batch_size targets a step
    rows, batch = ((len(windows[0]), max(1, tc.batch_size // cfg.model.history_len)) if windows is not None
                   else (len(pu), tc.batch_size))
    start = 1
    state = checkpoint.latest() if checkpoint is not None else None
    if state is not None:
        start = restore(state, model, opt, log_gain, gen, best, device) + 1
        history = state["history"]
        # said at warning level: a person running `sora train` without -v should see a run was resumed
        log.warning("resumed from epoch %d (%s)", start - 1, checkpoint.uri)
    stop = state is not None and state.get("stopped", False)
    pruned_at = None if state is None else state.get("pruned_at")
    bar = tqdm(range(start, tc.max_epochs + 1), desc="training", unit="epoch", disable=not progress or rank > 0,
               initial=start - 1, total=tc.max_epochs)
    for epoch in ([] if stop else bar):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(rows, generator=gen).to(device, non_blocking=True)
        total, steps = torch.zeros((), device=device), 0
        for s in range(0, rows - world + 1, batch):
            idx = order[s:s + batch][rank::world]  # data parallel: each rank its share of the batch
            with amp:
                if windows is not None:
                    loss = window_loss(model, prep, *(t[idx] for t in windows), tc, gen, negatives, idx=idx,
                                       log_gain=log_gain)
                else:
                    loss = step_loss(model, prep, pu[idx], pi[idx], num_items, tc, gen, negatives=negatives)
            opt.zero_grad()
            # a rank's mean loss weighs by its share of the batch, so the averaged gradient is the whole batch's
            (loss * (len(idx) * world / min(batch, rows - s)) if world > 1 else loss).backward()
            if model.fusion is not None:
                model.fusion.drop_key_bias_grad()
            if world > 1:
                average_gradients(model, world, log_gain)
            opt.step()
            total += loss.detach().float()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        record = {"epoch": epoch, "loss": float(total) / max(steps, 1), "epoch_seconds": time.perf_counter() - t0,
                  "steps": steps}
        if epoch % tc.eval_every == 0 or epoch == tc.max_epochs:
            t1 = time.perf_counter()
            per_user: dict[str, np.ndarray] = {}
            if ranker is not None:
                metrics = ranker.evaluate(dot_scores(model, prep), per_user)
            else:  # the logits' gain · head = alpha · head / T
                rec = trained_head(fit(model, prep, prep.ii), prep, float(log_gain.exp()) * tc.temperature)
                metrics = evaluate_scores(partial(rec.score_users, alpha=rec.alpha), vu, vi, num_items, (10, 20),
                                          exclude=prep.x_train, candidates=candidates,
                                          batch_size=cfg.eval.batch_size, per_user=per_user)
                record["head_weight"] = rec.alpha
            record.update({f"valid_{k}": v for k, v in metrics.items() if k in ("ndcg@10", "recall@10", "recall@20")})
            record["valid_ndcg@10_se"] = standard_error(per_user.get("ndcg@10", np.zeros(0)))
            record["eval_seconds"] = time.perf_counter() - t1
            best.update(epoch, metrics["ndcg@10"], model.state_dict())
            bar.set_postfix(loss=f"{record['loss']:.4f}", ndcg10=f"{metrics['ndcg@10']:.4f}")
        history.append(record)
        log.debug("epoch %s", record)
        stop = best.should_stop(epoch)
        if prune is not None and "valid_ndcg@10" in record and prune(epoch, record["valid_ndcg@10"]):
            pruned_at = epoch
            stop = True
        if checkpoint is not None and checkpoint.due(epoch, stop or epoch == tc.max_epochs):
            checkpoint.save(epoch, {**snapshot(model, opt, log_gain, gen, best, history, stop), "pruned_at": pruned_at})
        if stop:
            log.info("early stop at epoch %d (best %d, valid ndcg@10 %.4f)", epoch, best.epoch, best.metric)
            break
    bar.close()
    if best.state is not None:
        model.load_state_dict(best.state)
    return LoopResult(history, best, pruned_at)


def snapshot(model: SoraModel, opt: torch.optim.Optimizer, log_gain: torch.Tensor | None, gen: torch.Generator,
             best: BestEpoch, history: list[dict[str, Any]], stopped: bool) -> dict[str, Any]:
    """The loop's whole state after an epoch (what :func:`restore` puts back), for a checkpoint."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "log_gain": None if log_gain is None else log_gain.detach().cpu(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy_rng": np.random.get_state(), "best": (best.metric, best.epoch, best.state),
            "history": history, "stopped": stopped}


def restore(state: dict[str, Any], model: SoraModel, opt: torch.optim.Optimizer, log_gain: torch.Tensor | None,
            gen: torch.Generator, best: BestEpoch, device: torch.device) -> int:
    """Put a :func:`snapshot` back; returns the epoch it was taken after."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # moves its tensors to the parameters' device
    if log_gain is not None and state["log_gain"] is not None:
        with torch.no_grad():
            log_gain.copy_(state["log_gain"].to(device))
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    np.random.set_state(state["numpy_rng"])
    best.metric, best.epoch, best.state = state["best"]
    return int(state["epoch"])


@dataclass
class Frozen:
    """The current weights as serving sees them (eval mode): graph tokens, item vectors and a user-vector
    function over device user indices. What :func:`fit` freezes for every user and :func:`dot_scores`
    scores for a batch of valid users, computed one way for both."""

    g_user: torch.Tensor  # (U, D)
    g_item: torch.Tensor  # (I, D)
    item_vecs: torch.Tensor  # (I, D)
    causal: bool  # causal models read a user only through the history (anonymous token)
    user_vectors: Any  # (B,) device user indices → (B, D)


@torch.no_grad()
def frozen(model: SoraModel, prep: Prepared) -> Frozen:
    """Propagate once in eval mode (the model is left in eval mode; the loop sets train() each epoch)."""
    model.eval()
    g_user, g_item = model.propagate(prep.graph, prep.text)
    causal = prep.windows is not None and model.fusion is not None

    def user_vectors(users: torch.Tensor) -> torch.Tensor:
        return model.user_vectors(None if causal else g_user[users], prep.hist[users], prep.hmask[users], g_item)

    return Frozen(g_user, g_item, model.item_vectors(g_item, prep.text), causal, user_vectors)


def dot_scores(model: SoraModel, prep: Prepared):
    """Device user indices (B,) → (B, I) dot-product scores of the current weights, on the training device:
    the vectors :func:`fit` freezes, for the batch's users only."""
    f = frozen(model, prep)
    return lambda users: f.user_vectors(users) @ f.item_vecs.T


def distributed() -> tuple[int, int]:
    """(rank, world size) when launched under torchrun with a process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(model: torch.nn.Module, world: int, extra: torch.Tensor | None = None) -> None:
    """Average gradients across ranks in one bucketed all-reduce, so every rank takes the same optimiser step.

    What DistributedDataParallel does after backward, as one flat buffer: Sora's forward is several
    calls around one full-graph propagation, so the reduction is done explicitly rather than through
    DDP's hooks, but one collective a step rather than one per parameter (latency, not bandwidth, is
    what a step of many small tensors pays across nodes). A parameter a rank did not use this step
    contributes zeros (one buffer layout on every rank); one that no rank used keeps no gradient.
    """
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    params = [p for p in [*model.parameters(), *([] if extra is None else [extra])] if p.requires_grad]
    used = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = _flatten_dense_tensors([*grads, used])  # which parameters any rank used rides along
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    *reduced, used = _unflatten_dense_tensors(flat, [*grads, used])
    for p, g, r, n in zip(params, grads, reduced, used.tolist(), strict=True):
        if n == 0:  # no rank used it this step: no gradient, as in one process (AdamW then leaves it alone)
            p.grad = None
        else:
            g.copy_(r / world)


@torch.no_grad()
def fit(model: SoraModel, prep: Prepared, ii: sp.csr_matrix | np.ndarray | None) -> Recommender:
    """Freeze the current weights into fitted vectors (what serving uses), on the CPU."""
    f = frozen(model, prep)
    static = prep.static
    num_users = len(static["user_ids"])
    users = [f.user_vectors(torch.arange(s, min(s + 4096, num_users), device=f.g_user.device))
             for s in range(0, num_users, 4096)]
    cpu_model = copy.deepcopy(model).cpu()
    cpu_model.graph_encoder = None
    # Causal models read a user only through the history (anonymous token): without user_tokens the
    # Recommender re-runs that anonymous pass for recent events, which is then exact.
    return Recommender(**{**static, "meta": dict(static["meta"])}, model=cpu_model,
                       user_vectors=torch.cat(users).cpu(), item_vectors=f.item_vecs.cpu(),
                       item_tokens=f.g_item.cpu(), history=prep.hist.cpu(), history_mask=prep.hmask.cpu(), ii=ii,
                       alpha=0.0, user_tokens=None if f.causal else f.g_user.cpu())
