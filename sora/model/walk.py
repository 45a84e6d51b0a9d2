"""One hyperparameter chosen on valid by a geometric walk (EASE's λ, ∞-AE's λ).

Valid NDCG@10 is unimodal in a ridge λ in practice, and each point can cost a large solve, so the walk
tries few: up from ``start`` while the metric improves strictly, and down when the first step up did not.
"""

from __future__ import annotations

from collections.abc import Callable


def geometric_walk(metric: Callable[[float], float], start: float, factor: float, max_steps: int
                   ) -> tuple[float, dict[float, float]]:
    """(the value of ``start · factor**k``, |k| ≤ ``max_steps``, with the best ``metric``; every value tried → metric)."""
    valid: dict[float, float] = {}

    def score(k: int) -> float:
        value = float(start * factor ** k)
        if value not in valid:
            valid[value] = float(metric(value))
        return valid[value]

    k = 0
    score(k)
    for step in (1, -1):
        moved = False
        while abs(k + step) <= max_steps and score(k + step) > score(k):
            k, moved = k + step, True
        if moved:
            break
    return float(start * factor ** k), valid
