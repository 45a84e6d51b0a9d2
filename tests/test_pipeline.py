"""The pipeline compiles to a valid PipelineSpec and runs end to end with kfp.local."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import sora_pipelines
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from sora.cli import main
from sora.cluster import NETWORK_STEPS, STEP_RESOURCES
from sora.data import snapshot
from sora.registry import RegistryError, connect
from tests.conftest import make_dataset

ROOT = Path(__file__).resolve().parents[1]
POD = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}


def test_compiled_yaml_is_a_pipeline_spec_with_gpu_settings_only_on_the_gpu_branch(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "sora-training"
    executors = docs[0]["deploymentSpec"]["executors"]
    trains = {k: v["container"] for k, v in executors.items() if k.startswith("exec-train")}
    assert len(trains) == 2  # one for gpu_count > 0, one for CPU nodes
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = [k for k, v in trains.items() if "accelerator" in v.get("resources", {})]
    cpu = [k for k in trains if k not in gpu]
    assert len(gpu) == 1 and len(cpu) == 1
    assert "gpu_count" in trains[gpu[0]]["resources"]["accelerator"]["resourceCount"]
    assert platform[gpu[0]]["nodeSelector"] and platform[gpu[0]]["tolerations"]
    assert "nodeSelector" not in platform[cpu[0]] and "tolerations" not in platform[cpu[0]]
    params = spec.root.input_definitions.parameters
    assert {"data_uri", "tracking_uri", "model_name", "promotion_margin", "gpu_count"} <= set(params)
    assert "data_dir" not in params  # data is a URI, never a path shared between pods
    # every step gets the Secret, and the Secret carries MLFLOW_TRACKING_URI and the object store's variables
    settings = sora_pipelines.ClusterSettings()
    for name in executors:
        if not name.startswith(("exec-fail", "exec-configure", "exec-batch-score")):  # parameters/artifacts only
            env = {e["envVar"] for s in platform[name]["secretAsEnv"] for e in s["keyToEnv"]}
            assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"} <= env, name
            # the keys a step needs are required: a Secret without them stops the pod before it runs
            required = {e["envVar"] for s in platform[name]["secretAsEnv"] if not s.get("optional")
                        for e in s["keyToEnv"]}
            assert required == set(settings.required_secret_keys) and "MLFLOW_TRACKING_URI" in required, name
    images = {e["container"]["image"] for e in executors.values()}
    assert any("sora-trainer" in i for i in images) and any(i.endswith("/sora:0.1.0") for i in images)
    # later steps read the prepared split, never the raw data: only validate, drift and prepare take data_uri
    readers = {name for name, comp in spec.components.items() if "data_uri" in comp.input_definitions.parameters}
    assert readers == {"comp-validate", "comp-drift", "comp-prepare"}


def _run(tmp_path, data, *overrides, margin="0.0"):
    argv = ["pipeline", "run", "--local", "--data", str(data), "--workdir", str(tmp_path / "work"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-baselines", "--margin", margin,
            "--embedding-cache", str(tmp_path / "cache"),
            "--set", "text.model=hash:16", "--set", "train.batch_size=128", "--set", "model.history_len=4",
            "--set", "train.patience=20", "--set", "tune.grid=[]"]  # one training each: these tests are about promotion
    for o in overrides:
        argv += ["--set", o]
    return main(argv)


def _champion(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return str(client.get_model_version_by_alias("sora", "champion").version)


@pytest.mark.slow
def test_local_runs_promote_only_better_models_and_stop_on_bad_data(tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(n_users=60, n_items=120).save(data, fmt="csv")
    # 1: a small model without the item–item head becomes the first champion (it beats MostPop)
    assert _run(tmp_path, data, "train.max_epochs=3", "model.dim=16", "model.use_item_item_score=false") == 0
    assert _champion(tmp_path) == "1"
    # 2: a deliberately worse one (1 epoch, 2 dims, no text) is registered but not promoted
    assert _run(tmp_path, data, "train.max_epochs=1", "model.dim=2", "model.use_text=false",
                "model.use_item_item_score=false") == 0
    assert _champion(tmp_path) == "1"
    assert "keep champion" in capsys.readouterr().out
    # 3: a better one (four times the epochs, the head on; 0.325 vs 0.246 test NDCG@10, deterministic on CPU) replaces it
    assert _run(tmp_path, data, "train.max_epochs=12", "model.dim=16") == 0
    assert _champion(tmp_path) == "3"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_model_version("sora", "3").tags["previous_champion"] == "1"
    cards = list((tmp_path / "work" / "pipeline_runs").rglob("card"))
    assert cards and any("PROMOTED" in Path(c).read_text() for c in cards)
    # 4: data that fails validation registers nothing and fails the run
    bad = tmp_path / "bad"
    ds = make_dataset(n_users=60, n_items=120)
    ds.interactions.loc[3, "rating"] = 42.0
    ds.save(bad, fmt="csv")
    assert _run(tmp_path, bad, "train.max_epochs=2") == 1
    assert len(client.search_model_versions("name='sora'")) == 3
    reports = list((tmp_path / "work" / "pipeline_runs").rglob("validate/summary"))
    assert any(not json.loads(Path(r).read_text())["passed"] for r in reports)


def _compiled(tmp_path, *extra, env=None):
    out = tmp_path / "p.yaml"
    if env is None:
        assert main(["pipeline", "compile", "-o", str(out), *extra]) == 0
    else:  # the images are read when sora_components is imported: compile in a fresh process
        subprocess.run([sys.executable, "-m", "sora.cli", "pipeline", "compile", "-o", str(out)], check=True,
                       env={**os.environ, **env}, capture_output=True)
    return list(yaml.safe_load_all(out.read_text()))


def _all_tasks(spec: dict) -> dict:
    """component-qualified task name → task, over the root DAG and every condition branch."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_every_step_is_sized_from_one_table_and_network_steps_retry(tmp_path):
    for pipeline in (sora_pipelines.build_pipeline(), sora_pipelines.build_pipeline(distributed=True)):
        out = tmp_path / "p.yaml"
        from kfp import compiler

        compiler.Compiler().compile(pipeline, str(out))
        spec = yaml.safe_load_all(out.read_text()).__next__()
        seen = set()
        for task in _all_tasks(spec).values():
            if "componentRef" not in task or task["componentRef"]["name"].startswith("comp-condition"):
                continue
            step = re.sub(r"-\d+$", "", task["componentRef"]["name"][len("comp-"):])  # comp-train-2 → train
            seen.add(step)
            res = spec["deploymentSpec"]["executors"][spec["components"][task["componentRef"]["name"]]
                                                      ["executorLabel"]]["container"]["resources"]
            want = STEP_RESOURCES[step]
            assert (res["resourceCpuRequest"], res["resourceCpuLimit"], res["resourceMemoryRequest"],
                    res["resourceMemoryLimit"]) == (want.cpu_request, want.cpu_limit, want.memory_request,
                                                    want.memory_limit), step
            assert ("retryPolicy" in task) == (step in NETWORK_STEPS), step
            if step in NETWORK_STEPS:
                assert task["retryPolicy"]["maxRetryCount"] >= 1
        assert {"connect", "validate", "drift", "prepare", "evaluate", "register", "compare", "promote"} <= seen
    # no stale rows: every row of the table is a step of one of the pipelines
    assert set(STEP_RESOURCES) <= seen | {"train"}


