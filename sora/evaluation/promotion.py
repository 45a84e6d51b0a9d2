"""The promotion rule: a pure function of two metric dicts (no MLflow, no I/O).

A challenger is promoted only if it beats the reference (the champion, or MostPop when there is no
champion yet) on NDCG@10 by a relative ``margin``, and, against a champion, no guard metric
(recall@20, coverage@20) drops by more than the margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PROMOTION_KEY = "ndcg@10"
GUARD_KEYS = ("recall@20", "coverage@20")


@dataclass
class Decision:
    promote: bool
    reason: str
    challenger_version: str
    champion_version: str | None
    challenger: dict[str, float]
    champion: dict[str, float] | None
    reference: str  # "champion" or "mostpop"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(challenger: dict[str, float], reference: dict[str, float], margin: float, reference_name: str,
           challenger_version: str, champion_version: str | None) -> Decision:
    """Promote only if the challenger beats the reference on NDCG@10 by ``margin`` (relative) and no guard
    metric (recall@20, coverage@20) is lower than the reference's by more than ``margin``."""
    key = PROMOTION_KEY
    need = reference[key] * (1 + margin)
    reasons = []
    ok = challenger[key] > need
    reasons.append(f"{key} {challenger[key]:.4f} vs {reference_name} {reference[key]:.4f} "
                   f"({'beats' if ok else 'does not beat'} it by margin {margin:.1%})")
    if reference_name == "champion":
        for g in GUARD_KEYS:
            floor = reference[g] * (1 - margin)
            if challenger[g] < floor - 1e-12:
                ok = False
                reasons.append(f"guard {g} {challenger[g]:.4f} below {reference_name}'s {reference[g]:.4f} minus margin")
    return Decision(ok, "; ".join(reasons), challenger_version, champion_version, challenger,
                    reference, "champion" if reference_name == "champion" else "mostpop")
