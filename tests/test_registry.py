"""Registry against a real `mlflow server` on loopback (SQLite backend) and the promotion rules."""

import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from sora import registry
from sora.config import SoraConfig
from sora.evaluation.evaluate import evaluate_model
from sora.evaluation.promotion import decide
from sora.model.recommender import Recommender
from sora.model.text import HashEncoder
from sora.stages import model_hash
from sora.training.train import prepare, train_model
from tests.conftest import free_port, make_dataset


def test_decide_margin_and_guards():
    ch = {"ndcg@10": 0.30, "recall@20": 0.40, "coverage@20": 0.30}
    champ = {"ndcg@10": 0.28, "recall@20": 0.40, "coverage@20": 0.30}
    assert decide(ch, champ, 0.0, "champion", "2", "1").promote
    assert not decide(ch, champ, 0.10, "champion", "2", "1").promote  # 0.30 < 0.28 * 1.1
    assert not decide(champ, champ, 0.0, "champion", "2", "1").promote  # a tie keeps the champion
    worse_cov = {**ch, "coverage@20": 0.20}
    d = decide(worse_cov, champ, 0.05, "champion", "2", "1")
    assert not d.promote and "coverage@20" in d.reason


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def _model(tmp: Path, epochs: int, dim: int, name: str):
    ds = make_dataset(n_users=60, n_items=120)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", f"model.dim={dim}", f"train.max_epochs={epochs}",
                                       "train.batch_size=128", "model.history_len=4", "train.patience=20"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    rec.save(tmp / name)
    report = evaluate_model(rec, split, cfg, ("mostpop",))
    report["model_hash"] = model_hash(str(tmp / name))
    return split, tmp / name, report


@pytest.mark.slow
def test_register_compare_promote_rollback_on_a_real_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    uri = registry.resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": mlflow_server})
    assert uri == mlflow_server
    split, good_dir, good_report = _model(tmp_path, 8, 16, "good")
    _, bad_dir, bad_report = _model(tmp_path, 1, 2, "bad")
    assert good_report["test"]["ndcg@10"] > bad_report["test"]["ndcg@10"]

    v1 = registry.log_and_register(uri, "sora-test", good_dir, good_report).version
    d1 = registry.compare(uri, "sora-test", v1, Recommender.load(good_dir), split, 0.0)
    assert d1.promote and d1.reference == "mostpop"
    registry.promote(uri, "sora-test", v1)

    # a deliberately worse challenger is not promoted
    v2 = registry.log_and_register(uri, "sora-test", bad_dir, bad_report).version
    d2 = registry.compare(uri, "sora-test", v2, registry.load_version(uri, f"models:/sora-test/{v2}"), split, 0.0)
    assert not d2.promote and d2.champion_version == v1
    client = mlflow.MlflowClient(uri)
    assert str(client.get_model_version_by_alias("sora-test", "champion").version) == v1
    tags = client.get_model_version("sora-test", v2).tags
    assert tags["promotion.decision"] == "keep champion" and "does not beat" in tags["promotion.reason"]

    # registering the same model again (a cached train step) reuses its version
    again = registry.log_and_register(uri, "sora-test", bad_dir, bad_report)
    assert again.version == v2 and again.reused
    assert client.get_model_version("sora-test", v2).tags["sora.build.tree"] in ("clean", "dirty", "unversioned")

    # the pyfunc loads in a fresh process that has nothing of the project on its path (code is logged),
    # takes k as a param and answers one row per input row; unknown users get the flagged fallback
    code = (
        "import sys, json\n"
        f"sys.path[:] = [p for p in sys.path if p] + [{sysconfig.get_paths()['purelib']!r}]  # no .pth files\n"
        "import importlib.util; assert importlib.util.find_spec('sora') is None, 'sora importable before load'\n"
        "import mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/sora-test@challenger')\n"
        "out = m.predict(pd.DataFrame({'user_id': ['u3', 'nobody']}), params={'k': 5})\n"
        "print(json.dumps({'cols': list(out.columns), 'n': len(out), 'lens': [len(x) for x in out['item_ids']],"
        " 'fallback': [bool(x) for x in out['fallback']]}))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = uri
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert result == {"cols": ["user_id", "item_ids", "scores", "fallback"], "n": 2, "lens": [5, 5],
                      "fallback": [False, True]}
    reqs = Path(mlflow.artifacts.download_artifacts("models:/sora-test@challenger", dst_path=str(tmp_path / "dl")))
    requirements = (reqs / "requirements.txt").read_text()
    assert "torch==" in requirements and not any(p in requirements for p in ("dgl", "kfp", "bentoml",
                                                                              "great-expectations", "sora=="))

    # promoting by hand, then rolling back, returns to the version that held champion before
    registry.promote(uri, "sora-test", v2)
    assert registry.rollback(uri, "sora-test") == (v2, v1)
    assert str(client.get_model_version_by_alias("sora-test", "champion").version) == v1
    rows = registry.show(uri, "sora-test")
    assert [r["version"] for r in rows] == [v1, v2] and "champion" in rows[0]["aliases"]
    run = client.get_run(client.get_model_version("sora-test", v1).run_id)
    assert "test_ndcg_at_10" in run.data.metrics and "train.max_epochs" in run.data.params
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) == 8  # one point per epoch
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/training_curves.png" in arts


