"""Fidelity of Sora's explanations (``because``): does removing the explaining items move the recommendation?

    python benchmarks/explain_fidelity.py [--model DIR] [--users 600] [--out benchmarks/RESULTS.md]

Fold-in path, model frozen: each user is scored as an anonymous history (``recommend_from_history``'s
scores), the history being the user's training items (older items first, the Transformer's window
last, newest at the end). For each of the user's top-10 items, ``m`` history items are removed (m = 1
and 3), chosen four ways:

- **explained**: the ``m`` heaviest items of the item's ``because`` list (sora.model.explain),
- **random**: ``m`` history items drawn at random,
- **recent**: the ``m`` newest history items,
- **least**: the ``m`` least-attributed history items,

and the item is re-scored against the same candidates (the original history stays excluded).
Reported per choice: Flip@10, the share of items that leave the top 10; the score drop normalised by
the user's rank-1 − rank-11 score gap; NEG@10 for "least" (the share that stays in the top 10); and a
deletion curve (remove 0..5 items in the choice's order) with its AUC of "still in the top 10" (lower
is better for an explanation). Without --model, uses (or trains) .sora/bench/model on MovieLens-100K.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _results import (  # benchmarks/ is on sys.path when run as a script
    DEFAULT_DATA,
    default_model,
    write_section,
)

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- explain-fidelity:begin -->", "<!-- explain-fidelity:end -->"
CHOICES = ("explained", "random", "recent", "least")
CURVE = 5  # deletion curve: 0..CURVE removed items


def fold_in_history(rec, u: int) -> list[int]:
    """User ``u``'s training items, oldest first: items outside the stored window, then the window (newest last)."""
    window = rec.history[u][rec.history_mask[u]].tolist()[::-1]  # stored newest first
    rest = sorted(set(rec.train.indices[rec.train.indptr[u]:rec.train.indptr[u + 1]].tolist()) - set(window))
    return rest + window


def removal_order(choice: str, weights: np.ndarray, items: np.ndarray, history: list[int],
                  rng: np.random.Generator) -> list[int]:
    """History items in the order ``choice`` removes them (weights: one column of the attributions)."""
    if choice == "explained":
        return [int(items[t]) for t in np.argsort(-weights, kind="stable")]
    if choice == "least":
        return [int(items[t]) for t in np.argsort(weights, kind="stable")]
    distinct = list(dict.fromkeys(reversed(history)))  # newest first
    if choice == "recent":
        return distinct
    return [distinct[t] for t in rng.permutation(len(distinct))]


def score_without(rec, history: list[int], removed: set[int], exclude: np.ndarray):
    import torch

    s = rec.score_history([h for h in history if h not in removed]).clone()
    s[torch.as_tensor(exclude)] = -torch.inf
    return s


def run(rec, n_users: int, seed: int = 0) -> dict:
    import torch

    from sora.model.explain import attributions

    rng = np.random.default_rng(seed)
    users = [u for u in range(rec.num_users) if len(fold_in_history(rec, u)) >= 4]
    users = [users[i] for i in sorted(rng.choice(len(users), min(n_users, len(users)), replace=False))]
    stats = {(c, m): {"flip": [], "drop": []} for c in CHOICES for m in (1, 3)}
    curves = {c: np.zeros(CURVE + 1) for c in CHOICES}
    n_items = 0
    t0 = time.perf_counter()
    for u in users:
        history = fold_in_history(rec, u)
        exclude = np.unique(history)
        s = score_without(rec, history, set(), exclude)
        top = torch.topk(s, 11)
        targets, gap = top.indices[:10].tolist(), float(top.values[0] - top.values[10])
        head = rec.head_history(None, history)
        trans = rec.transition_history(None, history) if rec.beta and rec.transitions is not None else None
        items, weights = attributions(rec, list(reversed(history)), head[0], targets, None, head[1], trans)
        for col, j in enumerate(targets):
            n_items += 1
            for c in CHOICES:
                order = removal_order(c, weights[:, col], items, history, rng)
                for m in (1, 3):
                    s2 = score_without(rec, history, set(order[:m]), exclude)
                    stats[(c, m)]["flip"].append(float(s2[j] < torch.topk(s2, 10).values[-1]))
                    stats[(c, m)]["drop"].append((float(s[j]) - float(s2[j])) / max(gap, 1e-9))
                for r in range(CURVE + 1):
                    s2 = s if r == 0 else score_without(rec, history, set(order[:r]), exclude)
                    curves[c][r] += float(s2[j] >= torch.topk(s2, 10).values[-1])
    seconds = time.perf_counter() - t0
    table = {key: {"flip": float(np.mean(v["flip"])), "drop": float(np.median(v["drop"]))} for key, v in stats.items()}
    curve = {c: v / n_items for c, v in curves.items()}
    auc = {c: float(np.trapz(v, dx=1.0 / CURVE)) for c, v in curve.items()}
    return {"users": len(users), "items": n_items, "table": table, "curve": curve, "auc": auc, "seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    if args.model is None:
        args.model = default_model(args.data)
    import torch

    from sora.model.recommender import Recommender

    torch.set_num_threads(1)
    rec = Recommender.load(args.model).prepare_serving()
    res = run(rec, args.users, args.seed)
    t = res["table"]
    lines = [MARK_BEGIN, "## Explanation fidelity (benchmarks/explain_fidelity.py)", "",
             "- command: `" + " ".join(["python benchmarks/explain_fidelity.py",
                                        *(argv if argv is not None else sys.argv[1:])]) + "`",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()} "
             f"{os.cpu_count()} cores; {res['seconds']:.0f} s",
             f"- model: {args.model} ({rec.num_users} users, {rec.num_items} items, item–item weight "
             f"{rec.alpha:.3f}, history_len {rec.config.model.history_len}); fold-in path, model frozen; "
             f"{res['users']} users × their top 10 = {res['items']} recommended items", "",
             "| removed history items | Flip@10, m=1 | Flip@10, m=3 | median normalised drop, m=1 | "
             "median normalised drop, m=3 | still in top 10, m=1 | still in top 10, m=3 | deletion AUC (0..5) |",
             "|---|---|---|---|---|---|---|---|"]
    for c in CHOICES:
        a, b = t[(c, 1)], t[(c, 3)]
        lines.append(f"| {c} | {a['flip']:.3f} | {b['flip']:.3f} | {a['drop']:.3f} | {b['drop']:.3f} | "
                     f"{1 - a['flip']:.3f} | {1 - b['flip']:.3f} | {res['auc'][c]:.3f} |")
    ratio = t[("explained", 1)]["flip"] / max(t[("random", 1)]["flip"], 1e-9)
    lines += ["", f"Flip@10 with the top-1 explaining item removed / with a random one: **×{ratio:.1f}** "
              f"(target ≥ 2); NEG@10 (the least-attributed item removed, still in the top 10): "
              f"**{1 - t[('least', 1)]['flip']:.3f}** (m=1), {1 - t[('least', 3)]['flip']:.3f} (m=3) (target ≥ 0.9).",
              "Deletion curve, share still in the top 10 after removing 0..5 items: " + "; ".join(
                  f"{c} " + " ".join(f"{v:.2f}" for v in res["curve"][c]) for c in CHOICES) + ".", MARK_END]
    section = "\n".join(lines)
    write_section(args.out, MARK_BEGIN, MARK_END, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
