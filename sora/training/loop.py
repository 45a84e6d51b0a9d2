"""Training, part 2 of 3: the loop — epochs, losses, early stopping (DESIGN.md §5.5).

Loss: softmax cross-entropy over the whole catalogue (``train.loss=softmax``, up to
``train.full_softmax_max_items`` items; sampled softmax over in-batch negatives with the logQ correction
above it) or BPR with uniform negatives (``bpr``); optional contrastive regulariser between two edge-dropped graph
views (``train.contrastive_weight``). AdamW; valid NDCG@10 every ``eval_every`` epochs drives
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
import torch.nn.functional as F
from tqdm.auto import tqdm

from sora.config import SoraConfig, TrainConfig
from sora.evaluation.metrics import DeviceRanker, evaluate_scores, standard_error
from sora.model.network import SoraModel
from sora.model.recommender import Recommender
from sora.training.checkpoint import Checkpointer
from sora.training.prep import Prepared
from sora.training.selection import BestEpoch
from sora.training.softmax import IGNORE, softmax_cross_entropy

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


def window_loss(model: SoraModel, prep: Prepared, wu: torch.Tensor, items: torch.Tensor, mask: torch.Tensor,
                targets: torch.Tensor, tc: TrainConfig, gen: torch.Generator,
                negatives: torch.Tensor | None = None, idx: torch.Tensor | None = None,
                log_gain: torch.Tensor | None = None, all_positions: bool | None = None) -> torch.Tensor:
    """Causal training (``train.causal``): the loss of every next-item target in B windows of L items.

    wu (B,) the windows' users; items, mask, targets (B, L) as :func:`~sora.training.prep.causal_windows`
    makes them. One causal Transformer pass per window gives every position's user vector from the
    items before its target only; the user is anonymous (the graph user embedding has seen the whole
    training sequence, its future included). ``all_positions`` forces the accelerator's form of the full
    softmax (every position, padding ignored) or the CPU's (targets selected first); None: by device.
    """
    g_user, g_item = model.propagate(prep.graph, prep.text)
    item_vecs = model.item_vectors(g_item, prep.text)
    full = tc.loss == "softmax" and len(item_vecs) <= tc.full_softmax_max_items and tc.contrastive_weight == 0
    if full and (all_positions if all_positions is not None else targets.device.type != "cpu"):
        # On an accelerator: every position's logits, the padding ignored by the loss (-100), instead of
        # selecting the targets first, whose count is data-dependent and makes the host wait. Same mean.
        uv = model.fusion.sequence(g_item[items], mask).reshape(-1, item_vecs.shape[1])  # (B·L, D)
        bias = None
        if log_gain is not None:
            with torch.no_grad():
                head = prep.head_term.window_scores(idx, wu, items, mask)
            bias = log_gain.exp() * head.reshape(len(uv), -1)
        return softmax_loss(uv, item_vecs, targets.reshape(-1), prep.log_q, tc, negatives, bias)
    keep = targets >= 0
    uv = model.fusion.sequence(g_item[items], mask)[keep]  # (N, D): one per target
    users = wu[:, None].expand_as(targets)[keep]
    bias = None
    if log_gain is not None:  # train.head_in_loss: each target's prefix head (windows idx) joins the logits
        with torch.no_grad():
            head = prep.head_term.window_scores(idx, wu, items, mask)[keep]
        bias = log_gain.exp() * head
    return score_loss(model, prep, uv, item_vecs, users, targets[keep], len(item_vecs), tc, gen, negatives, bias)


def step_loss(model: SoraModel, prep: Prepared, u: torch.Tensor, i: torch.Tensor, num_items: int,
              tc: TrainConfig, gen: torch.Generator, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of one batch of (user, item) positives u (B,), i (B,).

    ``negatives``: the full softmax's items, as in :func:`softmax_loss`.
    """
    g_user, g_item = model.propagate(prep.graph, prep.text)
    item_vecs = model.item_vectors(g_item, prep.text)
    uv = batch_user_vectors(model, g_user, g_item, prep.hist, prep.hmask, u, i, gen)  # (B, D)
    return score_loss(model, prep, uv, item_vecs, u, i, num_items, tc, gen, negatives)


