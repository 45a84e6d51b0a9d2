"""Quality and training-speed benchmark: Sora, its ablations and the baselines on one split, one run.

    python benchmarks/quality.py [--data DIR] [--out benchmarks/RESULTS.md] [--max-epochs N] [--skip-large]
    python benchmarks/quality.py --split-seeds 5     # Sora vs EASE over five random splits

Default protocol (DESIGN.md §4) on MovieLens-100K: Sora, Sora without its item–item head (same weights),
ablations (no text, no Transformer, no item↔item edges, LightGCN-like = all off), MostPop, EASE, BPR-MF
(`implicit`). Cold-item protocol: Sora vs text kNN and MostPop on the held-out items. Then one epoch
and one full-ranking pass on a synthetic catalogue of 100k items / 1M interactions to show scaling.
Writes a Markdown section into RESULTS.md (between markers, so other benchmarks' sections stay).

Protocol T (next item) has its own script, ``benchmarks/protocol_t.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import DEFAULT_DATA, movielens_100k  # noqa: E402

from sora.config import SoraConfig  # noqa: E402
from sora.data.contract import Dataset, load_dataset  # noqa: E402
from sora.data.split import make_split  # noqa: E402
from sora.evaluation.evaluate import evaluate_split, lightgcn_config, run_baselines  # noqa: E402
from sora.model.text import EmbeddingCache, embed_items, load_encoder  # noqa: E402
from sora.training.train import train_model  # noqa: E402

KEYS = ["ndcg@10", "recall@10", "hit@10", "mrr@10", "precision@10", "coverage@10", "ndcg@20", "recall@20"]
MARK_BEGIN, MARK_END = "<!-- quality:begin -->", "<!-- quality:end -->"
SEEDS_BEGIN, SEEDS_END = "<!-- split-seeds:begin -->", "<!-- split-seeds:end -->"


@contextlib.contextmanager
def peak_rss():
    """Sample this process's RSS every 50 ms; yields a dict filled with 'peak_mb' on exit."""
    proc, out, stop = psutil.Process(), {"peak_mb": 0.0}, threading.Event()

    def sample():
        while not stop.is_set():
            out["peak_mb"] = max(out["peak_mb"], proc.memory_info().rss / 2**20)
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (f"{platform.machine()} {os.cpu_count()} CPU cores, {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def train_row(name, split, emb, items, cfg, rows, alpha_zero_name=None):
    with peak_rss() as mem:
        res = train_model(split, emb, items, cfg, progress=True)
    rec = res.recommender
    test = evaluate_split(rec.score_users, split, "test", cfg.eval.ks)
    rows.append({"model": name, **test, "train_s": res.seconds, "epochs": f"{res.best_epoch}/{len(res.history)}",
                 "epoch_s": np.median([h["epoch_seconds"] for h in res.history]), "peak_mb": mem["peak_mb"]})
    if alpha_zero_name and rec.ii is not None:
        kept, rec.network_weight = rec.network_weight, 1.0  # the same network's weights, whatever valid served
        test0 = evaluate_split(lambda b: rec.score_users(b, alpha=0.0), split, "test", cfg.eval.ks)
        rec.network_weight = kept
        rows.append({"model": alpha_zero_name, **test0, "train_s": res.seconds,
                     "epochs": f"{res.best_epoch}/{len(res.history)}", "epoch_s": rows[-1]["epoch_s"],
                     "peak_mb": mem["peak_mb"]})
    print(f"{name}: test ndcg@10 {test['ndcg@10']:.4f} recall@10 {test['recall@10']:.4f} ({res.seconds:.0f}s)", flush=True)
    return res


def table(rows: list[dict], keys=KEYS, extra=("train_s", "epochs", "epoch_s", "peak_mb")) -> str:
    cols = ["model", *keys, *extra]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["model"]]
        for c in cols[1:]:
            v = r.get(c, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) and c in keys else
                         f"{v:.1f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthetic(n_users=50_000, n_items=100_000, n_inter=1_000_000, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    pop = 1.0 / (np.arange(n_items) + 10.0) ** 0.8  # long-tailed popularity, most pairs still distinct
    pop = rng.permutation(pop / pop.sum())
    items = rng.choice(n_items, n_inter, p=pop)
    users = rng.integers(0, n_users, n_inter)
    inter = pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str), "rating": 5.0,
                          "timestamp": rng.integers(8e8, 9e8, n_inter)}).drop_duplicates(["user_id", "item_id"])
    cat = pd.DataFrame({"item_id": np.arange(n_items).astype(str),
                        "title": [f"item {i} of series {i % 977}" for i in range(n_items)],
                        "categories": [f"genre{i % 23}" for i in range(n_items)]})
    return Dataset(inter, cat)