def test_an_unreachable_registry_is_one_clear_error_not_no_versions(capsys):
    from sora.cli import main

    port = free_port()  # nothing listens there
    assert main(["registry", "show", "--tracking-uri", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sora: error: cannot reach the registry at http://127.0.0.1:") and "\n" not in err


def test_promoting_a_version_that_does_not_exist_says_so(tmp_path, capsys):
    from sora.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["registry", "promote", "999", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "sora version 999 does not exist" in err and "Traceback" not in err
    assert main(["registry", "rollback", "--tracking-uri", uri]) == 1
    assert "nothing to roll back" in capsys.readouterr().err


# ------------------------------------------------------------------ faults mid-registration (SQLite registry)

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.conftest import train_tiny_model

    out = train_tiny_model(tmp_path_factory.mktemp("reg-faults") / "model", n_users=20, n_items=30)
    return out, {"valid": {}, "test": {}, "model_hash": model_hash(str(out))}


def _versions(uri, name):
    return mlflow.MlflowClient(uri, registry_uri=uri).search_model_versions(f"name='{name}'")


def test_an_upload_that_fails_leaves_no_version_and_a_rerun_registers_once(tiny_model, tmp_path, monkeypatch):
    import requests
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    model_dir, report = tiny_model
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = LocalArtifactRepository.log_artifacts

    def store_goes_away(self, local_dir, artifact_path=None):
        if (Path(local_dir) / "MLmodel").exists():  # the model's own upload, after the reports
            raise requests.ConnectionError("HTTPConnectionPool(host='store', port=9000): Max retries exceeded")
        return real(self, local_dir, artifact_path)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", store_goes_away)
    with pytest.raises(registry.RegistryUnreachable) as info:
        registry.log_and_register(uri, "sora", model_dir, report)
    message = str(info.value)
    assert message.startswith(f"cannot reach the registry at {uri} or its artifact store (registering the model)")
    assert "\n" not in message and "ConnectionError" in message
    assert _versions(uri, "sora") == []  # nothing half-registered
    runs = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("sora").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]

    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", real)
    done = registry.log_and_register(uri, "sora", model_dir, report)
    assert done.version == "1" and not done.reused
    assert registry.load_version(uri, "models:/sora@challenger").num_items == 30  # whole artifacts behind it
    assert registry.log_and_register(uri, "sora", model_dir, report).reused
    assert [str(v.version) for v in _versions(uri, "sora")] == ["1"]


def test_a_fault_after_the_version_exists_is_finished_by_the_rerun(tiny_model, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_dir, report = tiny_model
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = MlflowClient.set_registered_model_alias

    def server_gone(self, *args, **kwargs):
        raise MlflowException("API request to http://mlflow:5000/api/2.0/mlflow/registered-models/alias failed "
                              "with exception ConnectionError: Max retries exceeded")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", server_gone)
    with pytest.raises(registry.RegistryUnreachable, match="cannot reach the registry at sqlite"):
        registry.log_and_register(uri, "sora", model_dir, report)
    (only,) = _versions(uri, "sora")
    assert only.tags[registry.HASH_TAG] == report["model_hash"]  # created whole, with its hash, in one call
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    again = registry.log_and_register(uri, "sora", model_dir, report)
    assert again.reused and again.version == str(only.version)
    assert str(MlflowClient(uri).get_model_version_by_alias("sora", "challenger").version) == str(only.version)


def test_a_retried_registration_that_created_two_versions_keeps_one(tiny_model, tmp_path, monkeypatch):
    model_dir, report = tiny_model
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real = mlflow.register_model

    def answered_twice(*args, **kwargs):  # the first answer was lost and the client retried
        real(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "register_model", answered_twice)
    done = registry.log_and_register(uri, "sora", model_dir, report)
    assert done.version == "1" and [str(v.version) for v in _versions(uri, "sora")] == ["1"]


def test_a_promote_that_meets_an_outage_is_one_line(tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from sora.cli import main

    def server_gone(self, *args, **kwargs):
        raise MlflowException("API request to http://mlflow:5000/api/2.0/mlflow/model-versions/get failed with "
                              "exception ConnectTimeout: Max retries exceeded")

    monkeypatch.setattr(MlflowClient, "get_model_version", server_gone)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["registry", "promote", "1", "--tracking-uri", uri]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sora:")]
    assert len(err) == 1 and err[0].startswith(f"sora: error: cannot reach the registry at {uri}"), err
    assert "model-versions/get" in err[0]


def test_a_registry_that_hangs_fails_at_mlflows_request_timeout(tiny_model, monkeypatch):
    from tests.faults import BlackHole

    model_dir, report = tiny_model
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    hole = BlackHole()
    try:
        with pytest.raises(registry.RegistryUnreachable) as info:
            registry.log_and_register(hole.endpoint, "sora", model_dir, report)
    finally:
        hole.close()
    message = str(info.value)
    assert message.startswith(f"cannot reach the registry at {hole.endpoint}: ReadTimeout") and "\n" not in message
    assert "1 tries" in message and "1s read timeout" in message
