"""The dataset suite: Sora and the baselines on public data sets Sora was not developed on (issue 35).

    python benchmarks/suite.py --data DIR [DIR ...] [--seeds 1 2 3] [--threads 1] [--set KEY=VALUE ...]
    python benchmarks/suite.py --data DIR --quick --out /tmp/suite.md     # does it run end to end?

Each DIR is a dataset directory written by ``sora data fetch NAME --dest DIR`` (:mod:`sora.data.datasets`:
goodbooks-10k, book-crossing, anime, amazon-beauty, amazon-video-games, steam). On each, default config:

- **random split** (DESIGN.md §4, split.seed 2020): Sora and LightGCN trained once per train seed, MostPop
  and EASE (λ chosen on valid) once; Sora's own weights are also scored without its item–item head and
  without any head. A paired bootstrap over test users (each user's NDCG@10 averaged over the seeds) gives
  Sora / EASE and Sora / the best baseline with 95% intervals.
- **Protocol T** (``leave-last-out``) only where the timestamps order anything (a source without time has
  every row at 0: :func:`sora.data.contract.has_time_order`): ``benchmarks/protocol_t.py``'s comparison without
  its ablations, i.e. Sora and SASRec per seed, MostPop, EASE and recency-weighted EASE, the same bootstrap.
- **training time**: Sora's fit seconds (mean over the seeds, every trial on valid included) per dataset
  and protocol, on this machine.

``--quick`` (one seed, at most 3 epochs, one temperature) only checks that everything runs: its numbers are
not results. Writes the "Dataset suite" section of RESULTS.md.

The suite's data, each under a million interactions and (but for Book-Crossing, whose size after the core is
not known in advance) under EASE's dense limit of 20k items (MIRROR: where the downloads are kept):

    sora data fetch goodbooks-10k --source MIRROR/goodbooks-10k.zip --dest .sora/suite/goodbooks-10k --users 5000
    sora data fetch book-crossing --source MIRROR/BX-CSV-Dump.zip --dest .sora/suite/book-crossing --core 10
    sora data fetch anime --source MIRROR/anime-recommendations-database --dest .sora/suite/anime --users 5000
    sora data fetch amazon-beauty --source MIRROR/amazon --dest .sora/suite/amazon-beauty
    sora data fetch amazon-video-games --source MIRROR/amazon --dest .sora/suite/amazon-video-games
    sora data fetch steam --source MIRROR/steam --dest .sora/suite/steam
    HF_HUB_OFFLINE=1 python benchmarks/suite.py --data .sora/suite/* --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402
from protocol_t import mean_std, paired_bootstrap, run_dataset, train_sora  # noqa: E402
from quality import machine  # noqa: E402

from sora.config import SoraConfig  # noqa: E402
from sora.data.contract import (  # noqa: E402
    Dataset,
    has_time_order,  # noqa: E402
    load_dataset,
)
from sora.data.split import make_split  # noqa: E402
from sora.evaluation.evaluate import run_baselines  # noqa: E402
from sora.model.text import EmbeddingCache, embed_items, load_encoder  # noqa: E402

BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
KEYS = ("ndcg@10", "recall@10", "hit@10", "coverage@10", "ndcg@20")
QUICK = ["train.max_epochs=3", "tune.grid=[]"]


def interval(boot: dict) -> str:
    return f"×{boot['ratio']:.3f} (×{boot['lo']:.3f} – ×{boot['hi']:.3f})"


def random_split(ds: Dataset, base: SoraConfig, seeds: list[int]) -> tuple[list[str], dict]:
    """The random-split comparison on ``ds``: (Markdown lines, summary)."""
    cfg = base.with_overrides(["split.mode=random"])
    split = make_split(ds, cfg.split)
    emb, _ = embed_items(ds.items, cfg.data.item_text_template, load_encoder(cfg.text),
                         EmbeddingCache(Path.home() / ".cache/sora/embeddings"), progress=False)
    users: dict[str, dict] = {}
    det = run_baselines(split, cfg, ("mostpop", "ease"), per_user=users)
    sora, lightgcn, lightgcn_users = [], [], []
    for seed in seeds:
        scfg = cfg.with_overrides([f"train.seed={seed}"])
        sora.append(train_sora(split, emb, ds.items, scfg))
        pu: dict[str, dict] = {}
        lightgcn.append(run_baselines(split, scfg, ("lightgcn",), items=ds.items, per_user=pu)["lightgcn"])
        lightgcn_users.append(pu["lightgcn"]["ndcg@10"])
        print(f"seed {seed}: sora {sora[-1]['test']['ndcg@10']:.4f}, lightgcn {lightgcn[-1]['ndcg@10']:.4f}", flush=True)
    fit_s = float(np.mean([r["fit_s"] for r in sora]))
    rows = [["**sora**", [r["test"] for r in sora], mean_std([r["valid"]["ndcg@10"] for r in sora]),
             "; ".join(f"temperature {r['temperature']:g}, epoch {r['epoch']}, head weight {r['alpha']:.3g}"
                       + (f", λ {r['lambda']:g}" if r["lambda"] is not None else "") for r in sora), f"{fit_s:.0f}"]]
    same = [("nohead_", "without item–item head")] + \
        [("net_", "network alone, no heads")] * any(r["beta"] for r in sora)  # else the same scores as nohead_
    rows += [[f"sora {label} (same weights)", [r[key + "test"] for r in sora],
              mean_std([r[key + "valid"]["ndcg@10"] for r in sora]), "", ""] for key, label in same]
    rows += [[name, [m], f"{m['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in m else "",
              f"λ {m['lambda']:g}" if "lambda" in m else "", f"{m['fit_seconds']:.0f}"] for name, m in det.items()]
    rows.append(["lightgcn", lightgcn, "", "", f"{np.mean([m['fit_seconds'] for m in lightgcn]):.0f}"])
    sora_users = np.mean([r["per_user"] for r in sora], 0)
    baselines = {"lightgcn": np.mean(lightgcn_users, 0), **{n: users[n]["ndcg@10"] for n in det}}
    best = max(baselines, key=lambda n: baselines[n].mean())
    summary = {"fit_s": fit_s, "best": best, "vs_best": paired_bootstrap(sora_users, baselines[best]),
               "vs_ease": paired_bootstrap(sora_users, baselines["ease"]) if "ease" in baselines else None}
    lines = [f"Random split: {split.num_users} users, {split.num_items} items, train/valid/test "
             f"{len(split.train)}/{len(split.valid)}/{len(split.test)}; encoder {emb.encoder_id}; train seeds "
             f"{', '.join(map(str, seeds))} (Sora and LightGCN: mean ± std; MostPop and EASE are deterministic).", "",
             "| model | " + " | ".join(KEYS) + " | valid ndcg@10 | chosen on valid | fit_s |", "|" + "---|" * (len(KEYS) + 4),
             *(f"| {name} | " + " | ".join(mean_std([t[k] for t in tests]) for k in KEYS) + f" | {valid} | {chosen} | {fit} |"
               for name, tests, valid, chosen, fit in rows), ""]
    if summary["vs_ease"]:
        lines.append(f"**Sora vs EASE**: test NDCG@10 {interval(summary['vs_ease'])} (paired bootstrap over "
                     f"{len(sora_users)} test users, 5,000 resamples, 95% interval).")
    lines += [f"**Sora vs the best baseline ({best})**: {interval(summary['vs_best'])}.", ""]
    return lines, summary


def run(data_dir: Path, base: SoraConfig, seeds: list[int]) -> tuple[list[str], list[str]]:
    """One dataset's Markdown and its summary row."""
    ds = load_dataset(data_dir)
    inter = ds.interactions
    timed = has_time_order(inter)
    text = [c for c in ("categories", "text") if c in ds.items.columns and (ds.items[c].fillna("") != "").any()]
    lines = [f"### {data_dir.name}", "",
             f"{len(inter)} interactions, {inter['user_id'].nunique()} users, {len(ds.items)} items; item text: title"
             + "".join(f", {c}" for c in text)
             + ("; timestamps order the events" if timed else "; no timestamps in the source: Protocol T skipped")
             + (f"; user_edges {len(ds.user_edges)}" if ds.user_edges is not None else "") + ".", ""]
    random_lines, r = random_split(ds, base, seeds)
    lines += random_lines
    t: dict = {}
    if timed:
        heading, *rest = run_dataset(data_dir, base, seeds, [], summary=t)
        lines += [f"Protocol T (leave-last-out): {heading.split(': ', 1)[1]}.", *rest]
    ease = interval(r["vs_ease"]) if r["vs_ease"] else "EASE skipped (catalogue above graph.ease_max_items)"
    row = [data_dir.name, f"{len(inter)}", f"{inter['user_id'].nunique()} × {len(ds.items)}", ease,
           f"{r['best']} {interval(r['vs_best'])}", f"{t['best']} {interval(t)}" if t else "no timestamps",
           f"{r['fit_s']:.0f}", f"{t['fit_s']:.0f}" if t else ""]
    return lines, row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True, help="dataset directories (sora data fetch)")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="train.seed values")
    p.add_argument("--quick", action="store_true", help="one seed, at most 3 epochs, one temperature: a smoke run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    overrides = [*(QUICK if args.quick else []), *args.set]
    base = SoraConfig().with_overrides(overrides)
    started = dt.datetime.now(dt.UTC)
    cmd = "python benchmarks/suite.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body, summary = [], []
    for data_dir in args.data:
        lines, row = run(data_dir, base, seeds)
        body += lines
        summary.append("| " + " | ".join(row) + " |")
        print("\n".join(lines), flush=True)
    lines = [BEGIN, "## Dataset suite: data Sora was not developed on (benchmarks/suite.py)", "",
             f"- command: `{cmd.strip()}`", f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             f"- default config{' with ' + ', '.join(f'`{o}`' for o in overrides) if overrides else ''}"
             f"; ratings ≥ {base.split.rating_threshold} positive; full ranking over each catalogue; everything chosen "
             "on valid NDCG@10; ratios are test NDCG@10, paired bootstrap over test users, 95% intervals"
             + ("; **--quick: a smoke run, not results**" if args.quick else ""), "",
             "| dataset | interactions | users × items | random: Sora / EASE | random: Sora / best baseline | "
             "Protocol T: Sora / best baseline | Sora fit_s, random | Sora fit_s, Protocol T |",
             "|---|---|---|---|---|---|---|---|", *summary, "", *body, END]
    write_section(args.out, BEGIN, END, "\n".join(lines))
    print("\n".join(lines[:len(summary) + 9]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
