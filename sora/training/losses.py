"""Training, the losses of one step: what :func:`~sora.training.loop.run_epochs` differentiates.

:func:`step_loss` for set training (a batch of (user, item) positives), :func:`window_loss` for causal
training (every next-item target of a batch of windows), both through :func:`score_loss`: softmax
cross-entropy over the whole catalogue up to ``train.full_softmax_max_items`` items (fused with the output
layer, :mod:`sora.training.softmax`), sampled softmax over in-batch negatives with the logQ correction above
it, or BPR with uniform negatives; plus the optional contrastive regulariser between two edge-dropped graph
views (``train.contrastive_weight``).

Letters: B batch, U users, I items, L history length, D dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sora.config import TrainConfig
from sora.model.network import SoraModel
from sora.training.prep import Prepared
from sora.training.softmax import IGNORE, softmax_cross_entropy


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
