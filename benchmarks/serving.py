"""Serving load benchmark: Sora's BentoML service over HTTP vs a bare BentoML service, endpoint by endpoint.

    python benchmarks/serving.py [--model DIR] [--out benchmarks/RESULTS.md] [--rounds 3] [--concurrency 1,8]

Starts `sora serve --model DIR` and the bare service (benchmarks/bare_service.py: plain ``@bentoml.api``
methods doing the same top-k / scoring over random tensors of the model's shapes) on loopback ports,
and drives both from a second process (aiohttp, a fixed number of requests per round). For every
endpoint and concurrency the two services alternate for ``--rounds`` rounds, so both see the same
machine load; the table gives each figure's median over the rounds (req/s, p50, p99) and the ratio
of the medians.
``/recommend`` with ``recent_item_ids`` (5 events since training) is measured against plain
``/recommend`` in the same rounds: the latency overhead of recent events. The in-process line is
``Recommender.recommend`` called directly (no HTTP). Without --model, trains one on MovieLens-100K
first (`sora train`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from _results import (  # benchmarks/ is on sys.path when run as a script
    DEFAULT_DATA,
    default_model,
    write_section,
)

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- serving:begin -->", "<!-- serving:end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(base + "/readyz", timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base} never became ready")


async def _drive(base: str, path: str, bodies: list[dict], concurrency: int) -> dict:
    import aiohttp

    latencies, errors = [], 0
    queue = list(bodies)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker():
            nonlocal errors
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                try:
                    async with session.post(base + path, json=body, timeout=aiohttp.ClientTimeout(total=30)) as r:
                        await r.read()
                        errors += r.status != 200
                except Exception:  # noqa: BLE001 - counted as an error
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests": len(bodies), "concurrency": concurrency, "rps": len(bodies) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors}


def _client(args, conn):
    conn.send(asyncio.run(_drive(*args)))


def drive(base, path, bodies, concurrency) -> dict:
    """Run the load from a second process so the client does not share the server's interpreter."""
    parent, child = mp.Pipe()
    p = mp.Process(target=_client, args=((base, path, bodies, concurrency), child))
    p.start()
    out = parent.recv()
    p.join()
    return out


