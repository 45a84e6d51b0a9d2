"""Serving load benchmark: Sora's BentoML service over HTTP vs a bare BentoML top-k vs in-process calls.

    python benchmarks/serving.py [--model DIR] [--out benchmarks/RESULTS.md]

Starts `sora serve --model DIR` and the bare service (benchmarks/bare_service.py) on loopback ports,
drives them from a second process (aiohttp, bounded request counts) at several concurrency levels,
and records requests/s, p50/p95/p99 latency and errors per endpoint. The floor is the same top-k
computed in-process (``Recommender.recommend``), no HTTP. Without --model, trains one on
MovieLens-100K first (`sora train`).
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", type=Path, default=Path(".sora/bench/ml-100k"))
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,4,8,16,32")
    args = ap.parse_args(argv)
    if args.model is None:
        args.model = Path(".sora/bench/model")
        if not (args.model / "model.safetensors").exists():
            if not args.data.exists():
                subprocess.check_call([sys.executable, "-m", "sora.cli", "data", "fetch", "movielens-100k",
                                       "--dest", str(args.data)])
            subprocess.check_call([sys.executable, "-m", "sora.cli", "train", "--data", str(args.data),
                                   "--out", str(args.model)])
    from sora.recommender import Recommender

    rec = Recommender.load(args.model)
    rng = np.random.default_rng(0)
    users = [rec.user_ids[i] for i in rng.integers(0, rec.num_users, args.requests)]
    items = [rec.item_ids[i] for i in rng.integers(0, rec.num_items, args.requests)]

    # floor: the same top-k in-process
    t0 = time.perf_counter()
    per_call = []
    for u in users:
        s = time.perf_counter()
        rec.recommend(u, k=10)
        per_call.append((time.perf_counter() - s) * 1000)
    floor = {"rps": len(users) / (time.perf_counter() - t0), "p50_ms": float(np.percentile(per_call, 50)),
             "p95_ms": float(np.percentile(per_call, 95)), "p99_ms": float(np.percentile(per_call, 99))}

    sora_port, bare_port = free_port(), free_port()
    env = {**os.environ, "BARE_USERS": str(rec.num_users), "BARE_ITEMS": str(rec.num_items),
           "BARE_DIM": str(rec.item_vectors.shape[1])}
    procs = [subprocess.Popen([sys.executable, "-m", "sora.cli", "serve", "--model", str(args.model), "--port",
                               str(sora_port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "bare_service:BareTopK", "--port",
                               str(bare_port)], cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)]
    rows = []
    try:
        sora, bare = f"http://127.0.0.1:{sora_port}", f"http://127.0.0.1:{bare_port}"
        wait_ready(sora)
        wait_ready(bare)
        warm = [{"user_id": u, "k": 10} for u in users[:200]]
        drive(sora, "/recommend", warm, 4)
        drive(bare, "/recommend", [{"user_id": "1", "k": 10}] * 200, 4)
        for c in [int(x) for x in args.concurrency.split(",")]:
            body = [{"user_id": u, "k": 10} for u in users]
            rows.append({"service": "sora", "endpoint": "/recommend", **drive(sora, "/recommend", body, c)})
            bare_body = [{"user_id": str(i), "k": 10} for i in range(len(users))]
            rows.append({"service": "bare bentoml top-k", "endpoint": "/recommend",
                         **drive(bare, "/recommend", bare_body, c)})
        n = args.requests // 2
        hist = [{"item_ids": items[i:i + 5], "k": 10} for i in range(n)]
        rows.append({"service": "sora", "endpoint": "/recommend_from_history", **drive(sora, "/recommend_from_history", hist, 8)})
        rows.append({"service": "sora", "endpoint": "/similar_items",
                     **drive(sora, "/similar_items", [{"item_id": i, "k": 10} for i in items[:n]], 8)})
        rows.append({"service": "sora", "endpoint": "/score",
                     **drive(sora, "/score", [{"user_id": users[i], "item_ids": items[i:i + 20]} for i in range(n)], 8)})
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)

    sora_rec = [r for r in rows if r["service"] == "sora" and r["endpoint"] == "/recommend"]
    peak = max(sora_rec, key=lambda r: r["rps"])
    bare_at = next(r for r in rows if r["service"] != "sora" and r["concurrency"] == peak["concurrency"])
    import platform

    import psutil

    lines = [MARK_BEGIN, "## Serving load (benchmarks/serving.py)", "",
             "- command: `" + " ".join(["python benchmarks/serving.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()} "
             f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; server and load generator "
             "share the machine (loopback)",
             f"- model: {args.model} ({rec.num_users} users, {rec.num_items} items, dim {rec.item_vectors.shape[1]}); "
             "bodies: random known users, k=10", "",
             "| service | endpoint | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['service']} | {r['endpoint']} | {r['concurrency']} | {r['requests']} | {r['rps']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    lines += ["", f"In-process floor (Recommender.recommend, no HTTP, one thread): {floor['rps']:.0f} calls/s, "
              f"p50 {floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms.",
              f"Peak /recommend throughput: {peak['rps']:.0f} req/s at concurrency {peak['concurrency']} "
              f"(p99 {peak['p99_ms']:.1f} ms, {peak['errors']} errors); bare BentoML top-k at the same concurrency: "
              f"{bare_at['rps']:.0f} req/s (Sora/bare ×{peak['rps'] / bare_at['rps']:.2f}); "
              f"HTTP service / in-process floor ×{peak['rps'] / floor['rps']:.2f}.", MARK_END]
    section = "\n".join(lines)
    text = args.out.read_text() if args.out.exists() else "# Benchmark results\n\n"
    if MARK_BEGIN in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    args.out.write_text(text)
    print(section)
    print(json.dumps({"floor": floor}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
