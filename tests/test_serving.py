"""A real `bentoml serve` process on a loopback port, answered over HTTP (slow tier)."""

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sora import registry
from sora.config import SoraConfig
from sora.model.text import HashEncoder
from sora.training.train import prepare, train_model
from tests.conftest import free_port, make_dataset

pytestmark = pytest.mark.slow


def _post(base, path, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except (OSError, http.client.HTTPException):  # not up yet, or not our server
        return None, ""


def _serve(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    for _ in range(3):  # a free port can be taken by another process before the server binds it
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "sora.cli", "serve", "--port", str(port), *args],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _get(base, "/livez")[0] != 200:
            time.sleep(0.5)
        if proc.poll() is None:
            return proc, base
    return proc, base


def _wait_ready(base, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _get(base, "/readyz")[0] == 200:
            return True
        time.sleep(0.5)
    return False


def _model(tmp: Path, name: str, seed: int, dim: int = 16):
    ds = make_dataset(n_users=60, n_items=120)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", f"model.dim={dim}", "train.max_epochs=3",
                                       "train.batch_size=128", "model.history_len=4", f"train.seed={seed}"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    train_model(split, emb, ds.items, cfg, progress=False).recommender.save(tmp / name)
    return tmp / name


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    model = _model(tmp, "m", seed=1)
    proc, base = _serve(["--model", str(model)])
    assert _wait_ready(base), "service never became ready"
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def test_every_endpoint_answers(served):
    status, body = _post(served, "/recommend", {"user_id": "u1", "k": 5})
    assert status == 200 and len(body["items"]) == 5 and body["fallback"] is False
    assert set(body["items"][0]) == {"item_id", "title", "score"} and body["model"]["version"].startswith("sha256:")
    status, body = _post(served, "/recommend_from_history", {"item_ids": ["i1", "i2", "nope"], "k": 3})
    assert status == 200 and len(body["items"]) == 3 and body["ignored_item_ids"] == ["nope"]
    status, body = _post(served, "/similar_items", {"item_id": "i0", "k": 4})
    assert status == 200 and len(body["items"]) == 4 and "i0" not in [i["item_id"] for i in body["items"]]
    status, body = _post(served, "/score", {"user_id": "u1", "item_ids": ["i3", "i4"]})
    assert status == 200 and [i["item_id"] for i in body["items"]] == ["i3", "i4"]
    status, body = _post(served, "/recommend", {"user_id": "nobody", "k": 3, "fallback": True})
    assert status == 200 and body["fallback"] is True and len(body["items"]) == 3


@pytest.mark.parametrize("path,body,raw,code,field", [
    ("/recommend", {"user_id": "nobody"}, None, 404, "user_id"),
    ("/recommend", {"user_id": "u1", "k": 0}, None, 400, "k"),
    ("/recommend", {"user_id": "u1", "k": 1001}, None, 400, "k"),
    ("/recommend", {"user_id": "u1", "k": "many"}, None, 400, "k"),
    ("/recommend", None, b'{"user_id": "u1",', 400, "json"),
    ("/recommend", {"k": 3}, None, 400, "user_id"),
    ("/recommend_from_history", {"item_ids": ["nope"]}, None, 404, "item_ids"),
    ("/recommend_from_history", {"item_ids": "i1"}, None, 400, "item_ids"),
    ("/similar_items", {"item_id": "nope"}, None, 404, "item_id"),
    ("/score", {"user_id": "u1", "item_ids": ["i1", "nope"]}, None, 404, "item_ids"),
    ("/score", {"user_id": "nobody", "item_ids": ["i1"]}, None, 404, "user_id"),
])
def test_bad_input_gets_a_clear_4xx(served, path, body, raw, code, field):
    status, text = _post(served, path, body, raw)
    assert status == code, text
    assert field in str(text).lower()


def test_metrics_and_probes(served):
    _post(served, "/recommend", {"user_id": "nobody", "k": 2, "fallback": True})
    status, text = _get(served, "/metrics")
    assert status == 200 and "sora_fallback_responses_total" in text and "sora_model_version" in text
    assert _get(served, "/livez")[0] == 200 and _get(served, "/readyz")[0] == 200


def test_not_ready_until_loaded_then_hot_swap_without_errors(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    m1, m2 = _model(tmp_path, "v1", seed=1), _model(tmp_path, "v2", seed=2, dim=8)
    report = {"valid": {}, "test": {}}
    v1 = registry.log_and_register(uri, "sora", m1, report).version
    proc, base = _serve(["--model-uri", "models:/sora@champion", "--tracking-uri", uri, "--poll-interval", "1"])
    try:
        assert _get(base, "/livez")[0] == 200
        assert _get(base, "/readyz")[0] == 503  # no champion yet: alive, not ready
        registry.promote(uri, "sora", v1)
        assert _wait_ready(base)
        v2 = registry.log_and_register(uri, "sora", m2, report).version
        results, stop = [], threading.Event()

        def stream():
            while not stop.is_set():
                results.append(_post(base, "/recommend", {"user_id": "u2", "k": 5}))

        threads = [threading.Thread(target=stream) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        registry.promote(uri, "sora", v2)
        deadline = time.time() + 60
        while time.time() < deadline and not any(b["model"]["version"] == v2 for s, b in results[-20:] if s == 200):
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
        assert results and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
        versions = {body["model"]["version"] for _, body in results}
        assert versions == {v1, v2}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
