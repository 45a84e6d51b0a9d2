"""Two versions of Sora's service side by side: the same requests, alternating rounds, one run.

    python benchmarks/serving_ab.py --before-python OTHER_CHECKOUT/.venv/bin/python [--model DIR]
        [--requests 400] [--rounds 4] [--concurrency 1,8] [--out benchmarks/RESULTS.md]

benchmarks/serving.py compares Sora with a bare BentoML service; comparing two of its runs compares
two machine loads as much as two versions. Here ``sora serve`` runs once from ``--before-python`` (an
interpreter whose ``sora`` is the other version, e.g. a worktree of the commit before) and once from
this interpreter, and every endpoint and concurrency alternates between them round by round (the
order flips each round), with benchmarks/serving.py's load generator and request bodies.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _results import DEFAULT_DATA, default_model, publish  # benchmarks/ is on sys.path as a script

from serving import bodies, drive, free_port, median_round, wait_ready

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- serving-ab:begin -->", "<!-- serving-ab:end -->"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-python", required=True, help="python of the other version's environment")
    ap.add_argument("--before-label", default="before")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--requests", type=int, default=400, help="requests per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    model = (args.model or default_model(args.data)).resolve()
    from sora.model.recommender import Recommender

    work = bodies(Recommender.load(model), args.requests)
    pythons = {"before": args.before_python, "after": sys.executable}
    ports = {k: free_port() for k in pythons}
    with tempfile.TemporaryDirectory() as cwd:  # neither checkout on sys.path through the working directory
        procs = [subprocess.Popen([py, "-m", "sora.cli", "serve", "--model", str(model), "--port", str(ports[k])],
                                  cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                 for k, py in pythons.items()]
        rows = []
        try:
            base = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
            for b in base.values():
                wait_ready(b)
            for path, (sora_bodies, _) in work.items():  # warm both
                for b in base.values():
                    drive(b, path, sora_bodies[:100], 4)
            for c in [int(x) for x in args.concurrency.split(",")]:
                for path, (sora_bodies, _) in work.items():
                    runs = {"before": [], "after": []}
                    for r in range(args.rounds):
                        for k in ("before", "after") if r % 2 == 0 else ("after", "before"):
                            runs[k].append(drive(base[k], path, sora_bodies, c))
                    rows.append((path, c, {k: median_round(v) for k, v in runs.items()}))
                    print(path, c, {k: round(v["rps"]) for k, v in rows[-1][2].items()}, flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    lines = [MARK_BEGIN, "## Two versions of the service side by side (benchmarks/serving_ab.py)", "",
             f"- command: `python benchmarks/serving_ab.py --before-python … --before-label {args.before_label} "
             f"--model {args.model or model} --requests {args.requests} --rounds {args.rounds} "
             f"--concurrency {args.concurrency} --out benchmarks/RESULTS.md`",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()} {os.cpu_count()} "
             f"cores (shared, load ~{os.getloadavg()[0]:.1f}); before: {args.before_label}; after: this checkout; "
             f"{args.rounds} alternating rounds of {args.requests} requests each, medians", "",
             "| endpoint | concurrency | before req/s | after req/s | after / before | before p50 ms | after p50 ms | "
             "before p99 ms | after p99 ms | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for path, c, m in rows:
        b, a = m["before"], m["after"]
        lines.append(f"| {path} | {c} | {b['rps']:.0f} | {a['rps']:.0f} | **×{a['rps'] / b['rps']:.2f}** | "
                     f"{b['p50_ms']:.2f} | {a['p50_ms']:.2f} | {b['p99_ms']:.1f} | {a['p99_ms']:.1f} | "
                     f"{b['errors'] + a['errors']} |")
    lines.append(MARK_END)
    publish(lines, args.out, MARK_BEGIN, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
