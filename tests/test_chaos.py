"""Chaos tier (slow): the object store and MLflow stopped and restarted during embed, train, register and serve.

Real processes: ``mlflow server`` (SQLite backend, artifacts proxied into the bucket), moto's S3 server
(:mod:`tests.faults`), and ``sora embed`` / ``sora train`` / ``sora registry register`` / ``sora serve`` as
subprocesses. (A kill -9 of ``sora train`` mid-epoch is in ``tests/test_checkpoint.py``.)

A fault lands at a chosen point of a step: a test-only ``sitecustomize`` (the *gate*) pauses the step's
process at the N-th call of a named function, the test stops the server for real, then lets the step go on
against it. So each fault hits mid-step on any machine, and no assertion depends on timing.

Counted and asserted zero: requests lost (an answer other than 200, or a dropped connection, while serving)
and artifacts damaged (a half-written object, a directory left marked incomplete, a staging prefix at a
target, a registered version whose artifacts do not load). ``SORA_CHAOS_REPORT=FILE`` writes the counts
and the time each fault cost as JSON (``benchmarks/chaos.py`` reads it).

Over 400 lines on purpose: every fault scenario shares the same real servers and fixtures.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from sora import registry, stages
from sora.config import SoraConfig
from sora.data import storage
from sora.model.text import HashEncoder
from tests.conftest import make_dataset
from tests.faults import MlflowServer, MotoStore
from tests.test_serving_faults import Server

pytestmark = pytest.mark.slow

BUCKET = "sora-chaos"
SETS = ["text.model=hash:8", "model.dim=8", "train.max_epochs=1", "train.batch_size=64", "model.history_len=3",
        "graph.item_knn_k=2"]
#: what every step gets: short MLflow timeouts and retries, botocore's standard retry variables for S3
STEP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard",
            "SORA_S3_CONNECT_TIMEOUT_S": "2", "SORA_S3_READ_TIMEOUT_S": "20", "HF_HUB_OFFLINE": "1"}
REPORT: dict[str, dict] = {}

GATE = '''
import functools, importlib.abc, importlib.util, os, pathlib, sys, time

_spec = os.environ.get("SORA_CHAOS_GATE")  # "module:Qualified.name:N"
if _spec:
    _module, _qualname, _n = _spec.split(":")
    _dir = pathlib.Path(os.environ["SORA_CHAOS_DIR"])
    _calls = [0]

    def _wrap(fn):
        @functools.wraps(fn)
        def gated(*args, **kwargs):
            _calls[0] += 1
            if _calls[0] == int(_n):
                (_dir / "hit").write_text(str(os.getpid()))
                deadline = time.monotonic() + 600
                while not (_dir / "go").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            return fn(*args, **kwargs)
        return gated

    def _patch(module):
        owner, parts = module, _qualname.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part)
        setattr(owner, parts[-1], _wrap(getattr(owner, parts[-1])))

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != _module:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            real = spec.loader.exec_module

            def exec_module(module):
                real(module)
                _patch(module)
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
'''


class _Environ:
    """Set variables in this process for a module's tests (in-process storage and registry calls)."""

    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {k: os.environ.get(k) for k in values}

    def __enter__(self):
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def store():
    s = MotoStore(BUCKET)
    with _Environ(s.env):
        yield s
    s.stop()


