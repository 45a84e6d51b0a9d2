"""Protocol T (next item, DESIGN.md §4): histories, history-aware scoring and recency-weighted EASE.

Under ``split.mode=leave-last-out`` each user with three or more positives has one valid and one test
target. A model is scored on valid with the user's training sequence as input, and on test with the
training sequence plus the valid item; that same prefix is what the evaluation excludes from the ranking
(train, and train + valid for test). ``split.mode=global-temporal`` has the same prefixes with any number
of valid and test targets per user (every event after the cut). Pure numpy / scipy / torch, no DGL.

Letters: B batch of users, U users, I items.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sora.data.split import Split

#: What a model may read before each part's target (all earlier in time under leave-last-out).
HISTORY_PARTS: dict[str, tuple[str, ...]] = {"valid": ("train",), "test": ("train", "valid")}
#: Recency-EASE: decays tried on valid (1.0 is plain EASE).
DECAY_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0)

#: users (B,) and their histories (B arrays of item indices, oldest first) → scores (B, I)
HistoryScoreFn = Callable[[np.ndarray, list[np.ndarray]], torch.Tensor]


def sequences(split: Split, *parts: str) -> list[np.ndarray]:
    """Per user index, the item indices of ``parts`` oldest first: parts in the order given, rows in split order.

    Under leave-last-out the parts keep sequence order (time, ties in input order) and valid / test follow
    train in time, so ``sequences(split, "train", "valid")`` is the prefix before each test target.
    """
    frames = [split.part(p) for p in parts]
    users = np.concatenate([f["u"].to_numpy(np.int64) for f in frames]) if frames else np.zeros(0, np.int64)
    items = np.concatenate([f["i"].to_numpy(np.int64) for f in frames]) if frames else np.zeros(0, np.int64)
    part = np.concatenate([np.full(len(f), k) for k, f in enumerate(frames)]) if frames else np.zeros(0, np.int64)
    order = np.lexsort((np.arange(len(users)), part, users))
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(split.num_users + 1))
    return [items[bounds[u]:bounds[u + 1]] for u in range(split.num_users)]


def history_of(split: Split, part: str) -> list[np.ndarray]:
    """Per user, what a model sees before ``part``'s target (``valid``: train; ``test``: train + valid)."""
    if part not in HISTORY_PARTS:
        raise ValueError(f"part must be one of {tuple(HISTORY_PARTS)}, got {part!r}")
    return sequences(split, *HISTORY_PARTS[part])


def recency_matrix(histories: list[np.ndarray], num_items: int, decay: float) -> sp.csr_matrix:
    """(B, I): item j of row b weighs ``decay ** age`` with age 0 for the newest item of history b.

    An item seen several times keeps the weight of its newest occurrence (the binary matrix counts it once).
    """
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    if lengths.sum() == 0:
        return sp.csr_matrix((len(histories), num_items), dtype=np.float32)
    rows = np.repeat(np.arange(len(histories)), lengths)
    items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    age = np.repeat(np.cumsum(lengths), lengths) - 1 - np.arange(len(items))
    weights = pd.DataFrame({"r": rows, "i": items, "w": np.power(float(decay), age)}).groupby(["r", "i"])["w"].max()
    r, i = (weights.index.get_level_values(n).to_numpy() for n in ("r", "i"))
    return sp.csr_matrix((weights.to_numpy(np.float32), (r, i)), shape=(len(histories), num_items))


def recency_ease_scores(b: np.ndarray, decay: float) -> HistoryScoreFn:
    """Recency-weighted EASE: the history row weighted by ``decay ** age`` times the EASE weights ``b`` (I, I)."""
    def score(users: np.ndarray, histories: list[np.ndarray]) -> torch.Tensor:
        x = recency_matrix(histories, b.shape[0], decay)
        return torch.from_numpy(np.asarray(x @ b, dtype=np.float32))

    return score


def with_histories(fn: HistoryScoreFn, histories: list[np.ndarray]) -> Callable[[np.ndarray], torch.Tensor]:
    """A user-indexed score function (what :func:`sora.evaluation.metrics.rank_all` calls) over fixed histories."""
    return lambda users: fn(users, [histories[u] for u in users])
