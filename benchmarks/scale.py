"""Scale benchmark: preparation stages, one epoch and one full-ranking evaluation on synthetic catalogues.

    python benchmarks/scale.py [--device cpu|cuda] [--sizes 0.1M,1M,4M,20M] [--max-steps N] [--profile 4M]
                               [--out benchmarks/RESULTS.md]

On a GPU machine (``../shared/tools/device/``): ``bash benchmarks/gpu_check.sh`` runs the GPU tier and
this benchmark on CUDA in one go (under 8 minutes on an H200).

Each size runs in its own process (so its peak RSS is its own): a synthetic catalogue with power-law
item popularity and user activity (users lean to one of 20 "genres"), the ``hash`` text encoder,
the default config otherwise (``train.max_epochs=1``). Reported per size: seconds of every stage
before the first epoch (split, embed, matrix, text kNN, heterograph, torch graph, history tensors,
item–item head, static parts) with the peak RSS after it, one training epoch's wall time through
``run_epochs`` (every per-run setup included: pairs to the device, the valid ranker; ``--max-steps``
caps it and the full epoch is projected from the measured steps, labelled as such), fitting the vectors,
one full-ranking evaluation of every valid user over all items on the training device (top-k there),
the peak RSS and the peak device memory; with ``--profile SIZE`` a ``torch.profiler`` top-10 of one
training step at that size.
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
GPU_BEGIN, GPU_END = "<!-- scale-gpu:begin -->", "<!-- scale-gpu:end -->"
# interactions → (users, items): about 20 interactions per user, as many items as users
SIZES = {"0.1M": (100_000, 5_000, 5_000), "1M": (1_000_000, 50_000, 50_000), "4M": (4_000_000, 200_000, 200_000),
         "20M": (20_000_000, 1_000_000, 500_000)}
STAGES = ["split", "embed", "matrix", "text_knn", "heterograph", "torch_graph", "history", "item_item_head", "static"]


def synthetic(n_inter: int, n_users: int, n_items: int, seed: int = 0, genres: int = 20):
    """A Dataset with Zipf-like item popularity (exponent 0.9) and log-normal user activity (≥ 3 each)."""
    from sora.data.contract import Dataset

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


def run_one(size: str, max_steps: int | None, device: str = "cpu", profile: bool = False) -> dict:
    """One size, in this process: every stage timed."""

    from sora.config import SoraConfig
    from sora.data.split import make_split
    from sora.evaluation.metrics import DeviceRanker
    from sora.model.text import HashEncoder, embed_items
    from sora.training.device import (
        check_training_memory,
        device_info,
        peak_device_memory_gb,
        resolve_device,
        training_memory_parts,
    )
    from sora.training.loop import dot_scores, fit, run_epochs
    from sora.training.losses import step_loss
    from sora.training.prep import peak_rss_mb, prepare_training
    from sora.training.train import build_model, seed_everything

    n_inter, n_users, n_items = SIZES[size]
    cfg = SoraConfig().with_overrides(["text.model=hash:64", "train.max_epochs=1", f"train.device={device}"]
                                      ).resolved()
    dev = resolve_device(device)
    t = time.perf_counter()
    ds = synthetic(n_inter, n_users, n_items)
    out: dict = {"size": size, "generate_s": time.perf_counter() - t, "stages": {}, "device": device_info(dev)}
    t = time.perf_counter()
    split = make_split(ds, cfg.split)
    out["stages"]["split"] = {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
    t = time.perf_counter()
    emb, _ = embed_items(ds.items, cfg.data.item_text_template, HashEncoder(64), None, 4096, progress=False)
    out["stages"]["embed"] = {"seconds": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb()}
    items = ds.items
    del ds
    out.update(users=split.num_users, items=split.num_items, train=len(split.train), valid=len(split.valid))
    parts = training_memory_parts(split.num_users, split.num_items, len(split.train), cfg)
    out["estimate_gb"] = sum(parts.values()) / 2**30
    check_training_memory(dev, parts)
    seed_everything(cfg.train.seed)
    t = time.perf_counter()
    prep = prepare_training(split, emb, items, cfg, dev)
    out["prepare_s"] = time.perf_counter() - t + out["stages"]["split"]["seconds"] + out["stages"]["embed"]["seconds"]
    out["stages"].update(prep.stages)
    out["ii"] = f"{type(prep.ii).__name__} nnz={getattr(prep.ii, 'nnz', getattr(prep.ii, 'size', 0))}"
    out["edges"] = int(len(prep.graph.norm))
    model = build_model(prep, cfg)
    cfg.train.eval_every = 10**6  # evaluation is timed on its own below
    _sync(dev)
    t = time.perf_counter()
    loop = run_epochs(model, prep, cfg, progress=False, max_steps=max_steps)
    _sync(dev)
    wall = time.perf_counter() - t
    h = loop.history[0]
    full_steps = -(-len(prep.pairs[0]) // cfg.train.batch_size)
    out.update(steps=h["steps"], full_steps=full_steps, step_s=h["epoch_seconds"] / max(h["steps"], 1))
    # wall time of run_epochs, the steps not run (--max-steps) added at the measured step time
    out["epoch_s"] = wall + out["step_s"] * (full_steps - h["steps"])
    out["epoch_projected"] = h["steps"] < full_steps
    t = time.perf_counter()
    ranker = DeviceRanker(split.valid["u"].to_numpy(), split.valid["i"].to_numpy(), split.num_items, (10, 20), dev,
                          exclude=prep.x_train, batch_size=cfg.eval.batch_size)
    metrics = ranker.evaluate(dot_scores(model, prep))
    _sync(dev)
    out["eval_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fit(model, prep, None)
    out["fit_s"] = time.perf_counter() - t
    out["eval_users"] = len(ranker.users)
    out["valid_ndcg@10"] = metrics["ndcg@10"]
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_device_gb"] = peak_device_memory_gb(dev)
    if profile:
        out["profile"] = profile_step(model, prep, cfg, dev, step_loss)
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(model, prep, cfg, device, step_loss) -> str:
    """A torch.profiler top-10 (by self time on the device, else the CPU) of one training step, as Markdown."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model.train()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(prep.pairs[0]), generator=gen)[: cfg.train.batch_size]
    u, i = prep.pairs[0][idx].to(device), prep.pairs[1][idx].to(device)
    negatives = None if bool(prep.warm.all()) else prep.warm.to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):  # warm-up outside the profile
        step_loss(model, prep, u, i, prep.split.num_items, cfg.train, gen, negatives=negatives).backward()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        opt.zero_grad()
        step_loss(model, prep, u, i, prep.split.num_items, cfg.train, gen, negatives=negatives).backward()
        opt.step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=10, max_name_column_width=60)


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
    add("one epoch s, wall (all setup included)", lambda r: (f"{r['epoch_s']:.0f} (projected from {r['steps']} of {r['full_steps']} steps, "
                                  f"{r['step_s']:.2f} s/step)" if r["epoch_projected"]
                                  else f"{r['epoch_s']:.1f} ({r['full_steps']} steps, {r['step_s']:.2f} s/step)"))
    add("fit vectors s", lambda r: f"{r['fit_s']:.1f}")
    add("full-ranking eval s (valid users, top-k on the device)", lambda r: f"{r['eval_s']:.1f} ({r['eval_users']:,})")
    add("valid NDCG@10 after the epoch", lambda r: f"{r['valid_ndcg@10']:.4f}")
    add("**peak RSS MiB**", lambda r: f"**{r['peak_rss_mb']:,.0f}**")
    add("peak device GB (estimate before training)",
        lambda r: f"{r['peak_device_gb'] if r.get('peak_device_gb') is not None else '–'} ({r['estimate_gb']:.1f})")
    return "\n".join(lines)