@pytest.fixture(scope="module")
def mlflow_server(store, tmp_path_factory):
    # the server's own S3 client: botocore's standard variables bound its retries too
    server = MlflowServer(tmp_path_factory.mktemp("chaos-mlflow"), f"s3://{BUCKET}/mlflow",
                          env={**store.env, "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(store, tmp_path_factory):
    """Data in the bucket, two trained models (seeds 1, 2) and the gate's ``sitecustomize``."""
    from sora.training.train import train_model

    root = tmp_path_factory.mktemp("chaos")
    data = root / "data"
    make_dataset(n_users=30, n_items=40).save(data, fmt="csv")
    data_uri = f"s3://{BUCKET}/data/tiny"
    storage.put_dir(data, data_uri)
    models = []
    for seed in (1, 2):
        cfg = SoraConfig().with_overrides([*SETS, f"train.seed={seed}"])
        prepared = stages.prepare(str(data), cfg, str(root / f"prepared-{seed}"))
        stages.embed(prepared, cfg, str(root / f"emb-{seed}.parquet"), encoder=HashEncoder(8), progress=False)
        emb = stages.load_embeddings(str(root / f"emb-{seed}.parquet"))
        rec = train_model(prepared.split, emb, prepared.items, cfg, prepared.user_edges, progress=False).recommender
        rec.save(root / f"model-{seed}")
        models.append(root / f"model-{seed}")
    shim = root / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(GATE)
    return {"root": root, "data_uri": data_uri, "models": models, "shim": shim}


def _step(world, argv, env, tmp: Path, gate: str | None = None, fault=None) -> tuple[int, str, str, float | None]:
    """Run ``sora ARGV``; with ``gate``, stop at that call, run ``fault()``, go on. (code, stdout, stderr, s after fault)."""
    tmp.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, **STEP_ENV, **env,
            "PYTHONPATH": os.pathsep.join([str(world["shim"]), os.environ.get("PYTHONPATH", "")])}
    if gate:
        full.update(SORA_CHAOS_GATE=gate, SORA_CHAOS_DIR=str(tmp))
    out, err = tmp / "stdout", tmp / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "sora.cli", *argv], stdout=o, stderr=e, env=full, cwd=tmp)
        faulted = None
        if gate:
            deadline = time.monotonic() + 600
            while not (tmp / "hit").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (tmp / "hit").exists(), f"the step never reached {gate}:\n{err.read_text()[-3000:]}"
            fault()
            faulted = time.monotonic()
            (tmp / "go").write_text("")
        code = proc.wait(timeout=600)
    return code, out.read_text(), err.read_text(), (time.monotonic() - faulted) if faulted else None