def bodies(rec, n: int, seed: int = 0) -> dict[str, tuple[list[dict], list[dict]]]:
    """Per endpoint: (Sora's request bodies, the bare service's), random known ids, k=10."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, rec.num_users, n)
    items = rng.integers(0, rec.num_items, (n, 20))
    uid, iid = rec.user_ids, rec.item_ids
    return {
        "/recommend": ([{"user_id": uid[u], "k": 10} for u in users],
                       [{"user_id": str(u), "k": 10} for u in users]),
        "/recommend_from_history": ([{"item_ids": [iid[i] for i in row[:5]], "k": 10} for row in items],
                                    [{"item_ids": [str(i) for i in row[:5]], "k": 10} for row in items]),
        "/similar_items": ([{"item_id": iid[row[0]], "k": 10} for row in items],
                           [{"item_id": str(row[0]), "k": 10} for row in items]),
        "/score": ([{"user_id": uid[u], "item_ids": [iid[i] for i in row]} for u, row in zip(users, items, strict=True)],
                   [{"user_id": str(u), "item_ids": [str(i) for i in row]} for u, row in zip(users, items, strict=True)]),
    }


def recent_bodies(rec, n: int, seed: int = 1) -> list[dict]:
    """/recommend bodies with 5 distinct recent events each (items the user has not seen)."""
    rng = np.random.default_rng(seed)
    out = []
    for u in rng.integers(0, rec.num_users, n):
        seen = set(rec.seen[u].indices.tolist())
        pool = [i for i in rng.choice(rec.num_items, 40, replace=False) if i not in seen][:5]
        out.append({"user_id": rec.user_ids[u], "k": 10, "recent_item_ids": [rec.item_ids[i] for i in pool]})
    return out


def median_round(rounds: list[dict]) -> dict:
    """Each figure's median over the rounds (req/s, p50, p95, p99), errors and requests summed."""
    out = {k: float(np.median([r[k] for r in rounds])) for k in ("rps", "p50_ms", "p95_ms", "p99_ms")}
    return {**rounds[0], **out, "errors": sum(r["errors"] for r in rounds), "requests": sum(r["requests"] for r in rounds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--requests", type=int, default=1000, help="requests per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per endpoint and concurrency")
    ap.add_argument("--concurrency", default="1,8")
    args = ap.parse_args(argv)
    if args.model is None:
        args.model = default_model(args.data)
    from sora.model.recommender import Recommender

    rec = Recommender.load(args.model)
    work = bodies(rec, args.requests)
    recent = recent_bodies(rec, args.requests)

    # in-process: the library call alone, as the service makes it (precomputed rows), one thread
    import torch

    torch.set_num_threads(1)
    rec.prepare_serving(rec.config.serve.precompute_max_scores)
    per_call = []
    for body in work["/recommend"][0]:
        s = time.perf_counter()
        rec.recommend(body["user_id"], k=10)
        per_call.append((time.perf_counter() - s) * 1000)
    floor = {"rps": 1000 / np.mean(per_call), "p50_ms": float(np.percentile(per_call, 50)),
             "p99_ms": float(np.percentile(per_call, 99))}

    sora_port, bare_port = free_port(), free_port()
    env = {**os.environ, "BARE_USERS": str(rec.num_users), "BARE_ITEMS": str(rec.num_items),
           "BARE_DIM": str(rec.item_vectors.shape[1])}
    procs = [subprocess.Popen([sys.executable, "-m", "sora.cli", "serve", "--model", str(args.model), "--port",
                               str(sora_port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "bare_service:BareTopK", "--port",
                               str(bare_port)], cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)]
    rows, recent_rows = [], []
    try:
        sora, bare = f"http://127.0.0.1:{sora_port}", f"http://127.0.0.1:{bare_port}"
        wait_ready(sora)
        wait_ready(bare)
        for path, (sb, bb) in work.items():  # warm both
            drive(sora, path, sb[:200], 4)
            drive(bare, path, bb[:200], 4)
        for c in [int(x) for x in args.concurrency.split(",")]:
            for path, (sb, bb) in work.items():
                runs = {"sora": [], "bare": []}
                for _ in range(args.rounds):
                    runs["sora"].append(drive(sora, path, sb, c))
                    runs["bare"].append(drive(bare, path, bb, c))
                rows.append({"endpoint": path, "concurrency": c, "sora": median_round(runs["sora"]),
                             "bare": median_round(runs["bare"])})
                print(path, c, {k: round(v["rps"]) for k, v in rows[-1].items() if isinstance(v, dict)}, flush=True)
            runs = {"plain": [], "recent": []}
            for _ in range(args.rounds):
                runs["plain"].append(drive(sora, "/recommend", work["/recommend"][0], c))
                runs["recent"].append(drive(sora, "/recommend", recent, c))
            recent_rows.append({"concurrency": c, **{k: median_round(v) for k, v in runs.items()}})
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)

    import platform

    import psutil

    lines = [MARK_BEGIN, "## Serving load (benchmarks/serving.py)", "",
             "- command: `" + " ".join(["python benchmarks/serving.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()} "
             f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; both servers and the load "
             "generator share the machine (loopback)",
             f"- model: {args.model} ({rec.num_users} users, {rec.num_items} items, dim {rec.item_vectors.shape[1]}); "
             f"random known ids, k=10, /score 20 items, histories of 5; {args.rounds} alternating rounds of "
             f"{args.requests} requests per service, endpoint and concurrency: each figure is the median over the rounds", "",
             "| endpoint | concurrency | Sora req/s | bare req/s | Sora / bare | Sora p50 ms | Sora p99 ms | "
             "bare p50 ms | bare p99 ms | errors (Sora, bare) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, b = r["sora"], r["bare"]
        lines.append(f"| {r['endpoint']} | {r['concurrency']} | {s['rps']:.0f} | {b['rps']:.0f} | "
                     f"**×{s['rps'] / b['rps']:.2f}** | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {b['p50_ms']:.1f} | "
                     f"{b['p99_ms']:.1f} | {s['errors']}, {b['errors']} |")
    lines += ["", "Recent events (`recent_item_ids`, 5 per request) on `/recommend`, same rounds:", "",
              "| concurrency | plain req/s | with recent req/s | plain p50 ms | with recent p50 ms | overhead p50 ms | "
              "plain p99 ms | with recent p99 ms | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recent_rows:
        p, q = r["plain"], r["recent"]
        lines.append(f"| {r['concurrency']} | {p['rps']:.0f} | {q['rps']:.0f} | {p['p50_ms']:.1f} | {q['p50_ms']:.1f} | "
                     f"{q['p50_ms'] - p['p50_ms']:+.1f} | {p['p99_ms']:.1f} | {q['p99_ms']:.1f} | "
                     f"{p['errors'] + q['errors']} |")
    worst = min(rows, key=lambda r: r["sora"]["rps"] / r["bare"]["rps"])
    lines += ["", f"In-process (`Recommender.recommend` with the service's precomputed rows, one thread): "
              f"{floor['rps']:.0f} calls/s, p50 {floor['p50_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms. "
              f"Lowest Sora / bare ratio: ×{worst['sora']['rps'] / worst['bare']['rps']:.2f} "
              f"({worst['endpoint']}, concurrency {worst['concurrency']}).", MARK_END]
    section = "\n".join(lines)
    write_section(args.out, MARK_BEGIN, MARK_END, section)
    print(section)
    print(json.dumps({"floor": floor}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
