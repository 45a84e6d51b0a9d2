"""Approximate vs exact top-k on a synthetic large catalogue (issue 15, deliverable 5; the kNN graph: issue 34).

    python benchmarks/ann_scale.py [--items 1000000] [--dim 64] [--queries 500] [--out benchmarks/RESULTS.md]
    python benchmarks/ann_scale.py --knn 20000,60000,200000 --dim 384 [--knn-nprobe 8,16,24] [--old-rev REV]

The catalogue is synthetic but shaped like fitted item vectors: 2,000 topic centres, each item a
centre plus Gaussian noise (0.5 of the centre scale) with a log-normal popularity-like norm; users
are mixtures of 1–3 topic centres plus noise. A :class:`~sora.model.recommender.Recommender` is built over
it and saved (``serve.ann_min_items`` below the catalogue size, so the save builds the index), then
loaded twice: with the index and with it switched off (exact). Per-request latency is measured
through ``Recommender.recommend(user, k=10)`` for both (same users, in-process, one at a time), and
recall@10 of the approximate answer against the exact one. Memory: the index's own bytes and the
process RSS growth when it is loaded.

``--knn``: the text kNN graph above ``graph.knn_exact_max_items`` (:func:`sora.model.itemsim.knn_cosine_ivf`,
faiss ``IndexIVFFlat`` over unit vectors) at each catalogue size, beside the own spherical k-means
inverted file it replaced (``knn_cosine_ivf`` as it was at git revision ``--old-rev``, loaded from git):
build time and recall@10 against exact cosine top-10 on ``--queries`` sampled items (the exact graph
itself is I² work; its time is projected from the sample). Synthetic items as above but with one topic
per 10 items at every size (near-duplicate groups about as large as the neighbour lists, so neighbours
cross topics and the sizes are equally hard), ``--dim`` 384 (the text encoder's width); every method
on ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from _results import publish, write_section  # benchmarks/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- ann:begin -->", "<!-- ann:end -->"
KNN_BEGIN, KNN_END = "<!-- knn:begin -->", "<!-- knn:end -->"


def synthetic(n_items: int, n_users: int, dim: int, seed: int = 0, topics: int = 2000):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32) / np.sqrt(dim)
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
    from sora.model.network import SoraModel
    from sora.model.recommender import Recommender

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


def old_knn_ivf(rev: str):
    """``sora.model.itemsim.knn_cosine_ivf`` as it was at git revision ``rev`` (read from git, run here, nothing installed)."""
    source = subprocess.run(["git", "-C", str(HERE), "show", f"{rev}:sora/itemsim.py"], capture_output=True,
                            text=True, check=True).stdout
    module = types.ModuleType(f"itemsim_{rev}")
    exec(compile(source, f"{rev}:sora/itemsim.py", "exec"), module.__dict__)  # noqa: S102 - our own file, at a commit
    return module.knn_cosine_ivf


def knn_recall(edges, queries: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each sampled item's exact top-k neighbours (``truth``, (Q, k)) that the graph ``edges`` lists."""
    src, dst, _ = edges
    listed = {int(q): set() for q in queries}
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        if s in listed:
            listed[s].add(d)
    return float(np.mean([len(listed[int(q)] & set(t.tolist())) / truth.shape[1] for q, t in zip(queries, truth,
                                                                                                  strict=True)]))


def knn_main(args) -> int:
    """The text kNN graph: old own IVF vs faiss IVF, time and recall@10, at each size in ``--knn``."""
    import torch

    from sora.model.itemsim import auto_knn_nlist, knn_cosine_ivf

    k, rows = 10, []
    old = old_knn_ivf(args.old_rev)
    for n in [int(x) for x in args.knn.split(",")]:
        items, _ = synthetic(n, 1, args.dim, topics=n // 10)  # ~10 items a topic at every size: equally hard
        queries = np.sort(np.random.default_rng(1).choice(n, min(args.queries, n), replace=False))
        unit = torch.nn.functional.normalize(torch.from_numpy(items), dim=1)
        t0 = time.perf_counter()
        sims = unit[queries] @ unit.T  # exact, for the sampled items only
        sims[torch.arange(len(queries)), torch.from_numpy(queries)] = -float("inf")
        truth = torch.topk(sims, k, dim=1).indices.numpy()
        exact_s = (time.perf_counter() - t0) * n / len(queries)
        del sims, unit
        runs = [("own k-means IVF (removed)", f"√I = {max(1, min(int(np.sqrt(n)), n))} cells, 8 probed", old, {})]
        runs += [("faiss IndexIVFFlat, inner product", f"{auto_knn_nlist(n)} cells, nprobe {p}", knn_cosine_ivf,
                  {"nprobe": p}) for p in (int(x) for x in args.knn_nprobe.split(","))]
        for name, setting, fn, kwargs in runs:
            t0 = time.perf_counter()
            edges = fn(items, k, **kwargs)
            took = time.perf_counter() - t0
            rows.append((n, name, setting, took, knn_recall(edges, queries, truth)))
            print(rows[-1], flush=True)
        rows.append((n, "exact (`knn_cosine`)", "I² products", exact_s, 1.0))
    machine = (f"{platform.machine()} {os.cpu_count()} CPU cores (shared, load ~{os.getloadavg()[0]:.1f}), Python "
               f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
               f"faiss {__import__('faiss').__version__}")
    lines = [KNN_BEGIN, "## Text kNN graph above `graph.knn_exact_max_items`: own IVF vs faiss (benchmarks/ann_scale.py)",
             "", f"- command: `python benchmarks/ann_scale.py --knn {args.knn} --dim {args.dim} --queries {args.queries} "
             f"--knn-nprobe {args.knn_nprobe} --old-rev {args.old_rev} --threads {args.threads} --out benchmarks/RESULTS.md`",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {machine}",
             f"- synthetic items × {args.dim} dims (one topic cluster per 10 items), k = 10; recall@10 against exact cosine "
             f"top-10 on {args.queries} sampled items; the exact graph's time is projected from those items' rows", "",
             "| items | kNN | setting | build s | recall@10 |", "|---|---|---|---|---|"]
    lines += [f"| {n:,} | {name} | {setting} | {'≈ ' if name.startswith('exact') else ''}{took:.1f} | {recall:.3f} |"
              for n, name, setting, took, recall in rows]
    default = inspect.signature(knn_cosine_ivf).parameters["nprobe"].default
    lines += ["", f"The graph builder uses faiss with nprobe {default} (`sora.model.itemsim.knn_cosine_ivf`'s default): each "
              "item probes the cells nearest itself, where the own inverted file probed the cells nearest its cell's "
              "centroid, so fewer probed cells find more of the exact neighbours; faiss scans a cell per query "
              "instead of one matrix product per cell, so it is slower per probed cell.", KNN_END]
    publish(lines, args.out, KNN_BEGIN, KNN_END)
    return 0


def main(argv=None) -> int:
    import torch

    from sora.model.recommender import Recommender

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads per request (default 1: "
                    "one request per core, as a serving worker runs; on a loaded machine more threads wait on each other)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--knn", help="comma-separated catalogue sizes: measure the text kNN graph instead")
    ap.add_argument("--knn-nprobe", default="8,16,24", help="faiss cells probed per item, one run each")
    ap.add_argument("--old-rev", default="46a2cff", help="a git revision that still has the own k-means IVF")
    args = ap.parse_args(argv)
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.knn:
        return knn_main(args)

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
