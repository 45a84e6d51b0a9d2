"""Data Sora was not developed on: MovieLens-100K variants, each Sora (defaults, tuned on its own valid) vs EASE.

    python benchmarks/variants.py [--data DIR] [--variants NAME ...] [--out benchmarks/RESULTS.md]

Variants (random split, the default protocol): ratings ≥ 4 as positives; a sparser copy (half the
interactions, drawn at random); a denser copy (users and items with at least 50 and 20 ratings);
a shorter-item-text copy (titles only); and a synthetic catalogue of MovieLens-latest-small's shape
(610 users, about 9,000 items, sparser than ML-100K; :func:`scale.synthetic`, power-law popularity). Each row: Sora with its defaults, which choose the training
temperature, epochs, the item–item head's weight and its recency decay on that variant's valid split,
next to EASE (λ chosen on the same valid) on the same split, in the same run. Writes the "Variants" section.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import DEFAULT_DATA, movielens_100k, write_section  # noqa: E402
from quality import machine  # noqa: E402
from scale import synthetic  # noqa: E402

from sora.config import SoraConfig  # noqa: E402
from sora.data.contract import Dataset, load_dataset  # noqa: E402
from sora.data.split import make_split  # noqa: E402
from sora.evaluation.evaluate import evaluate_split, run_baselines  # noqa: E402
from sora.model.text import EmbeddingCache, embed_items, load_encoder  # noqa: E402
from sora.training.train import train_model  # noqa: E402

BEGIN, END = "<!-- variants:begin -->", "<!-- variants:end -->"


def sparser(ds: Dataset) -> Dataset:
    keep = np.random.default_rng(0).random(len(ds.interactions)) < 0.5
    return Dataset(ds.interactions[keep].reset_index(drop=True), ds.items)


def denser(ds: Dataset) -> Dataset:
    x = ds.interactions
    for _ in range(3):  # the two filters interact; a few rounds settle them
        x = x[x.groupby("user_id")["item_id"].transform("size") >= 50]
        x = x[x.groupby("item_id")["user_id"].transform("size") >= 20]
    return Dataset(x.reset_index(drop=True), ds.items)


VARIANTS = {
    "ratings ≥ 4": (lambda ds: ds, ["split.rating_threshold=4"]),
    "half the interactions": (sparser, []),
    "users ≥ 50, items ≥ 20 ratings": (denser, []),
    "titles only as item text": (lambda ds: ds, ["data.item_text_template={title}"]),
    "synthetic, 610 users × ~9k items": (lambda ds: synthetic(100_000, 610, 9_700), []),
}


def run(ds: Dataset, overrides: list[str]) -> dict:
    cfg = SoraConfig().with_overrides(overrides)
    split = make_split(ds, cfg.split)
    emb, _ = embed_items(ds.items, cfg.data.item_text_template, load_encoder(cfg.text),
                         EmbeddingCache(Path.home() / ".cache/sora/embeddings"), progress=False)
    res = train_model(split, emb, ds.items, cfg, progress=True)
    rec = res.recommender
    test = evaluate_split(rec.score_users, split, "test", (10,))
    ease = run_baselines(split, cfg, ("ease",))["ease"]
    trials = rec.meta.get("tuning", [])
    chosen = ", ".join(f"{t['overrides'][0].split('=')[1]}: {t['valid_ndcg@10']:.4f}" for t in trials)
    return {"users": split.num_users, "items": split.num_items, "train": len(split.train),
            "sora": test["ndcg@10"], "ease": ease["ndcg@10"], "valid": res.valid["ndcg@10"],
            "chosen": f"temperature {rec.config.train.temperature:g} (valid by temperature {chosen}), epoch "
                      f"{res.best_epoch}, head weight {rec.alpha:.3g}, decay {rec.head_decay:g}, head λ "
                      f"{rec.config.graph.ease_lambda:g}; EASE λ {ease['lambda']:g}",
            "fit_s": res.seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = p.parse_args(argv)
    base = load_dataset(movielens_100k(args.data))
    started = dt.datetime.now(dt.UTC)
    rows = []
    for name in args.variants:
        make, overrides = VARIANTS[name]
        r = run(make(base), overrides)
        rows.append((name, r))
        print(f"{name}: sora {r['sora']:.4f} ease {r['ease']:.4f} ×{r['sora'] / r['ease']:.3f} ({r['chosen']})", flush=True)
    cmd = "python benchmarks/variants.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [BEGIN, "## Data Sora was not developed on: MovieLens-100K variants and a synthetic catalogue (benchmarks/variants.py)", "",
             f"- command: `{cmd.strip()}`", f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             "- random split (seed 2020), default config: every choice made on the variant's own valid split", "",
             "| variant | users × items, train interactions | Sora ndcg@10 | EASE ndcg@10 | Sora / EASE | chosen on valid | fit_s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r['users']} × {r['items']}, {r['train']} | {r['sora']:.4f} | {r['ease']:.4f} | "
              f"×{r['sora'] / r['ease']:.3f} | {r['chosen']} | {r['fit_s']:.0f} |" for n, r in rows]
    lines += ["", END]
    write_section(args.out, BEGIN, END, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    sys.exit(main())
