"""Explanations: which history items drove a recommendation (``because``).

A Sora score is ``user_vector · item_vector + alpha × head``, and both parts read the user's history:

- the item–item head is a sum over the history, ``Σ_h w_h ii[h, j]`` (``w_h`` the history item's
  recency weight, 1 without decay): each history item's contribution ``alpha × w_h × ii[h, j]`` is exact;
- the network reads the history through the Transformer's window (the ``model.history_len`` newest
  items). Its part is a leave-one-out: the change of ``user_vector · item_vector`` when ``h`` is
  removed from the history (the next older item then enters the window, as it would for a user who
  never had ``h``). Items outside the window do not change the network's vector: their network part is 0.

``weight(h, j)`` is the sum of the two; ``because`` lists the ``n`` heaviest history items per
recommended item, heaviest first. Removing them is what moves the score the most, which
``benchmarks/explain_fidelity.py`` measures. For a known user the graph embedding (the Transformer's
user token) stays as trained: it has seen the whole training history and is not re-run.

No model state is changed; everything here runs under ``torch.no_grad``. Letters: W window items,
K recommended items, H history items, L history length, D dim.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

#: a :class:`sora.model.recommender.Recommender`; not imported, since the recommender imports this module
Recommender = Any


def _padded(seqs: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    hist = torch.zeros(len(seqs), length, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        hist[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return hist, mask


@torch.no_grad()
def network_leave_one_out(rec: Recommender, newest_first: list[int], targets: list[int],
                          user_token: torch.Tensor | None) -> tuple[list[int], torch.Tensor]:
    """(window items, (W, K) score drops): ``user·item_j`` with the full history minus without item ``h``."""
    length = rec.config.model.history_len
    window = newest_first[:length]
    if not window or not targets:
        return window, torch.zeros(len(window), len(targets))
    seqs = [window] + [[x for x in newest_first if x != h][:length] for h in window]
    hist, mask = _padded(seqs, length)
    token = None if user_token is None else user_token[None].expand(len(seqs), -1)
    vectors = rec.model.user_vectors(token, hist, mask, rec.item_tokens)  # (1 + W, D)
    items = rec.item_vectors[torch.as_tensor(targets, dtype=torch.long)]  # (K, D)
    return window, (vectors[0][None] - vectors[1:]) @ items.T


def head_contributions(rec: Recommender, history: np.ndarray, targets: list[int],
                       history_weights: np.ndarray | None = None) -> np.ndarray:
    """(H, K) ``alpha × w_h × ii[h, j]``: each history item's exact share of the item–item head's score.

    ``history_weights`` (H,): the head's recency weights of the history items (None = 1 each).
    """
    if not rec.alpha or rec.ii is None or not len(history) or not targets:
        return np.zeros((len(history), len(targets)), dtype=np.float32)
    block = rec.ii[history][:, targets]
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    if history_weights is not None:
        block = block * np.asarray(history_weights, dtype=np.float32)[:, None]
    return rec.alpha * block.astype(np.float32)


def transition_contributions(rec: Recommender, history: np.ndarray, targets: list[int],
                             history_weights: np.ndarray) -> np.ndarray:
    """(H, K) ``beta × w_h × T[h, j]``: each history item's exact share of the transition head's score."""
    if not rec.beta or rec.transitions is None or not len(history) or not targets:
        return np.zeros((len(history), len(targets)), dtype=np.float32)
    block = rec.transitions[history][:, targets].toarray() * np.asarray(history_weights, np.float32)[:, None]
    return (rec.beta * block).astype(np.float32)


def attributions(rec: Recommender, newest_first: list[int], history: np.ndarray, targets: list[int],
                 user_token: torch.Tensor | None, history_weights: np.ndarray | None = None,
                 transitions: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(history items (H,), weights (H, K)) for the recommended ``targets``.

    ``newest_first``: the sequence the Transformer reads from (newest first); ``history``: the
    distinct items the item–item head reads (for a known user, training items plus recent events) and
    ``history_weights`` their weights in the head (None = 1 each; see ``Recommender.head_history``);
    ``transitions``: the transition head's (items, weights) when the model has one
    (``Recommender.transition_history``).
    """
    window, net = (network_leave_one_out(rec, newest_first, targets, user_token) if rec.network_weight
                   else ([], None))  # a model serving its heads alone: the network has no share
    history = np.asarray(history, dtype=np.int64)
    parts = [history, np.asarray(window, dtype=np.int64)]
    if transitions is not None:
        parts.append(np.asarray(transitions[0], dtype=np.int64))
    items = np.unique(np.concatenate(parts))
    head_w = np.zeros(len(items), np.float32)  # a window item outside the head's history: no head share
    head_w[np.searchsorted(items, history)] = 1.0 if history_weights is None else history_weights
    weights = head_contributions(rec, items, targets, head_w)
    if transitions is not None:
        trans_w = np.zeros(len(items), np.float32)
        trans_w[np.searchsorted(items, np.asarray(transitions[0], dtype=np.int64))] = transitions[1]
        weights += transition_contributions(rec, items, targets, trans_w)
    if len(window):
        rows = np.searchsorted(items, np.asarray(window, dtype=np.int64))
        weights[rows] += net.numpy()
    return items, weights


def because(rec: Recommender, items: np.ndarray, weights: np.ndarray, n: int) -> list[list[dict[str, Any]]]:
    """Per recommended item (column of ``weights``): its ``n`` heaviest history items, heaviest first."""
    out = []
    for col in weights.T:
        top = np.argsort(-col, kind="stable")[:n]
        out.append([{"item_id": rec.item_ids[int(items[t])], "weight": round(float(col[t]), 6)} for t in top])
    return out


def explanation_markdown(rec: Recommender, user_id: str, k: int = 3) -> str:
    """A model-card section: ``user_id``'s top ``k`` with their ``because`` lists, and how to get more."""
    title = rec.titles.get
    lines = ["## Explanations", "",
             f"Why user {user_id} gets their top {k} (`sora explain --model MODEL --user {user_id}`, or "
             '`"explain": true` on `/recommend`). Weight: the history item\'s share of the item–item head plus the '
             "score change without it (leave-one-out through the Transformer).", "",
             "| rank | recommended | because of (weight) |", "|---|---|---|"]
    for rank, it in enumerate(rec.recommend(user_id, k=k, explain=True), 1):
        reasons = "; ".join(f"{title(b['item_id']) or b['item_id']} ({b['weight']:+.3f})" for b in it["because"])
        lines.append(f"| {rank} | {it['title'] or it['item_id']} | {reasons} |")
    return "\n".join(lines) + "\n"
