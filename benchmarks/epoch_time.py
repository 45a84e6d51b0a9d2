"""ML-100K (or any dataset directory) trained on one device: epoch times, valid and test NDCG@10, as JSON.

    python benchmarks/epoch_time.py --data DIR [--embeddings FILE.parquet] [--device cpu|cuda] [--set k=v ...]

What issue 31's "ML-100K ≤ 0.15 s/epoch" and "CPU epoch not slower than today" are read from: the median
and minimum of ``epoch_seconds`` (the optimiser steps of an epoch), the wall time of each epoch's loop
iteration including its valid ranking (``epoch_wall``), and the quality the run ends with. Runs through
:mod:`sora.stages` (split, embeddings from ``--embeddings`` or the bundled encoder, train, test once).
On the GPU machine the bundled encoder is absent: make the parquet here with
``sora embed --data DIR --out .device/ml100k-emb.parquet`` and carry it in ``.device/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset directory (sora data fetch movielens-100k --dest DIR)")
    ap.add_argument("--embeddings", help="item embeddings parquet (sora embed); default: embed with the encoder")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    from sora import stages
    from sora.config import SoraConfig
    from sora.evaluation.evaluate import evaluate_split, model_scores

    base = [f"train.device={args.device}"]
    if hasattr(SoraConfig().train, "checkpoint_every"):  # older code (a same-run comparison) has no checkpoints
        base.append("train.checkpoint_every=0")
    cfg = SoraConfig().with_overrides([*base, *args.set])
    with tempfile.TemporaryDirectory() as tmp:
        prepared = stages.prepare(args.data, cfg, f"{tmp}/prepared")
        emb = args.embeddings
        if emb is None and cfg.model.use_text:
            emb = f"{tmp}/emb.parquet"
            stages.embed(prepared, cfg, emb, progress=False)
        t0 = time.perf_counter()
        result = stages.train(prepared, emb, cfg, f"{tmp}/model", progress=False, write=False)
        seconds = time.perf_counter() - t0
        rec = result.recommender
        test = evaluate_split(model_scores(rec, prepared.split, "test"), prepared.split, "test", (10, 20))
    hist = result.history
    steps = [h["epoch_seconds"] for h in hist]
    out = {"device": rec.meta.get("device"), "overrides": args.set, "epochs": len(hist),
           "best_epoch": result.best_epoch, "epoch_median_s": statistics.median(steps), "epoch_min_s": min(steps),
           "epoch_first_s": steps[0], "eval_median_s": statistics.median([h.get("eval_seconds", 0.0) for h in hist]),
           "train_seconds": round(seconds, 1), "trials": rec.meta.get("tuning"),
           "valid_ndcg@10": result.valid.get("ndcg@10"), "test_ndcg@10": test.get("ndcg@10")}
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
