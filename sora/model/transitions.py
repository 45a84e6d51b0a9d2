"""The transition head of next-item protocols: which items followed which in the training sequences.

EASE (the item–item head) reads co-occurrence, which has no direction. What comes *next* after a
user's newest items is a different signal: on ML-100K's Protocol T it holds from valid to test while
co-occurrence does not (benchmarks/RESULTS.md). Row ``a`` of the matrix holds the items that came at most
:data:`WINDOW` steps after ``a`` in a user's training sequence, a gap of ``g`` steps weighing
``GAP_DECAY ** (g - 1)``; the counts are divided by ``sqrt(out(a) + 1) · sqrt(in(b) + 1)`` (a cosine, so
popular items do not take every row). A history scores ``Σ_h decay ** age(h) · T[h]`` (age 0: the newest).

Its weight and decay are chosen on valid after training (:func:`sora.training.selection.select_transitions`), only
for causal training, where a sequence's order is what the protocol asks about.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

WINDOW = 5
GAP_DECAY = 0.7
#: history decays tried on valid (the newest items matter most for what comes next)
DECAYS = (0.5, 0.8)


def transition_matrix(sequences: list[np.ndarray], num_items: int, window: int = WINDOW,
                      gap_decay: float = GAP_DECAY) -> sp.csr_matrix:
    """(I, I) CSR: ``[a, b]`` = Σ over ``b`` following ``a`` within ``window`` steps of ``gap_decay**(gap-1)``,
    cosine-normalised by out- and in-weights. ``sequences``: item indices per user, oldest first."""
    rows, cols, vals = [], [], []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        for gap in range(1, min(window, len(seq) - 1) + 1):
            rows.append(seq[:-gap])
            cols.append(seq[gap:])
            vals.append(np.full(len(seq) - gap, gap_decay ** (gap - 1), np.float64))
    if not rows:
        return sp.csr_matrix((num_items, num_items), dtype=np.float32)
    t = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(num_items, num_items))  # duplicate pairs are summed
    out_w = np.asarray(t.sum(1)).ravel()
    in_w = np.asarray(t.sum(0)).ravel()
    t = sp.diags(1 / np.sqrt(out_w + 1)) @ t @ sp.diags(1 / np.sqrt(in_w + 1))
    return t.tocsr().astype(np.float32)
