"""Faults a cluster has, measured (issue 33): a long registry outage under load, and the chaos test tier.

    python benchmarks/chaos.py [--outage 120] [--connections 8] [--poll 5] [--no-tier] [--out benchmarks/RESULTS.md]

1. Registry outage under load: moto's S3 server and a real ``mlflow server`` (SQLite backend, artifacts
   in the bucket) on loopback, a model registered twice (v1 champion, v2 challenger) and ``sora serve
   --model-uri models:/sora@champion`` answering ``--connections`` keep-alive clients. MLflow is killed
   for ``--outage`` seconds; meanwhile ``champion`` moves to v2 in MLflow's database. Counted: requests,
   requests lost (any answer but 200, any dropped connection), ``/readyz`` answers other than 200,
   latency before / during / after, and the time from MLflow's return to the first answer from v2.
2. The chaos tier (``tests/test_chaos.py``, ``slow``): S3 and MLflow stopped mid-step during ``embed``,
   ``register`` and ``serve``; the time each fault cost and the counts it asserts to be 0 (its
   ``SORA_CHAOS_REPORT``).

Data: the tests' synthetic catalogue (200 users, 300 items), a hash text encoder, one epoch: the model's
quality is not the point, the service's behaviour is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # the tests' fault servers (tests/faults.py) and synthetic data

from _results import write_section  # noqa: E402

MARK_BEGIN, MARK_END = "<!-- chaos:begin -->", "<!-- chaos:end -->"


class Load:
    """``n`` keep-alive clients POSTing /recommend; answers, failures and latencies by phase."""

    def __init__(self, port: int, n: int, users: int):
        self.port, self.phase, self.lock, self.stop = port, "before", threading.Lock(), threading.Event()
        self.ok: Counter = Counter()
        self.versions: Counter = Counter()
        self.lost: list[str] = []
        self.latency: dict[str, list[float]] = {}
        self.threads = [threading.Thread(target=self._client, args=(i, users), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _client(self, i: int, users: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        n = 0
        while not self.stop.is_set():
            body = json.dumps({"user_id": f"u{(i * 7919 + n) % users}", "k": 10}).encode()
            n += 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/recommend", body, {"content-type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                took = time.perf_counter() - start
                with self.lock:
                    if resp.status == 200:
                        self.ok[self.phase] += 1
                        self.versions[json.loads(payload)["model"]["version"]] += 1
                        self.latency.setdefault(self.phase, []).append(took)
                    else:
                        self.lost.append(f"{self.phase}: {resp.status}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.lost.append(f"{self.phase}: {type(exc).__name__}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def registry_outage(outage_s: float, connections: int, poll_s: float, work: Path) -> dict:
    from sora import registry, stages
    from sora.config import SoraConfig
    from sora.model.text import HashEncoder
    from sora.training.train import train_model
    from tests.conftest import make_dataset
    from tests.faults import MlflowServer, MotoStore

    store = MotoStore("sora-chaos-bench")
    os.environ.update(store.env)
    server = MlflowServer(work, f"s3://{store.bucket}/mlflow", env={**store.env, "AWS_MAX_ATTEMPTS": "2"})
    users = 200
    data = work / "data"
    make_dataset(n_users=users, n_items=300).save(data, fmt="csv")
    versions = []
    for seed in (1, 2):
        cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=1",
                                           "train.batch_size=256", "model.history_len=4", f"train.seed={seed}"])
        prepared = stages.prepare(str(data), cfg, str(work / f"prepared-{seed}"))
        stages.embed(prepared, cfg, str(work / f"emb-{seed}.parquet"), encoder=HashEncoder(16), progress=False)
        emb = stages.load_embeddings(str(work / f"emb-{seed}.parquet"))
        train_model(prepared.split, emb, prepared.items, cfg, prepared.user_edges,
                    progress=False).recommender.save(work / f"model-{seed}")
        versions.append(registry.log_and_register(server.uri, "sora", work / f"model-{seed}",
                                                  {"valid": {}, "test": {}}).version)
    v1, v2 = versions
    registry.promote(server.uri, "sora", v1)

    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    serve = subprocess.Popen([sys.executable, "-m", "sora.cli", "serve", "--model-uri", "models:/sora@champion",
                              "--tracking-uri", server.uri, "--port", str(port), "--poll-interval", str(poll_s)],
                             env=env, stdout=open(work / "serve.log", "wb"), stderr=subprocess.STDOUT)
    readyz: Counter = Counter()
    health: list[dict] = []
    probing = threading.Event()

    def probe():
        while not probing.is_set():
            try:
                readyz[_get(port, "/readyz")[0]] += 1
                health.append(json.loads(_get(port, "/healthz")[1]))
            except OSError as exc:
                readyz[type(exc).__name__] += 1
            time.sleep(0.5)

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if _get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        load = Load(port, connections, users)
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        time.sleep(10)
        load.phase = "outage"
        down = time.monotonic()
        server.stop()
        registry.promote(f"sqlite:///{server.db}", "sora", v2)  # the champion moves while MLflow is away
        time.sleep(max(0.0, outage_s - (time.monotonic() - down)))
        degraded = [h for h in health if h.get("status") == "degraded"]
        load.phase = "after"
        restart = time.monotonic()
        server.start()
        back = time.monotonic()
        while load.versions[v2] == 0 and time.monotonic() - back < 300:
            time.sleep(0.1)
        picked = time.monotonic() - back
        time.sleep(10)
        load.finish()
        probing.set()
        prober.join(timeout=60)
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        server.stop()
        store.stop()

    def ms(phase, q):
        values = load.latency.get(phase, [])
        return round(float(np.percentile(values, q)) * 1000, 1) if values else None

    return {"connections": connections, "outage_s": round(restart - down, 1), "poll_s": poll_s,
            "mlflow_restart_s": round(back - restart, 1), "requests": dict(load.ok), "lost": len(load.lost),
            "lost_by_phase": dict(Counter(x.split(":")[0] for x in load.lost)),
            "lost_examples": load.lost[:5], "readyz": {str(k): v for k, v in readyz.items()},
            "latency_ms": {p: {"p50": ms(p, 50), "p99": ms(p, 99)} for p in ("before", "outage", "after")},
            "degraded_seen": bool(degraded),
            "degraded_example": degraded[-1] if degraded else None,
            "v2_first_answer_s_after_mlflow_back": round(picked, 1), "versions": dict(load.versions),
            "final_health": health[-1] if health else None}


def chaos_tier(work: Path) -> tuple[dict, float, int]:
    report = work / "tier.json"
    start = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", str(ROOT / "tests" / "test_chaos.py")],
                           cwd=ROOT, env={**os.environ, "SORA_CHAOS_REPORT": str(report)})
    took = time.monotonic() - start
    return (json.loads(report.read_text()) if report.exists() else {}), took, code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outage", type=float, default=120.0, help="seconds MLflow is down (default 120)")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--poll", type=float, default=5.0, help="the service's poll interval (default 5 s)")
    p.add_argument("--no-tier", action="store_true", help="skip the chaos test tier")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="sora-chaos-") as tmp:
        (Path(tmp) / "outage").mkdir()
        outage = registry_outage(args.outage, args.connections, args.poll, Path(tmp) / "outage")
        tier, tier_s, tier_code = ({}, 0.0, None) if args.no_tier else chaos_tier(Path(tmp))
    print(json.dumps({"outage": outage, "tier": tier}, indent=1, default=str))

    lat = outage["latency_ms"]
    reg = (outage["degraded_example"] or {}).get("registry", {})
    lines = [MARK_BEGIN, "## Faults a cluster has: registry and object-store outages (benchmarks/chaos.py)", "",
             f"`python benchmarks/chaos.py --outage {args.outage:g} --connections {args.connections} "
             f"--poll {args.poll:g}` on {platform.node() or 'this machine'} ({os.cpu_count()} CPU cores, "
             f"{platform.machine()}, Python {platform.python_version()}), {when}. Real processes on loopback: "
             "`mlflow server` (SQLite backend, artifacts in the bucket), moto's S3 server, `sora serve`.", "",
             f"### MLflow down {outage['outage_s']:g} s under {args.connections} connections, champion moved meanwhile",
             "", "| phase | answered (200) | lost | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for phase in ("before", "outage", "after"):
        lines.append(f"| {phase} | {outage['requests'].get(phase, 0)} | {outage['lost_by_phase'].get(phase, 0)} | "
                     f"{lat[phase]['p50']} | {lat[phase]['p99']} |")
    lines += ["", f"- requests lost: **{outage['lost']}**; `/readyz` answers: {outage['readyz']}",
              f"- `/healthz` during the outage: status `degraded`, registry `{reg.get('status')}`, last successful "
              f"poll {reg.get('last_successful_poll')}, {reg.get('failed_polls')} failed polls at that moment",
              f"- MLflow back (its restart took {outage['mlflow_restart_s']:g} s): first answer from the champion "
              f"promoted during the outage {outage['v2_first_answer_s_after_mlflow_back']:g} s later "
              f"(poll interval {args.poll:g} s); answers by version {outage['versions']}", ""]
    if tier:
        lines += [f"### Chaos test tier (`pytest tests/test_chaos.py`, {tier_s:.0f} s wall, exit {tier_code})", "",
                  "| fault | time the fault cost: failing step's exit after the fault (s) | re-run (s) | "
                  "lost | damaged |", "|---|---|---|---|---|"]
        for name, r in tier.items():
            cost = r.get("s_from_fault_to_exit", r.get("s_from_store_back_to_swap", ""))
            lost = r.get("requests_lost", r.get("versions_without_artifacts", 0))
            extra = (f" (outage {r['outage_s']} s, {r['requests']} requests; swap {cost} s after the store returned)"
                     if "requests" in r else "")
            lines.append(f"| {name}{extra} | {cost if 'requests' not in r else '-'} | {r.get('rerun_s', '-')} | "
                         f"{lost} | {r.get('artifacts_damaged', 0)} |")
    lines.append(MARK_END)
    write_section(args.out, MARK_BEGIN, MARK_END, "\n".join(lines))
    print(f"wrote {args.out}")
    return 0 if outage["lost"] == 0 and (not tier or tier_code == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
