"""Scale benchmark: preparation stages, one epoch and one full-ranking evaluation on synthetic catalogues.

    python benchmarks/scale.py [--sizes 0.1M,1M,4M] [--max-steps N] [--out benchmarks/RESULTS.md]

Each size runs in its own process (so its peak RSS is its own): a synthetic catalogue with power-law
item popularity and user activity (users lean to one of 20 "genres"), the ``hash`` text encoder,
the default config otherwise (``train.max_epochs=1``). Reported per size: seconds of every stage
before the first epoch (split, embed, matrix, text kNN, heterograph, torch graph, history tensors,
item–item head, static parts) with the peak RSS after it, one training epoch (``--max-steps`` caps
it and the full epoch is projected from the measured steps, labelled as such), one full-ranking
evaluation of every valid user over all items, and the process's peak RSS.
Writes a Markdown section between markers in RESULTS.md (other sections stay).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

MARK_BEGIN, MARK_END = "<!-- scale:begin -->", "<!-- scale:end -->"
# interactions → (users, items): about 20 interactions per user, as many items as users
SIZES = {"0.1M": (100_000, 5_000, 5_000), "1M": (1_000_000, 50_000, 50_000), "4M": (4_000_000, 200_000, 200_000)}
STAGES = ["split", "embed", "matrix", "text_knn", "heterograph", "torch_graph", "history", "item_item_head", "static"]


def synthetic(n_inter: int, n_users: int, n_items: int, seed: int = 0, genres: int = 20):
    """A Dataset with Zipf-like item popularity (exponent 0.9) and log-normal user activity (≥ 3 each)."""
    from sora.data import Dataset

    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_users)
    per_user = np.maximum(3, np.round(activity / activity.sum() * n_inter * 1.08)).astype(np.int64)
    users = np.repeat(np.arange(n_users), per_user)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    ranks = rng.choice(n_items, size=len(users), p=pop / pop.sum())
    # 70% of a user's picks come from its genre (item index ≡ user index mod genres), at similar popularity
    own = rng.random(len(users)) < 0.7
    items = np.where(own, np.minimum(ranks - ranks % genres + users % genres, n_items - 1), ranks)
    pairs = np.unique(users * n_items + items)[: n_inter]
    u, i = pairs // n_items, pairs % n_items
    inter = pd.DataFrame({"user_id": u.astype(str), "item_id": i.astype(str),
                          "timestamp": 1_600_000_000 + rng.integers(0, 10**7, len(u))})
    words = np.array(["red", "blue", "quiet", "fast", "night", "river", "stone", "glass", "paper", "iron"])
    w = rng.integers(0, len(words), (n_items, 3))
    items_df = pd.DataFrame({"item_id": np.arange(n_items).astype(str),
                             "title": [f"{a} {b} {c} {k}" for k, (a, b, c) in enumerate(words[w])],
                             "categories": [f"genre{k % genres}" for k in range(n_items)]})
    return Dataset(interactions=inter, items=items_df)


def run_one(size: str, max_steps: int | None) -> dict:
    """One size, in this process: every stage timed."""
    import torch

    from sora.config import SoraConfig
    from sora.metrics import evaluate_scores
    from sora.split import make_split
    from sora.text import HashEncoder, embed_items
    from sora.train import build_model, seed_everything
    from sora.training_loop import fit, run_epochs
    from sora.training_prep import peak_rss_mb, prepare_training

    n_inter, n_users, n_items = SIZES[size]
    cfg = SoraConfig().with_overrides(["text.model=hash:64", "train.max_epochs=1", "train.device=cpu"]).resolved()
    t = time.perf_counter()
    ds = synthetic(n_inter, n_users, n_items)
    out: dict = {"size": size, "generate_s": time.perf_counter() - t, "stages": {}}
    t = time.perf_counter()
    split = make_split(ds, cfg.split)
    out["stages"]["split"] = {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
    t = time.perf_counter()
    emb, _ = embed_items(ds.items, cfg.data.item_text_template, HashEncoder(64), None, 4096, progress=False)
    out["stages"]["embed"] = {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
    items = ds.items
    del ds
    out.update(users=split.num_users, items=split.num_items, train=len(split.train), valid=len(split.valid))
    seed_everything(cfg.train.seed)
    t = time.perf_counter()
    prep = prepare_training(split, emb, items, cfg, torch.device("cpu"))
    out["prepare_s"] = time.perf_counter() - t + out["stages"]["split"]["seconds"] + out["stages"]["embed"]["seconds"]
    out["stages"].update(prep.stages)
    out["ii"] = f"{type(prep.ii).__name__} nnz={getattr(prep.ii, 'nnz', getattr(prep.ii, 'size', 0))}"
    out["edges"] = int(len(prep.graph.norm))
    model = build_model(prep, cfg)
    cfg.train.eval_every = 10**6  # evaluation is timed on its own below
    t = time.perf_counter()
    loop = run_epochs(model, prep, cfg, progress=False, max_steps=max_steps)
    h = loop.history[0]
    full_steps = -(-len(prep.pairs[0]) // cfg.train.batch_size)
    out.update(steps=h["steps"], full_steps=full_steps, step_s=h["epoch_seconds"] / max(h["steps"], 1))
    out["epoch_s"] = out["step_s"] * full_steps
    out["epoch_projected"] = h["steps"] < full_steps
    t = time.perf_counter()
    rec = fit(model, prep, None)
    out["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = evaluate_scores(rec.score_users, split.valid["u"].to_numpy(), split.valid["i"].to_numpy(),
                              split.num_items, (10, 20), exclude=prep.x_train, batch_size=cfg.eval.batch_size)
    out["eval_s"] = time.perf_counter() - t
    out["eval_users"] = int(split.valid["u"].nunique())
    out["valid_ndcg@10"] = metrics["ndcg@10"]
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def machine() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.machine()} {os.cpu_count()} CPU cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def table(rows: list[dict]) -> str:
    head = ["stage"] + [f"{r['size']} ({r['users']:,} users × {r['items']:,} items, {r['train']:,} train pairs)"
                        for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def add(name, fn):
        lines.append("| " + " | ".join([name] + [fn(r) for r in rows]) + " |")

    for s in STAGES:
        add(f"{s} s (peak RSS MiB)",
            lambda r, s=s: f"{r['stages'][s]['seconds']:.1f} ({r['stages'][s]['peak_rss_mb']:,.0f})"
            if s in r["stages"] else "–")
    add("**preparation total s**", lambda r: f"**{r['prepare_s']:.1f}**")
    add("item–item head", lambda r: r["ii"])
    add("graph edges (all types)", lambda r: f"{r['edges']:,}")
    add("one epoch s", lambda r: (f"{r['epoch_s']:.0f} (projected from {r['steps']} of {r['full_steps']} steps, "
                                  f"{r['step_s']:.2f} s/step)" if r["epoch_projected"]
                                  else f"{r['epoch_s']:.1f} ({r['full_steps']} steps, {r['step_s']:.2f} s/step)"))
    add("fit vectors s", lambda r: f"{r['fit_s']:.1f}")
    add("full-ranking eval s (valid users)", lambda r: f"{r['eval_s']:.1f} ({r['eval_users']:,})")
    add("**peak RSS MiB**", lambda r: f"**{r['peak_rss_mb']:,.0f}**")
    return "\n".join(lines)


def write_section(path: Path, rows: list[dict], args) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([
        MARK_BEGIN,
        "## Scale: preparation, one epoch and evaluation on synthetic catalogues (benchmarks/scale.py)",
        "",
        f"- command: `python benchmarks/scale.py --sizes {args.sizes}"
        + (f" --max-steps {args.max_steps}`" if args.max_steps else "`"),
        f"- date: {now}; machine: {machine()}; CPU only (no GPU machine was at hand for this run: no GPU column)",
        "- data: synthetic, Zipf-like item popularity (exponent 0.9), log-normal user activity (≥ 3), users lean "
        "to one of 20 genres; `hash:64` text encoder; default config otherwise (so above "
        "`graph.ease_max_items`=20,000 items the sparse neighbourhood EASE head is built)",
        "- every size ran in its own process; peak RSS is `ru_maxrss` after each stage (cumulative, so it "
        "includes the data frames of the generator and split)",
        "",
        table(rows),
        "",
        MARK_END,
    ])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if MARK_BEGIN in text and MARK_END in text:
        a, b = text.index(MARK_BEGIN), text.index(MARK_END) + len(MARK_END)
        text = text[:a] + body + text[b:]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.1M,1M,4M")
    ap.add_argument("--max-steps", type=int, default=None, help="cap the timed epoch at this many steps")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        args.json.write_text(json.dumps(run_one(args.one, args.max_steps)))
        return 0
    rows = []
    for size in args.sizes.split(","):
        tmp = Path(f"/tmp/sora-scale-{size}.json")
        cmd = [sys.executable, __file__, "--one", size, "--json", str(tmp)]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        subprocess.run(cmd, check=True)
        rows.append(json.loads(tmp.read_text()))
        print(json.dumps(rows[-1]), flush=True)
    write_section(args.out, rows, args)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