def write_section(path: Path, rows: list[dict], args) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    dev = rows[0]["device"] if rows else {}
    where = (f"GPU {dev.get('name')} ({dev.get('memory_gb')} GB, CUDA {dev.get('cuda')})" if args.device == "cuda"
             else "CPU only")
    profiles = [f"\n### torch.profiler top-10 of one training step, {r['size']}\n\n```\n{r['profile']}\n```"
                for r in rows if r.get("profile")]
    begin, end = (MARK_BEGIN, MARK_END) if args.device == "cpu" else (GPU_BEGIN, GPU_END)
    body = "\n".join([
        begin,
        f"## Scale on {'the CPU' if args.device == 'cpu' else 'a GPU'}: preparation, one epoch and evaluation on "
        "synthetic catalogues (benchmarks/scale.py)",
        "",
        f"- command: `python benchmarks/scale.py --device {args.device} --sizes {args.sizes}"
        + (f" --max-steps {args.max_steps}" if args.max_steps else "")
        + (f" --profile {args.profile}" if args.profile else "") + "`",
        f"- date: {now}; machine: {machine()}; {where}",
        "- data: synthetic, Zipf-like item popularity (exponent 0.9), log-normal user activity (≥ 3), users lean "
        "to one of 20 genres; `hash:64` text encoder; default config otherwise (so above "
        "`graph.ease_max_items`=20,000 items the sparse neighbourhood EASE head is built)",
        "- every size ran in its own process; peak RSS is `ru_maxrss` after each stage (cumulative, so it "
        "includes the data frames of the generator and split)",
        "",
        table(rows),
        *profiles,
        "",
        end,
    ])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + body + text[b:]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.1M,1M,4M", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--profile", default=None, help="a size whose one training step is profiled (e.g. 4M)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap the timed epoch at this many steps")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        args.json.write_text(json.dumps(run_one(args.one, args.max_steps, args.device, args.profile == args.one)))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("scale.py: --device cuda but CUDA is not available on this machine", file=sys.stderr)
            return 2
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        print(f"scale.py: unknown size {unknown[0]!r}; sizes are {', '.join(SIZES)}", file=sys.stderr)
        return 2
    rows = []
    for size in args.sizes.split(","):
        tmp = Path(f"/tmp/sora-scale-{size}.json")
        cmd = [sys.executable, __file__, "--one", size, "--json", str(tmp), "--device", args.device]
        if args.profile:
            cmd += ["--profile", args.profile]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        done = subprocess.run(cmd)
        if done.returncode:  # e.g. a size that cannot fit the device: the sizes done so far stay written
            print(f"scale.py: size {size} failed (exit {done.returncode})", file=sys.stderr)
            break
        rows.append(json.loads(tmp.read_text()))
        print(json.dumps(rows[-1]), flush=True)
        write_section(args.out, rows, args)  # after every size: a run cut short by a time limit keeps its rows
    if rows:
        print(table(rows))
    return 0 if len(rows) == len(args.sizes.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