def _the_error_line(err: str) -> str:
    """A failed step says why in exactly one ``sora:`` line, without a traceback."""
    lines = [line for line in err.splitlines() if line.startswith("sora:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def _damaged_keys(store: MotoStore) -> list[str]:
    return [k for k in store.keys() if k.endswith(storage.INCOMPLETE) or "/steps/" in k and ".tmp-" in k]


# ------------------------------------------------------------------ embed: the store goes away mid-write

def test_embed_through_a_store_outage(world, store, tmp_path):
    out = f"s3://{BUCKET}/steps/embed/embeddings.parquet"
    argv = ["embed", "--data", world["data_uri"], "--out", out, "--cache", f"s3://{BUCKET}/cache",
            *[a for s in SETS for a in ("--set", s)]]
    # the 2nd object write is the output, after the cache: the store stops just before it
    code, _, err, cost = _step(world, argv, store.env, tmp_path / "1", "sora.data.storage:write_bytes:2", store.stop)
    line = _the_error_line(err)
    assert code == 1 and line.startswith(f"sora: error: cannot write {out} (endpoint {store.endpoint}"), line
    store.start()
    assert store.keys("steps/embed/") == []  # nothing half-written at the output
    assert len(store.keys("cache/")) == 1  # the cache written before the fault is whole and kept

    started = time.monotonic()
    code, text, err, _ = _step(world, argv, store.env, tmp_path / "2")
    rerun_s = time.monotonic() - started
    assert code == 0, err[-3000:]
    assert "0 encoded" in text and "40 from cache" in text  # the re-run redoes nothing
    emb = stages.load_embeddings(out)
    assert len(emb.item_ids) == 40 and emb.vectors.shape == (40, 8)
    assert _damaged_keys(store) == []
    REPORT["embed: S3 stopped before the output write"] = {
        "s_from_fault_to_exit": round(cost, 1),
        "rerun_s": round(rerun_s, 1), "artifacts_damaged": 0}


# ------------------------------------------------------------------ train: the store goes away mid-run

def test_train_through_a_store_outage_resumes_from_its_checkpoint(world, store, tmp_path):
    """``sora train --out s3://…``: the store stops before the 3rd epoch's checkpoint; the step fails in one
    line with no model at ``--out``; once the store is back the same command resumes from epoch 2."""
    out = f"s3://{BUCKET}/steps/train/model"
    sets = [*SETS, "train.max_epochs=4", "tune.grid=[]", "train.temperature=1.0", "train.warmup_epochs=1",
            "train.min_epochs=4"]
    argv = ["train", "--data", world["data_uri"], "--out", out, *[a for s in sets for a in ("--set", s)]]
    code, _, err, cost = _step(world, argv, store.env, tmp_path / "1", "sora.training.checkpoint:Checkpointer.save:3",
                               store.stop)
    line = _the_error_line(err)
    assert code == 1 and "steps/train/model.checkpoint/trial-1-epoch-00003.pt" in line and store.endpoint in line, line
    store.start()
    assert store.keys("steps/train/model/") == []  # a killed run leaves no model at --out
    assert store.keys("steps/train/model.checkpoint/") == ["steps/train/model.checkpoint/trial-1-epoch-00002.pt"]

    started = time.monotonic()
    code, _, err, _ = _step(world, argv, store.env, tmp_path / "2")
    rerun_s = time.monotonic() - started
    assert code == 0, err[-3000:]
    assert "resumed from epoch 2" in err
    rec = stages.load_model(out)
    assert rec.meta["epochs_run"] == 4 and rec.num_items == 40
    assert store.keys("steps/train/model.checkpoint/") == []  # removed once the model is written
    assert _damaged_keys(store) == []
    REPORT["train: S3 stopped before the 3rd epoch's checkpoint"] = {
        "s_from_fault_to_exit": round(cost, 1), "rerun_s": round(rerun_s, 1), "epochs_redone": 0,
        "artifacts_damaged": 0}


# ------------------------------------------------------------------ register: MLflow, then the store, go away

def _versions(uri: str, name: str) -> list:
    import mlflow

    return mlflow.MlflowClient(uri, registry_uri=uri).search_model_versions(f"name='{name}'")


def _register_argv(world, server, model, name):
    return ["registry", "register", "--model", str(model), "--data", world["data_uri"], "--tracking-uri",
            server.uri, "--model-name", name]


#: the 12th artifact file uploaded: the reports are in, the pyfunc's files are half uploaded
MID_UPLOAD = "mlflow.store.artifact.http_artifact_repo:HttpArtifactRepository.log_artifact:12"


@pytest.mark.parametrize("what", ["mlflow", "s3"])
def test_register_through_an_outage_mid_upload(world, store, mlflow_server, tmp_path, what):
    name = f"sora-{what}"
    argv = _register_argv(world, mlflow_server, world["models"][0], name)
    fault = mlflow_server.stop if what == "mlflow" else store.stop
    code, _, err, cost = _step(world, argv, store.env, tmp_path / "1", MID_UPLOAD, fault)
    line = _the_error_line(err)
    assert code == 1 and line.startswith(f"sora: error: cannot reach the registry at {mlflow_server.uri}"), line
    if what == "mlflow":
        mlflow_server.start()
    else:
        store.start()
    assert _versions(mlflow_server.uri, name) == []  # no version without its artifacts

    started = time.monotonic()
    code, text, err, _ = _step(world, argv, store.env, tmp_path / "2")
    rerun_s = time.monotonic() - started
    assert code == 0 and f"registered {name} v1 as challenger" in text, err[-3000:]
    (mv,) = _versions(mlflow_server.uri, name)  # one version, created with its content hash
    assert mv.tags[registry.HASH_TAG]
    rec = registry.load_version(mlflow_server.uri, f"models:/{name}/1")  # whole artifacts behind the version
    assert rec.num_items == 40
    REPORT[f"register: {'MLflow killed' if what == 'mlflow' else 'S3 stopped'} mid-upload"] = {
        "s_from_fault_to_exit": round(cost, 1), "rerun_s": round(rerun_s, 1),
        "versions_without_artifacts": 0, "artifacts_damaged": 0}


# ------------------------------------------------------------------ serve: both go away under 64 connections

class _Load:
    """``n`` clients, each on its own keep-alive connection, POSTing /recommend until stopped."""

    def __init__(self, port: int, n: int):
        self.port, self.stop, self.lock = port, threading.Event(), threading.Lock()
        self.versions: Counter = Counter()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _client(self, i: int) -> None:
        body = json.dumps({"user_id": f"u{i % 30}", "k": 5}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            try:
                conn.request("POST", "/recommend", body, {"content-type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                with self.lock:
                    if resp.status == 200:
                        self.versions[json.loads(payload)["model"]["version"]] += 1
                    else:
                        self.errors.append(f"{resp.status} {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.errors.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()

    def total(self) -> int:
        with self.lock:
            return sum(self.versions.values()) + len(self.errors)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_serve_through_registry_and_store_outages_with_64_connections(world, store, mlflow_server, tmp_path):
    uri = mlflow_server.uri
    v1 = registry.log_and_register(uri, "sora", world["models"][0], {"valid": {}, "test": {}}).version
    v2 = registry.log_and_register(uri, "sora", world["models"][1], {"valid": {}, "test": {}}).version
    registry.promote(uri, "sora", v1)
    env = {**store.env, **STEP_ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    server = Server(["--model-uri", "models:/sora@champion", "--tracking-uri", uri, "--poll-interval", "1"],
                    tmp_path / "serve.log", env=env)
    probes: Counter = Counter()
    health: list[dict] = []
    stop_probe = threading.Event()

    def probe():
        while not stop_probe.is_set():
            try:
                ready = server.request("GET", "/readyz", timeout=30)[0]
                status, body = server.request("GET", "/healthz", timeout=30)
                probes[f"readyz {ready}"] += 1
                health.append(json.loads(body))
            except OSError as exc:
                probes[f"probe {type(exc).__name__}"] += 1
            time.sleep(0.2)

    try:
        assert server.wait(timeout=180), (tmp_path / "serve.log").read_text()[-3000:]
        load = _Load(server.port, 64)
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        _wait_for(lambda: load.total() >= 200 and health, 120, "answers before the outage")
        assert health[-1]["registry"]["status"] == "ok"

        down_at = time.time()
        mlflow_server.stop()
        store.stop()
        degraded = _wait_for(lambda: next((h for h in reversed(health) if h.get("status") == "degraded"), None),
                             120, "/healthz to report the registry degraded")
        reg = degraded["registry"]
        assert reg["status"] == "degraded" and _when(reg["last_successful_poll"]) <= down_at
        assert "cannot reach the registry" in reg["error"] and degraded["model"]["version"] == v1
        registry.promote(f"sqlite:///{mlflow_server.db}", "sora", v2)  # promoted while the server is away
        _wait_for(lambda: health[-1]["registry"]["failed_polls"] >= 3, 120, "three failed polls")

        mlflow_server.start()  # the registry is back, its artifact store is not
        back_at = time.time()
        _wait_for(lambda: (health[-1]["registry"]["error"] or "").startswith(f"could not load version {v2}"), 180,
                  "the new champion's download to fail while the store is down")
        assert health[-1]["model"]["version"] == v1 and health[-1]["status"] == "degraded"
        store.start()
        store_back_at = time.time()
        _wait_for(lambda: load.versions[v2] >= 50, 180, f"answers from v{v2}")
        swapped_after = time.time() - store_back_at
        n_before = load.total()
        _wait_for(lambda: load.total() >= n_before + 200, 120, "answers after the swap")
        load.finish()
        stop_probe.set()
        prober.join(timeout=60)
    finally:
        server.stop()
    assert load.errors == [], load.errors[:5]  # 0 requests lost through both outages and the hot swap
    assert set(load.versions) == {v1, v2}
    assert set(probes) == {"readyz 200"}, probes  # ready all along
    final = health[-1]
    assert final["status"] == "ok" and final["registry"]["status"] == "ok" and final["model"]["version"] == v2
    for version in (v1, v2):  # nothing damaged: every version still loads whole
        assert registry.load_version(uri, f"models:/sora/{version}").num_items == 40
    assert _damaged_keys(store) == []
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    REPORT["serve: MLflow and S3 down, champion moved meanwhile, 64 connections"] = {
        "requests": sum(load.versions.values()), "requests_lost": len(load.errors),
        "readyz_not_200": sum(v for k, v in probes.items() if k != "readyz 200"),
        "outage_s": round(back_at - down_at, 1), "s_from_store_back_to_swap": round(swapped_after, 1),
        "artifacts_damaged": 0}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if REPORT:
        print("\nchaos:", json.dumps(REPORT, indent=1))
        if os.environ.get("SORA_CHAOS_REPORT"):
            Path(os.environ["SORA_CHAOS_REPORT"]).write_text(json.dumps(REPORT, indent=1))
