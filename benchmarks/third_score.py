"""Does a third score add to Sora's on a random split? Each candidate blended in, its weight chosen on valid.

    python benchmarks/third_score.py [--split-seeds 5 | --model DIR ...] [--data DIR] [--out benchmarks/RESULTS.md]

Issue 13 asks Sora for ≥ ×1.05 a tuned EASE on ML-100K's random split. Sora's final score already is
the network plus the EASE head; this asks whether a signal neither carries would move it. Each
candidate's scores are standardised per user and added to Sora's (also standardised) at weight w, the
weight (and the candidate's own setting) chosen by valid NDCG@10 alone; test is read at that choice:

- **popularity**: log(1 + training count), the same for every user;
- **time-local popularity**: the item's share of the training events near the user's own training
  days (a day kernel of width τ), as a lift over its overall share: what was being watched when the
  user was active, which a random split's held-out items share with the user's training items;
- **user attributes** (when the data set has a ``users`` table, as MovieLens has age, gender and
  occupation): the sum over attribute columns of log P(item | the user's value) / P(item), smoothed
  towards P(item); numbers in quartiles, columns with more than 50 values (zip codes) left out. Sora
  reads no user attributes, so this asks what they would be worth;
- **Mult-DAE** (Liang et al. 2018): a denoising autoencoder over the user's whole training row
  (600 tanh units, input dropout 0.5, multinomial likelihood, epochs chosen on valid), a nonlinear
  full-profile model of a kind Sora has none of.

Without --model, uses (or trains) .sora/bench/model on MovieLens-100K; --split-seeds N adds the models of
split seeds 2021.. (``.sora/bench/split-SEED``, trained with `sora train --set split.seed=SEED` when absent).
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
import pandas as pd
import scipy.sparse as sp
from _results import (  # benchmarks/ is on sys.path when run as a script
    DEFAULT_DATA,
    DEFAULT_MODEL,
    default_model,
    trained_model,
    write_section,
)

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- third-score:begin -->", "<!-- third-score:end -->"
WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)  # 0: leave it out
TAUS = (3.0, 10.0, 30.0)  # days


def zscore(s):
    return (s - s.mean(1, keepdim=True)) / (s.std(1, keepdim=True) + 1e-8)


def time_local_lift(train, num_users: int, num_items: int, tau: float) -> np.ndarray:
    """(U, I) log of the item's share of the training events near the user's days, over its overall share."""
    day = ((train["ts"] - train["ts"].min()) // 86400).astype(int).to_numpy()
    days = int(day.max()) + 1
    counts = np.zeros((num_items, days))
    np.add.at(counts, (train["i"].to_numpy(), day), 1)
    active = np.zeros((num_users, days))
    np.add.at(active, (train["u"].to_numpy(), day), 1)
    d = np.arange(days)
    near = active @ np.exp(-np.abs(d[:, None] - d[None]) / tau)
    share = (near @ counts.T) / np.maximum(near @ counts.sum(0), 1e-12)[:, None]
    overall = counts.sum(1) / counts.sum()
    return np.log((share + 1e-5) / (overall[None] + 1e-5))


def attribute_lift(users, user_ids: list[str], x, prior: float = 100.0) -> np.ndarray | None:
    """(U, I) summed log-lift of the items among users sharing each attribute value, or None without any."""
    if users is None:
        return None
    table = users.drop_duplicates("user_id").set_index("user_id").reindex(user_ids)
    overall = np.asarray(x.sum(0), dtype=np.float64).ravel()
    overall = (overall + 1) / (overall.sum() + len(overall))
    lift, used = np.zeros(x.shape), 0
    for column in table.columns:
        values = table[column]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().all() and numeric.nunique() > 8:
            values = pd.qcut(numeric, 4, duplicates="drop").astype(str)
        codes, uniques = pd.factorize(values.fillna("?").astype(str))
        if len(uniques) < 2 or len(uniques) > 50:
            continue
        member = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(uniques), len(codes)))
        counts = np.asarray((member @ x).todense())  # (values, I)
        given = (counts + prior * overall) / (counts.sum(1, keepdims=True) + prior)
        lift += np.log(given / overall)[codes]
        used += 1
    return lift if used else None


def mult_dae(x, evaluate, hidden: int = 600, dropout: float = 0.5, epochs: int = 200, seed: int = 0):
    """(U, I) scores of a Mult-DAE trained on ``x`` (U, I) dense, its epoch (every 10th) chosen on valid."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, x.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    best, scores, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        net.train()
        for b in torch.randperm(len(x)).split(128):
            logits = net(F.dropout(F.normalize(x[b], dim=1), dropout))
            loss = -(F.log_softmax(logits, 1) * x[b]).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 10 == 0:
            net.eval()
            with torch.no_grad():
                s = net(F.normalize(x, dim=1))
            v = evaluate(s, "valid")
            if v > best:
                best, scores, best_epoch = v, s, epoch
    return scores, best_epoch