def large_row(args) -> list[dict]:
    ds = synthetic()
    cfg = SoraConfig().with_overrides(["text.model=hash:64", "train.max_epochs=1", "train.patience=1",
                                       "model.use_item_item_score=false", "eval.batch_size=256"])
    start = time.perf_counter()
    split = make_split(ds, cfg.split)
    emb, _ = embed_items(ds.items, cfg.data.item_text_template, load_encoder(cfg.text), None, progress=False)
    prep_s = time.perf_counter() - start
    with peak_rss() as mem:
        res = train_model(split, emb, ds.items, cfg, progress=True)
    rec = res.recommender
    t0 = time.perf_counter()
    test = evaluate_split(rec.score_users, split, "test", cfg.eval.ks, batch_size=256)
    eval_s = time.perf_counter() - t0
    return [{"model": f"sora, synthetic {split.num_users} users × {split.num_items} items, "
                      f"{len(split.train)} train interactions", "split+embed_s": prep_s,
             "epoch_s": res.history[0]["epoch_seconds"], "train_total_s": res.seconds,
             "full_ranking_eval_s": eval_s, "eval_users": int(split.test["u"].nunique()), "peak_mb": mem["peak_mb"],
             "ndcg@10": test["ndcg@10"]}]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--split-seeds", type=int, default=0, metavar="N",
                   help="instead: Sora vs EASE on N random splits (split.seed 2020, 2021, …), mean ratio")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (1 is fastest on a machine shared with other jobs)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(movielens_100k(args.data))
    base = SoraConfig()
    if args.max_epochs:
        base = base.with_overrides([f"train.max_epochs={args.max_epochs}"])
    started = dt.datetime.now(dt.UTC)
    encoder = load_encoder(base.text)
    emb, _ = embed_items(ds.items, base.data.item_text_template, encoder, EmbeddingCache(Path.home() / ".cache/sora/embeddings"))

    if args.split_seeds:
        return split_seeds(args, argv, ds, emb, base, started)
    rows: list[dict] = []
    split = make_split(ds, base.split)
    res = train_row("**sora**", split, emb, ds.items, base, rows, "sora without item–item head (same weights)")
    if not args.skip_ablations:
        # ablations train once, at the temperature full Sora chose on valid
        fixed = base.with_overrides(["tune.grid=[]", f"train.temperature={res.recommender.config.train.temperature}"])
        for name, flag in [("ablation: no text", "model.use_text=false"),
                           ("ablation: no Transformer", "model.use_transformer=false"),
                           ("ablation: no item↔item edges", "graph.item_edges=none")]:
            train_row(name, split, emb, ds.items, fixed.with_overrides([flag]), rows)
        train_row("lightgcn (ablation: ids only, no text/Transformer/side edges/item–item head)", split, None,
                  ds.items, lightgcn_config(fixed), rows)
    for name, m in run_baselines(split, base, ("mostpop", "ease", "bpr")).items():
        rows.append({"model": name, **m, "train_s": m["fit_seconds"], "epochs": "", "epoch_s": "", "peak_mb": ""})

    cold_rows: list[dict] = []
    cold_cfg = base.with_overrides(["split.mode=cold-item"])
    cold = make_split(ds, cold_cfg.split)
    train_row("**sora**", cold, emb, ds.items, cold_cfg, cold_rows)
    for name, m in run_baselines(cold, cold_cfg, ("textknn", "mostpop"), embeddings=emb).items():
        cold_rows.append({"model": name, **m, "train_s": m["fit_seconds"], "epochs": "", "epoch_s": "", "peak_mb": ""})

    large = [] if args.skip_large else large_row(args)

    def get(name, rs=rows):
        return next(r for r in rs if r["model"] == name)

    sora, ease = get("**sora**"), get("ease")
    best_base = max((r for r in rows if r["model"] != "**sora**" and not r["model"].startswith("sora ")),
                    key=lambda r: r["ndcg@10"])
    cmd = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        MARK_BEGIN,
        "## Quality and training speed (benchmarks/quality.py)",
        "",
        f"- command: `{cmd.strip()}` (after `make venv`)",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
        f"- data: MovieLens-100K ({len(ds.interactions)} ratings) from {args.data}; "
        f"split `{base.split.mode}` seed {base.split.seed}, ratings ≥ {base.split.rating_threshold} positive, 8:1:1 "
        f"per user, full ranking over all {split.num_items} items, train (and valid, for test) items excluded",
        f"- encoder: {emb.encoder_id}",
        "",
        "### Default protocol, test set",
        "",
        table(rows),
        "",
        f"Sora / EASE: NDCG@10 ×{sora['ndcg@10'] / ease['ndcg@10']:.3f}, Recall@10 ×{sora['recall@10'] / ease['recall@10']:.3f}. "
        f"Sora / best other row ({best_base['model']}): NDCG@10 ×{sora['ndcg@10'] / best_base['ndcg@10']:.3f}.",
        "",
        "### Cold-item protocol, test set (ranking among held-out items only; they have no interactions in train)",
        "",
        table(cold_rows),
        "",
        f"Sora / text kNN on cold items: NDCG@10 ×{get('**sora**', cold_rows)['ndcg@10'] / get('textknn', cold_rows)['ndcg@10']:.3f}.",
        "",
    ]
    if large:
        lines += ["### Scaling: one epoch on a synthetic catalogue (hash text encoder, no item–item head)", "",
                  table(large, keys=["ndcg@10"], extra=("split+embed_s", "epoch_s", "train_total_s",
                                                        "full_ranking_eval_s", "eval_users", "peak_mb")), ""]
    lines.append(MARK_END)
    write_section(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


def split_seeds(args, argv, ds: Dataset, emb, base: SoraConfig, started) -> int:
    """``--split-seeds N``: Sora (defaults) vs EASE on N random splits; its own RESULTS.md section."""
    rows = []
    for k in range(args.split_seeds):
        cfg = base.with_overrides([f"split.seed={2020 + k}"])
        split = make_split(ds, cfg.split)
        res = train_model(split, emb, ds.items, cfg, progress=True)
        rec = res.recommender
        sora = evaluate_split(rec.score_users, split, "test", (10,))["ndcg@10"]
        ease_run = run_baselines(split, cfg, ("ease",))["ease"]
        ease = ease_run["ndcg@10"]
        rows.append((2020 + k, sora, ease, rec.config.train.temperature, rec.alpha, rec.head_decay, res.seconds,
                     rec.config.graph.ease_lambda, ease_run["lambda"]))
        print(f"split seed {2020 + k}: sora {sora:.4f} ease {ease:.4f} ×{sora / ease:.3f}", flush=True)
    ratios = np.array([r[1] / r[2] for r in rows])
    s, e = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    cmd = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [SEEDS_BEGIN, "## Random split over split seeds: Sora vs EASE (benchmarks/quality.py --split-seeds)", "",
             f"- command: `{cmd.strip()}`", f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             "- MovieLens-100K, default protocol and config; each split's own valid chooses Sora's temperature, "
             "epochs, head weight, decay and the head's EASE λ; EASE's λ is chosen on the same valid; test NDCG@10", "",
             "| split.seed | Sora | EASE | Sora / EASE | temperature | head weight | decay | head λ | EASE λ | fit_s |",
             "|---|---|---|---|---|---|---|---|---|---|",
             *(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | ×{r[1] / r[2]:.3f} | {r[3]:g} | {r[4]:.3g} | {r[5]:g} | {r[7]:g} | "
               f"{r[8]:g} | {r[6]:.0f} |" for r in rows), "",
             f"Mean over {len(rows)} splits: Sora {s.mean():.4f} ± {s.std(ddof=1) if len(s) > 1 else 0:.4f}, EASE "
             f"{e.mean():.4f} ± {e.std(ddof=1) if len(e) > 1 else 0:.4f}; ratio of means ×{s.mean() / e.mean():.3f}, "
             f"per-split ratios ×{ratios.min():.3f} – ×{ratios.max():.3f}.", "", SEEDS_END]
    write_section(args.out, "\n".join(lines), SEEDS_BEGIN, SEEDS_END)
    print("\n".join(lines))
    return 0


def write_section(path: Path, section: str, begin: str = MARK_BEGIN, end: str = MARK_END) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1] if end in rest else ""
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