def score_loss(model: SoraModel, prep: Prepared, uv: torch.Tensor, item_vecs: torch.Tensor, u: torch.Tensor,
               i: torch.Tensor, num_items: int, tc: TrainConfig, gen: torch.Generator,
               negatives: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``train.loss`` of user vectors uv (B, D) against their targets i (B,), plus the contrastive term.

    ``bias`` (B, I): added to the full softmax's logits (``train.head_in_loss``: the weighted head).
    """
    if tc.loss == "softmax":
        loss = softmax_loss(uv, item_vecs, i, prep.log_q, tc, negatives, bias)
    elif tc.loss == "bpr":
        neg = torch.randint(0, num_items, (len(i),), generator=gen).to(i.device)
        loss = -F.logsigmoid((uv * item_vecs[i]).sum(1) - (uv * item_vecs[neg]).sum(1)).mean()
    else:
        raise ValueError(f"train.loss must be softmax or bpr, got {tc.loss!r}")
    if tc.contrastive_weight > 0 and model.graph_encoder is not None and prep.graph is not None:
        loss = loss + tc.contrastive_weight * contrastive(model, prep, u, i, tc, gen)
    return loss


def softmax_loss(uv: torch.Tensor, item_vecs: torch.Tensor, i: torch.Tensor, log_q: torch.Tensor,
                 tc: TrainConfig, negatives: torch.Tensor | None = None, bias: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Softmax cross-entropy of uv (B, D) against its targets i (B,) among item_vecs (I, D).

    Full catalogue (B, I) logits up to ``train.full_softmax_max_items``, over the ``negatives`` (I,)
    bool: the warm items, those with a training interaction (None = all). An item no one interacted
    with is not a negative, or training would push every cold item's text down, which the cold-item
    protocol ranks by. Above the size, in-batch negatives (warm by construction) (B, B) with the logQ correction for their popularity-biased sampling, a target's duplicates in the
    batch masked. The temperature scales the (B, D) side and logQ rides along as one more column, so
    the (B, ·) logits are made by a single matmul. ``bias`` (B, I) is added to the full softmax's
    logits; the sampled one has no place for it.
    """
    scaled = uv / tc.temperature
    if len(item_vecs) <= tc.full_softmax_max_items:
        if bias is None or not bias.requires_grad:  # fused with the output layer (sora.training.softmax): same loss
            return softmax_cross_entropy(scaled, item_vecs, i, negatives, bias)
        logits = scaled @ item_vecs.T + bias
        if negatives is not None:
            logits = logits.masked_fill(~negatives[None, :], -torch.inf)
        return F.cross_entropy(logits, i, ignore_index=IGNORE)  # IGNORE: a padded position (no target)
    if bias is not None:
        raise ValueError("a logits bias needs the full softmax (train.full_softmax_max_items)")
    ones = torch.ones(len(uv), 1, dtype=uv.dtype, device=uv.device)
    logits = torch.cat([scaled, ones], 1) @ torch.cat([item_vecs[i], -log_q[i][:, None]], 1).T  # (B, B)
    dup = (i[:, None] == i[None, :]).fill_diagonal_(False)
    return F.cross_entropy(logits.masked_fill_(dup, -torch.inf), torch.arange(len(i), device=i.device))


def batch_user_vectors(model: SoraModel, g_user, g_item, hist, hmask, u, i, gen,
                       per_pair: bool | None = None) -> torch.Tensor:
    """User vectors for the batch's (user, target) pairs; the target is never among its own history tokens.

    On the CPU, pairs whose target lies outside the user's history window share one Transformer pass per
    distinct user (far fewer than pairs); pairs whose target is inside it get their own pass with that
    token masked. On a GPU every pair gets its own pass (no host sync; the arithmetic is cheap there);
    ``per_pair`` forces either way (tests).
    """
    if model.fusion is None:
        return g_user[u]
    anonymous = model.cfg.anonymous_prob > 0 and bool(torch.rand((), generator=gen) < model.cfg.anonymous_prob)
    if per_pair if per_pair is not None else u.device.type != "cpu":
        # On an accelerator, one pass per pair with its target masked out of its own history: the same
        # vectors as below, without the data-dependent shapes (nonzero, unique) that make the host wait.
        mask = hmask[u] & (hist[u] != i[:, None])
        return model.user_vectors(None if anonymous else g_user[u], hist[u], mask, g_item)
    inside = ((hist[u] == i[:, None]) & hmask[u]).any(1)
    out = torch.zeros(len(u), g_user.shape[1], device=g_user.device)
    rest = torch.nonzero(~inside).squeeze(1)
    if len(rest):
        users, back = torch.unique(u[rest], return_inverse=True)
        shared = model.user_vectors(None if anonymous else g_user[users], hist[users], hmask[users], g_item)
        out = out.index_copy(0, rest, shared[back])
    own = torch.nonzero(inside).squeeze(1)
    if len(own):
        uo, io = u[own], i[own]
        mask = hmask[uo] & (hist[uo] != io[:, None])
        out = out.index_copy(0, own, model.user_vectors(None if anonymous else g_user[uo], hist[uo], mask, g_item))
    return out


def contrastive(model: SoraModel, prep: Prepared, u, i, tc: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """InfoNCE between two edge-dropped views (SGL-style) on the batch's users and items."""
    graph = prep.graph
    views = []
    for _ in range(2):
        keep = {et: (torch.rand(graph.num_edges(et), generator=gen) >= tc.edge_dropout).float().to(u.device)
                / (1 - tc.edge_dropout) for et in graph.canonical_etypes}
        views.append(model.propagate(graph, prep.text, edge_keep=keep))

    def nce(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return F.cross_entropy(a @ b.T / tc.temperature, torch.arange(len(a), device=a.device))

    uu, ii = torch.unique(u), torch.unique(i)
    return nce(views[0][0][uu], views[1][0][uu]) + nce(views[0][1][ii], views[1][1][ii])


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
