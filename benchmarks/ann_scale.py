"""Approximate vs exact top-k on a synthetic large catalogue (issue 15, deliverable 5).

    python benchmarks/ann_scale.py [--items 1000000] [--dim 64] [--queries 500] [--out benchmarks/RESULTS.md]

The catalogue is synthetic but shaped like fitted item vectors: 2,000 topic centres, each item a
centre plus Gaussian noise (0.5 of the centre scale) with a log-normal popularity-like norm; users
are mixtures of 1–3 topic centres plus noise. A :class:`~sora.recommender.Recommender` is built over
it and saved (``serve.ann_min_items`` below the catalogue size, so the save builds the index), then
loaded twice: with the index and with it switched off (exact). Per-request latency is measured
through ``Recommender.recommend(user, k=10)`` for both (same users, in-process, one at a time), and
recall@10 of the approximate answer against the exact one. Memory: the index's own bytes and the
process RSS growth when it is loaded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import write_section  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- ann:begin -->", "<!-- ann:end -->"


def synthetic(n_items: int, n_users: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)).astype(np.float32) / np.sqrt(dim)
    topic = rng.integers(len(centres), size=n_items)
    items = centres[topic] + 0.5 * rng.standard_normal((n_items, dim)).astype(np.float32) / np.sqrt(dim)
    items *= rng.lognormal(0, 0.25, size=(n_items, 1)).astype(np.float32)
    users = np.zeros((n_users, dim), np.float32)
    for u in range(n_users):
        picks = rng.integers(len(centres), size=rng.integers(1, 4))
        users[u] = centres[picks].sum(0) + 0.3 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
    return items, users


def build_recommender(items: np.ndarray, users: np.ndarray, nprobe: int):
    import pandas as pd
    import scipy.sparse as sp
    import torch

    from sora.config import SoraConfig
    from sora.model import SoraModel
    from sora.recommender import Recommender

    n_items, dim = items.shape
    n_users = len(users)
    cfg = SoraConfig().with_overrides([f"model.dim={dim}", "model.use_text=false", "model.use_item_item_score=false",
                                       f"serve.ann_min_items={min(n_items, 200_000)}", f"serve.ann_nprobe={nprobe}"]).resolved()
    model = SoraModel(cfg.model, n_users, n_items, 0, torch.ones(n_items))
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    L = cfg.model.history_len
    return Recommender(config=cfg, model=model, user_ids=[f"u{u}" for u in range(n_users)],
                       item_ids=[f"i{i}" for i in range(n_items)],
                       items=pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": ""}),
                       user_vectors=torch.from_numpy(users), item_vectors=torch.from_numpy(items),
                       item_tokens=torch.from_numpy(items), history=torch.zeros(n_users, L, dtype=torch.long),
                       history_mask=torch.zeros(n_users, L, dtype=torch.bool), train=empty, seen=empty, ii=None)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    import torch

    from sora.recommender import Recommender

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads per request (default 1: "
                    "one request per core, as a serving worker runs; on a loaded machine more threads wait on each other)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    items, users = synthetic(args.items, args.queries, args.dim)
    rec = build_recommender(items, users, args.nprobe)
    del items
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rec.save(Path(tmp) / "m")  # builds the index (catalogue >= serve.ann_min_items)
        save_s = time.perf_counter() - t0
        index_bytes = (Path(tmp) / "m" / "ann.faiss").stat().st_size
        del rec
        before = rss_mb()
        approx = Recommender.load(Path(tmp) / "m")
        loaded_mb = rss_mb() - before
    # exact and approximate answers from one loaded model: the index is switched off for the exact call
    nlist, nprobe = approx.ann.nlist, approx.ann.nprobe
    lat = {"exact": [], "ann": []}
    recalls = []
    ann = approx.ann
    for u in range(args.queries):
        uid = f"u{u}"
        approx.ann = None
        t0 = time.perf_counter()
        e = approx.recommend(uid, k=10)
        lat["exact"].append((time.perf_counter() - t0) * 1000)
        approx.ann = ann
        t0 = time.perf_counter()
        a = approx.recommend(uid, k=10)
        lat["ann"].append((time.perf_counter() - t0) * 1000)
        recalls.append(len({x["item_id"] for x in a} & {x["item_id"] for x in e}) / 10)
    recall = float(np.mean(recalls))
    machine = (f"{platform.machine()} {os.cpu_count()} CPU cores (shared, load ~{os.getloadavg()[0]:.1f}), Python "
               f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
               f"faiss {__import__('faiss').__version__}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        MARK_BEGIN, "## Large catalogues: approximate top-k (benchmarks/ann_scale.py)", "",
        f"- command: `python benchmarks/ann_scale.py --items {args.items} --dim {args.dim} --queries {args.queries} "
        f"--nprobe {args.nprobe} --threads {args.threads} --out benchmarks/RESULTS.md`",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {machine}",
        f"- synthetic catalogue: {args.items:,} items × {args.dim} dims (2,000 topic clusters), {args.queries} users; "
        f"IVF index ({nlist} cells, nprobe {nprobe}) built by `Recommender.save` in {save_s:.1f}s (whole save)",
        "",
        "| top-k path | recall@10 vs exact | p50 ms | p99 ms |", "|---|---|---|---|",
        f"| exact (matrix-vector product + top-k) | 1.000 | {np.percentile(lat['exact'], 50):.2f} | "
        f"{np.percentile(lat['exact'], 99):.2f} |",
        f"| approximate index + exact rescoring | {recall:.3f} | {np.percentile(lat['ann'], 50):.2f} | "
        f"{np.percentile(lat['ann'], 99):.2f} |", "",
        f"Memory: index file {index_bytes / 2**20:.0f} MiB (vectors stored flat, ≈ the item vectors' own size); "
        f"RSS growth on loading the whole model {loaded_mb:.0f} MiB; process peak {peak:.0f} MiB. Latency is "
        "`Recommender.recommend(user, k=10)` in-process, one request at a time.",
        MARK_END,
    ]
    section = "\n".join(lines)
    print(section)
    if args.out:
        write_section(args.out, MARK_BEGIN, MARK_END, section)
    return 0 if recall >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