def test_parameters_are_described_and_overrides_are_a_list(tmp_path):
    spec = _compiled(tmp_path)[0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name, p in params.items():
        assert len(p.get("description", "")) > 10, name
    assert params["config_overrides"]["parameterType"] == "LIST"
    assert spec["components"]["comp-configure"]["inputDefinitions"]["parameters"]["config_overrides"][
        "parameterType"] == "LIST"


def test_images_come_from_the_environment_at_compile_time(tmp_path):
    """CI compiles with the digests it pushed: a code change is a new image, so a new step cache key."""
    digest = "sha256:" + "ab" * 32
    docs = _compiled(tmp_path, env={"SORA_IMAGE": f"ghcr.io/team/sora@{digest}",
                                    "SORA_TRAINER_IMAGE": f"ghcr.io/team/sora-trainer@{digest}"})
    images = {name: e["container"]["image"] for name, e in docs[0]["deploymentSpec"]["executors"].items()}
    assert all(i.endswith(digest) for i in images.values()), images
    assert {i for n, i in images.items() if n.startswith("exec-train")} == {f"ghcr.io/team/sora-trainer@{digest}"}


def test_distributed_pipeline_trains_in_a_trainjob_behind_the_same_gates(tmp_path):
    out = tmp_path / "d.yaml"
    sora_pipelines.compile_pipeline(out, distributed=True)
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    comps = set(spec["components"])
    assert "comp-train-distributed" in comps and "comp-train" not in comps
    for gate in ("comp-connect", "comp-validate", "comp-drift", "comp-compare", "comp-promote", "comp-fail"):
        assert gate in comps, gate
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"num_nodes", "model_root", "snapshot_root"} <= set(params)
    tasks = _all_tasks(spec)
    train = next(t for t in tasks.values() if t.get("componentRef", {}).get("name") == "comp-train-distributed")
    evaluate = next(t for t in tasks.values() if t.get("componentRef", {}).get("name") == "comp-evaluate")
    assert evaluate["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "train-distributed"
    assert "prepare" in train["dependentTasks"]
    env = {e["envVar"] for s in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train-distributed"]["secretAsEnv"] for e in s["keyToEnv"]}
    assert "MLFLOW_TRACKING_URI" in env


class _FakeKfp:
    calls: list = []

    def __init__(self, host, existing_token=None, namespace=None):
        self.calls.append(("client", {"host": host, "token": existing_token, "namespace": namespace}))

    def create_run_from_pipeline_func(self, func, **kw):
        self.calls.append(("run", {**kw, "pipeline": func.name}))
        return type("Run", (), {"run_id": "r-1"})()

    def create_experiment(self, name, namespace=None):
        return type("Exp", (), {"experiment_id": "e-1"})()

    def create_recurring_run(self, **kw):
        self.calls.append(("recurring", kw))
        return type("Job", (), {"recurring_run_id": "j-1"})()


@pytest.fixture
def fake_kfp(monkeypatch):
    import kfp

    _FakeKfp.calls = []
    monkeypatch.setattr(kfp, "Client", _FakeKfp)
    return _FakeKfp.calls


def test_submit_sends_only_what_was_asked_under_the_pipeline_service_account(fake_kfp, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////home/me/.sora/mlflow.db")  # this machine's, not the cluster's
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    argv = ["pipeline", "submit", "--host", "https://kfp.example", "--data", "s3://b/d", "--namespace", "team",
            "--set", "train.max_epochs=3", "--set", "model.dim=32", "--workdir", str(tmp_path)]
    assert main(argv) == 0
    (_, client), (_, run) = fake_kfp
    assert client == {"host": "https://kfp.example", "token": "t0ken", "namespace": "team"}
    assert run["service_account"] == "sora-pipeline" and run["pipeline"] == "sora-training"
    args = run["arguments"]
    assert args["tracking_uri"] == "" and args["snapshot_root"] == ""  # the steps read the Secret's
    assert args["config_overrides"] == ["train.max_epochs=3", "model.dim=32"]
    fake_kfp.clear()
    assert main(argv + ["--tracking-uri", "http://sora-mlflow:5000"]) == 0
    assert fake_kfp[1][1]["arguments"]["tracking_uri"] == "http://sora-mlflow:5000"
    fake_kfp.clear()
    assert main(["pipeline", "schedule", "--host", "https://kfp.example", "--cron", "0 0 3 * * *", "--data",
                 "s3://b/d", "--workdir", str(tmp_path)]) == 0
    assert fake_kfp[1][1]["service_account"] == "sora-pipeline" and fake_kfp[1][1]["params"]["tracking_uri"] == ""
    assert main(argv + ["--token", "t0ken"]) == 2  # the token never goes on a command line


def test_distributed_submit_is_the_gated_pipeline(fake_kfp, tmp_path, capsys):
    base = ["pipeline", "submit", "--distributed", "--data", "s3://b/d", "--workdir", str(tmp_path)]
    assert main(base + ["--host", "https://kfp.example"]) == 2  # no --model-out
    assert main(base + ["--host", "https://kfp.example", "--model-out", "s3://b/models", "--nodes", "3"]) == 0
    run = fake_kfp[-1][1]
    assert run["pipeline"] == "sora-training-distributed" and run["service_account"] == "sora-pipeline"
    assert run["arguments"]["num_nodes"] == 3 and run["arguments"]["model_root"] == "s3://b/models"
    capsys.readouterr()
    assert main(base + ["--model-out", "s3://b/models", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert Path(printed["pipeline"]).exists() and printed["arguments"]["num_nodes"] == 2


def test_connect_refuses_a_pod_local_registry_and_says_where_it_came_from(tmp_path):
    sqlite = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert connect("", {"MLFLOW_TRACKING_URI": sqlite}) == sqlite  # outside a pod: a local store is fine
    with pytest.raises(RegistryError, match="from the tracking_uri parameter") as exc:
        connect(sqlite, POD)
    assert "\n" not in str(exc.value)
    with pytest.raises(RegistryError, match=r"from MLFLOW_TRACKING_URI \(the environment\)"):
        connect("", {**POD, "MLFLOW_TRACKING_URI": "file:///tmp/mlruns"})
    with pytest.raises(RegistryError, match="built-in default"):
        connect("", POD)


def test_snapshot_root_must_outlive_the_pod(tmp_path):
    assert snapshot.resolve_root("", {}) == ""  # local runs may go without
    assert snapshot.resolve_root("", {"SORA_SNAPSHOT_ROOT": str(tmp_path)}) == str(tmp_path)
    assert snapshot.resolve_root("s3://b/snaps", POD) == "s3://b/snaps"
    with pytest.raises(snapshot.SnapshotError, match="SORA_SNAPSHOT_ROOT"):
        snapshot.resolve_root("", POD)
    with pytest.raises(snapshot.SnapshotError, match="snapshot_root parameter"):
        snapshot.resolve_root("/tmp/snaps", POD)


def test_snapshots_are_digest_addressed_checked_and_never_rewritten(tmp_path):
    data = tmp_path / "data"
    make_dataset(n_users=20, n_items=30).save(data, fmt="csv")
    from sora.data.contract import load_dataset

    digest = load_dataset(data).fingerprint()
    uri = snapshot.take_snapshot(str(data), str(tmp_path / "snaps"), digest)
    assert uri == str(tmp_path / "snaps" / digest) and (Path(uri) / snapshot.MARKER).exists()
    assert load_dataset(uri).fingerprint() == digest
    make_dataset(n_users=20, n_items=30, seed=1).save(data, fmt="csv")  # the URI is rewritten in place
    assert snapshot.take_snapshot(str(data), str(tmp_path / "snaps"), digest) == uri
    assert load_dataset(uri).fingerprint() == digest  # the snapshot still holds what was validated
    with pytest.raises(snapshot.SnapshotError, match="changed after validation"):
        snapshot.take_snapshot(str(data), str(tmp_path / "other"), digest)


def test_a_pipeline_pod_with_a_local_registry_stops_at_the_first_step(tmp_path, monkeypatch, capfd):
    data = tmp_path / "data"
    make_dataset(n_users=20, n_items=30).save(data, fmt="csv")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # the steps (subprocesses) see a pod
    monkeypatch.setenv("SORA_SNAPSHOT_ROOT", "s3://bucket/snapshots")
    argv = ["pipeline", "run", "--local", "--data", str(data), "--workdir", str(tmp_path / "work"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--snapshot-root", "s3://bucket/snapshots"]
    assert main(argv) == 1
    out = capfd.readouterr()
    assert "nothing was registered" in out.err
    assert "is not an MLflow server" in out.out + out.err and "from the tracking_uri parameter" in out.out + out.err
    runs = tmp_path / "work" / "pipeline_runs"
    assert not list(runs.rglob("validate")) and not list(runs.rglob("train"))  # nothing read, nothing trained


@pytest.mark.slow
def test_nightly_run_on_rewritten_data_is_compared_with_the_champions_snapshot(tmp_path):
    data = tmp_path / "data"
    make_dataset(n_users=60, n_items=120).save(data, fmt="csv")
    from sora.data.contract import load_dataset

    trained_on = load_dataset(data).fingerprint()
    assert _run(tmp_path, data, "train.max_epochs=2", "model.dim=8", "model.use_item_item_score=false") == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("sora", "champion")
    snap = client.get_run(champion.run_id).data.tags["sora.data_source"]
    assert snap == str((tmp_path / "work" / "snapshots" / trained_on).resolve())  # the version points at it
    # the nightly export rewrites the same URI with other data
    make_dataset(n_users=60, n_items=120, seed=7).save(data, fmt="csv")
    _run(tmp_path, data, "train.max_epochs=1", "model.dim=8", "model.use_item_item_score=false")
    reports = sorted((tmp_path / "work" / "pipeline_runs").rglob("drift/report"), key=lambda p: p.stat().st_mtime)
    assert len(reports) == 2 and "No champion yet" in reports[0].read_text()
    html = reports[-1].read_text()
    # compared with what the champion was trained on (still intact), not with the rewritten URI itself
    assert f"against the reference <code>{snap}</code>" in html
    assert load_dataset(snap).fingerprint() == trained_on != load_dataset(data).fingerprint()
