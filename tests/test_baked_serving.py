"""Serving from a baked model (k8s/components/baked-model) starts and answers while the registry is down:
the rendered container's own command and environment, run on loopback, with its MLflow unreachable."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sora.config import SoraConfig
from sora.model.text import HashEncoder
from sora.training.train import prepare, train_model
from tests.conftest import free_port, make_dataset
from tests.k8s_render import baked_overlay, render, serving_container

pytestmark = pytest.mark.slow


def _request(url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return None, ""


def test_baked_model_serves_with_the_registry_down(tmp_path):
    model = tmp_path / "model"
    ds = make_dataset(n_users=40, n_items=60)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=8", "train.max_epochs=1",
                                       "train.batch_size=128", "model.history_len=4"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    train_model(split, emb, ds.items, cfg, progress=False).recommender.save(model)

    c = serving_container(render(baked_overlay(tmp_path / "overlay")))
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert env["SORA_MODEL_URI"] == "models:/sora@champion" and env["MLFLOW_TRACKING_URI"]  # still configured…
    port = free_port()
    # …but nothing answers there: port 9 on loopback (discard) refuses, like an MLflow that is down
    env.update(SORA_MODEL_DIR=str(model), MLFLOW_TRACKING_URI="http://127.0.0.1:9",
               BENTOML_HOME=str(tmp_path / "bentoml"), HF_HOME=str(tmp_path / "hf"),
               MLFLOW_TRACKING_USERNAME="sora-serving", MLFLOW_TRACKING_PASSWORD="unused")
    command = list(c["command"])
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    assert command[0] == "bentoml"
    command[0] = str(Path(sys.executable).parent / "bentoml")
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and _request(base + "/readyz")[0] != 200:
            time.sleep(0.5)
        assert proc.poll() is None, "the service exited"
        assert _request(base + "/readyz")[0] == 200, "not ready with the registry down"
        status, body = _request(base + "/recommend", {"user_id": "u1", "k": 3})
        assert status == 200 and len(json.loads(body)["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