def split_seed_model(data: Path, seed: int) -> Path:
    """Sora trained with the default config on random split ``seed`` of ``data`` (trained when absent)."""
    if seed == 2020:
        return default_model(data)
    return trained_model(data, DEFAULT_MODEL.parent / f"split-{seed}", f"split.seed={seed}")


def blend_rows(rec, split, user_table=None) -> list[tuple[str, str, float, float]]:
    """(scores, choice, valid NDCG@10, test NDCG@10) for Sora, the references and each blend, on ``split``."""
    import torch

    from sora.evaluation.evaluate import evaluate_split, model_scores, run_baselines

    users = np.arange(split.num_users)
    sora = {p: zscore(torch.cat([model_scores(rec, split, p)(b) for b in np.array_split(users, 8)]))
            for p in ("valid", "test")}

    def evaluate(scores, part: str) -> float:
        return evaluate_split(lambda b: scores[torch.as_tensor(b)], split, part, (10,))["ndcg@10"]

    tuned = rec.config.with_overrides(["graph.ease_lambda=null"])
    ease = run_baselines(split, tuned, ("ease",))["ease"]
    rows = [("tuned EASE (the issue's reference)", f"λ {ease['lambda']:g}", ease["valid_ndcg@10"], ease["ndcg@10"]),
            ("Sora (as trained)", "—", evaluate(sora["valid"], "valid"), evaluate(sora["test"], "test"))]
    candidates = {}
    x_train = split.matrix("train")
    pop = np.log1p(np.asarray(x_train.sum(0), dtype=np.float64).ravel())
    candidates["popularity"] = {"—": torch.tensor(np.tile(pop, (split.num_users, 1)), dtype=torch.float32)}
    candidates["time-local popularity"] = {
        f"τ {tau:g} d": torch.tensor(time_local_lift(split.train, split.num_users, split.num_items, tau),
                                     dtype=torch.float32) for tau in TAUS}
    attributes = attribute_lift(user_table, split.user_ids, x_train)
    if attributes is not None:
        candidates["user attributes"] = {"—": torch.tensor(attributes, dtype=torch.float32)}
    dae, dae_epoch = mult_dae(torch.tensor(x_train.toarray(), dtype=torch.float32), evaluate)
    candidates["Mult-DAE"] = {f"{dae_epoch} ep": dae}
    rows.append(("Mult-DAE alone", f"{dae_epoch} ep", evaluate(dae, "valid"), evaluate(dae, "test")))
    chosen = {}  # name: (setting, weight, standardised scores)
    for name, settings in candidates.items():
        scored = []
        for setting, feature in settings.items():
            # popularity is the same row for every user, so it is standardised over items once
            z = zscore(feature) if name != "popularity" else (feature - feature.mean()) / feature.std()
            for w in WEIGHTS:
                scored.append((evaluate(sora["valid"] + w * z, "valid"), setting, w, z))
        valid, setting, w, z = max(scored, key=lambda r: r[0])
        chosen[name] = (setting, w, z)
        rows.append((f"Sora + {name}", f"{setting}, w {w:g}", valid, evaluate(sora["test"] + w * z, "test")))
    # all of them at once: each weight re-chosen on valid with the others held (two rounds of coordinate ascent)
    weights = {name: w for name, (_s, w, _z) in chosen.items()}

    def together(part: str, ws: dict[str, float]):
        return sora[part] + sum(ws[n] * chosen[n][2] for n in ws)

    for _round in range(2):
        for name in weights:
            weights[name] = max(WEIGHTS, key=lambda w, n=name: evaluate(together("valid", {**weights, n: w}), "valid"))
    rows.append(("Sora + all of them", ", ".join(f"{n} {w:g}" for n, w in weights.items()),
                 evaluate(together("valid", weights), "valid"), evaluate(together("test", weights), "test")))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, action="append", help="a model trained on a random split (repeatable)")
    ap.add_argument("--split-seeds", type=int, metavar="N",
                    help="the default models of random split seeds 2020 .. 2020+N-1 (trained when absent)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    if args.model and args.split_seeds:
        ap.error("give --model or --split-seeds, not both")
    if args.split_seeds is not None and args.split_seeds < 1:
        ap.error(f"--split-seeds must be at least 1, got {args.split_seeds}")

    import torch

    from sora.data.contract import load_dataset
    from sora.evaluation.evaluate import rebuild_split
    from sora.model.recommender import Recommender

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.split_seeds:
        model_dirs = [split_seed_model(args.data, 2020 + k) for k in range(args.split_seeds)]
    else:
        model_dirs = args.model or [default_model(args.data)]
    started = time.perf_counter()
    dataset = load_dataset(args.data)
    runs, seeds = [], []
    for model_dir in model_dirs:
        rec = Recommender.load(model_dir)
        split = rebuild_split(rec, dataset)
        if split.spec.mode != "random":
            ap.error(f"{model_dir}: trained on a {split.spec.mode} split; this benchmark reads random splits")
        runs.append(blend_rows(rec, split, dataset.users))
        seeds.append(split.spec.seed)
        for name, chosen, valid, test in runs[-1]:
            print(f"split {seeds[-1]} {name}: {chosen}, valid {valid:.4f}, test {test:.4f}", flush=True)

    ease_test = np.array([run[0][3] for run in runs])
    lines = [MARK_BEGIN, "## A third score blended into Sora's on a random split (benchmarks/third_score.py)", "",
             "- command: `python benchmarks/third_score.py" + "".join(f" --model {m}" for m in args.model or [])
             + (f" --split-seeds {args.split_seeds}" if args.split_seeds else "") + "`",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()} "
             f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}; "
             f"{time.perf_counter() - started:.0f} s",
             f"- data: {args.data}; random split seeds {', '.join(map(str, seeds))} (one Sora model each); every "
             "choice by valid NDCG@10, scores standardised per user, weights " + ", ".join(f"{w:g}" for w in WEIGHTS),
             "", "| scores | chosen on valid, per split | valid ndcg@10 (mean) | test ndcg@10 (mean) "
             "| test vs tuned EASE (ratio of means) | per split |", "|---|---|---|---|---|---|"]
    for k, (name, *_rest) in enumerate(runs[0]):
        valid = np.mean([run[k][2] for run in runs])
        test = np.array([run[k][3] for run in runs])
        per = " ".join(f"×{t / e:.3f}" for t, e in zip(test, ease_test, strict=True))
        lines.append(f"| {name} | {'; '.join(run[k][1] for run in runs)} | {valid:.4f} | {test.mean():.4f} "
                     f"| ×{test.mean() / ease_test.mean():.3f} | {per} |")
    lines.append(MARK_END)
    section = "\n".join(lines)
    print(section)
    write_section(args.out, MARK_BEGIN, MARK_END, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
