"""The per-run TrainJob (sora_pipelines.trainjob): command, URIs, secrets, GPU scheduling, hardening."""

import subprocess
from pathlib import Path

import pytest
import yaml
from sora_pipelines.trainjob import (
    EXAMPLE,
    GPU_NODE_SELECTOR,
    GPU_RESOURCE,
    GPU_TOLERATIONS,
    POD_LABELS,
    SECRET_ENV,
    SERVICE_ACCOUNT,
    render_trainjob,
    trainjob_name,
)

ROOT = Path(__file__).resolve().parents[1]
S3 = {"data_uri": "s3://bucket/data/ml-100k", "model_uri": "s3://bucket/models/run-1"}


def _job(**kw):
    args = dict(run_name="Run 1", tracking_uri="http://sora-mlflow:5000", image="trainer:1", gpu_count=0, **S3)
    args.update(kw)
    return render_trainjob(**args)


def _pod(job):
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    return rjob["template"]["spec"]["template"]


def _env(job):
    return {e["name"]: e for e in job["spec"]["trainer"]["env"]}


def _run_script(job, tmp_path, rank, **extra_env):
    """Run the job's script with stand-ins for torchrun and sora; return the commands they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("torchrun", "sora"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> "$LOG"\n')
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "log"
    log.unlink(missing_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "PET_NODE_RANK": rank,
           **{k: e["value"] for k, e in _env(job).items() if "value" in e}, **extra_env}
    command = job["spec"]["trainer"]["command"]
    subprocess.run(command, env=env, check=True)
    return log.read_text().splitlines()


def test_trains_under_torchrun_then_node_zero_registers(tmp_path):
    job = _job(num_nodes=3)
    trainer = job["spec"]["trainer"]
    assert job["kind"] == "TrainJob" and job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert trainer["numNodes"] == 3 and trainer["image"] == "trainer:1"
    assert trainer["command"][:2] == ["sh", "-c"]
    env = _env(job)
    assert env["SORA_DATA_URI"]["value"] == S3["data_uri"] and env["SORA_MODEL_URI"]["value"] == S3["model_uri"]
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://sora-mlflow:5000"
    data, model = S3["data_uri"], S3["model_uri"]
    train = f"torchrun -m sora.cli train --data {data} --out {model} --device cpu"
    register = f"sora registry register --model {model} --data {data}"
    assert _run_script(job, tmp_path, "0") == [train, register]  # node 0: train, then register
    assert _run_script(job, tmp_path, "2") == [train]  # other nodes only train
    gated = _job(promotion_margin=0.01)
    assert _run_script(gated, tmp_path, "0")[1] == f"{register} --promote-if-better --margin 0.01"


def test_uris_are_never_pasted_into_the_shell():
    job = _job(data_uri="s3://b/$(reboot);`id`", model_uri="s3://b/m'\"")
    assert "reboot" not in job["spec"]["trainer"]["command"][2]
    assert _env(job)["SORA_DATA_URI"]["value"] == "s3://b/$(reboot);`id`"


def test_cpu_run_asks_for_no_gpu_and_no_gpu_nodes():
    job = _job(gpu_count=0)
    resources = job["spec"]["trainer"]["resourcesPerNode"]
    assert GPU_RESOURCE not in resources["requests"] and GPU_RESOURCE not in resources["limits"]
    spec = _pod(job)["spec"]
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert job["spec"]["trainer"]["numProcPerNode"] == 1  # not one per CPU
    assert _env(job)["SORA_DEVICE"]["value"] == "cpu"


def test_gpu_run_gets_gpus_node_selector_and_tolerations():
    job = _job(gpu_count=2, num_nodes=2)
    resources = job["spec"]["trainer"]["resourcesPerNode"]
    assert resources["requests"][GPU_RESOURCE] == resources["limits"][GPU_RESOURCE] == "2"
    spec = _pod(job)["spec"]
    assert spec["nodeSelector"] == GPU_NODE_SELECTOR and spec["tolerations"] == GPU_TOLERATIONS
    assert job["spec"]["trainer"]["numProcPerNode"] == 2  # one process per GPU
    assert _env(job)["SORA_DEVICE"]["value"] == "cuda"
    custom = _job(gpu_count=1, node_selector={"pool": "a100"}, tolerations=[{"key": "x", "operator": "Exists"}])
    assert _pod(custom)["spec"]["nodeSelector"] == {"pool": "a100"}
    assert _pod(_job(gpu_count=0, node_selector={"pool": "a100"}))["spec"].get("nodeSelector") is None


def test_credentials_come_from_the_secret():
    job = _job(secret="my-secret")
    env = _env(job)
    for key in SECRET_ENV:
        ref = env[key]["valueFrom"]["secretKeyRef"]
        # the account and the store's keys are required: a Secret without them stops the pods, loudly
        required = key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID",
                           "AWS_SECRET_ACCESS_KEY")
        assert ref == {"name": "my-secret", "key": key, **({} if required else {"optional": True})}, key
    assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    from_secret = _env(_job(tracking_uri="", secret="my-secret"))["MLFLOW_TRACKING_URI"]
    assert from_secret["valueFrom"]["secretKeyRef"] == {"name": "my-secret", "key": "MLFLOW_TRACKING_URI"}
    assert not any("value" in e and "CHANGE" in str(e["value"]) for e in env.values())


def test_hardened_pod():
    job = _job()
    pod = _pod(job)
    spec = pod["spec"]
    assert pod["metadata"]["labels"].items() >= POD_LABELS.items()  # what the NetworkPolicy selects
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT  # no token, no permissions
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]
    (container,) = spec["containers"]
    assert container["name"] == "node"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = _env(job)
    assert {"/tmp", "/dev/shm"} <= mounts
    for var in ("HOME", "HF_HOME", "SORA_CACHE_DIR"):  # writable on a read-only root
        assert env[var]["value"].startswith("/tmp")


def test_local_paths_need_volumes():
    with pytest.raises(ValueError, match="no volume"):
        _job(data_uri="/data/ml-100k", model_uri="s3://b/m")
    with pytest.raises(ValueError, match="no volume"):
        _job(data_uri="s3://b/d", model_uri="file:///models/run-1")
    job = _job(data_uri="/data/ml-100k", model_uri="/models/run-1", volumes={"/data": "datasets", "/models": "models"})
    spec = _pod(job)["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts[claims["datasets"]]["mountPath"] == "/data" and mounts[claims["datasets"]]["readOnly"] is True
    assert mounts[claims["models"]]["mountPath"] == "/models" and mounts[claims["models"]]["readOnly"] is False
    with pytest.raises(ValueError, match="absolute"):
        _job(volumes={"data": "datasets"})


def test_names_and_arguments_are_checked():
    assert trainjob_name("Sora run 2026-11-23 17:00") == "sora-run-2026-11-23-17-00"
    assert trainjob_name("42") == "sora-42"
    assert len(trainjob_name("x" * 100)) <= 40
    job = _job(run_name="My_Run", namespace="sora")
    assert job["metadata"]["name"] == "my-run" and job["metadata"]["namespace"] == "sora"
    assert job["metadata"]["annotations"]["sora.ml/run-name"] == "My_Run"
    assert "namespace" not in _job()["metadata"]
    for local in ("sqlite:///.sora/mlflow.db", "file:///tmp/mlruns", "mlruns"):
        with pytest.raises(ValueError, match="vanish"):
            _job(tracking_uri=local)
    for bad in ({"run_name": "!!"}, {"gpu_count": -1}, {"num_nodes": 0}, {"data_uri": ""}, {"image": ""}):
        with pytest.raises(ValueError):
            _job(**bad)


def test_renders_without_shared_references():
    """yaml.safe_dump must not emit anchors, and one job's dict must not alias another's."""
    a, b = _job(gpu_count=1), _job(gpu_count=1)
    _pod(a)["spec"]["tolerations"][0]["key"] = "changed"
    assert _pod(b)["spec"]["tolerations"] == GPU_TOLERATIONS
    assert "&id" not in yaml.safe_dump(a)


def test_example_template_is_the_rendering():
    text = (ROOT / "k8s" / "templates" / "trainjob.yaml").read_text()
    assert yaml.safe_load(text) == render_trainjob(**EXAMPLE)


def test_a_pipeline_launched_job_trains_on_the_prepared_split_with_the_resolved_config(tmp_path):
    job = _job(register=False, config_json='{"train": {"max_epochs": 3}}', prepared_uri="s3://root/run/prepare/split")
    env = _env(job)
    assert env["SORA_REGISTER"]["value"] == "0"
    lines = _run_script(job, tmp_path, "0", SORA_CONFIG_JSON=env["SORA_CONFIG_JSON"]["value"],
                        SORA_PREPARED_URI=env["SORA_PREPARED_URI"]["value"])
    data, model = S3["data_uri"], S3["model_uri"]
    # node 0 too: only trains (the pipeline's evaluate / register / compare steps follow)
    assert lines == [f"torchrun -m sora.cli train --data {data} --out {model} --device cpu "
                     "--config /tmp/sora-config.json --prepared s3://root/run/prepare/split"]


class _Api:
    """A stand-in for kubernetes' CustomObjectsApi: a TrainJob that completes (or fails) after some polls."""

    def __init__(self, conditions):
        self.conditions, self.created, self.polls = list(conditions), [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.polls += 1
        return {"status": {"conditions": self.conditions.pop(0) if self.conditions else []}}


def test_wait_for_returns_on_complete_and_raises_the_jobs_own_failure():
    from sora_pipelines.trainjob import wait_for

    done = [[], [{"type": "Created", "status": "True"}], [{"type": "Complete", "status": "True"}]]
    api = _Api(done)
    wait_for(api, "j", "ns", sleep=lambda s: None)
    assert api.polls == 3
    failed = _Api([[{"type": "Failed", "status": "True", "reason": "NodeOOM", "message": "node-1 was OOM-killed"}]])
    with pytest.raises(RuntimeError, match="ns/j failed: NodeOOM node-1 was OOM-killed"):
        wait_for(failed, "j", "ns", sleep=lambda s: None)
    clock = iter(range(0, 10_000, 100))
    with pytest.raises(RuntimeError, match="still running"):
        wait_for(_Api([]), "j", "ns", timeout_s=250, sleep=lambda s: None, clock=lambda: next(clock))


def test_train_in_trainjob_creates_waits_and_hands_the_model_on(tmp_path, monkeypatch):
    from sora_pipelines import trainjob

    config = tmp_path / "config.json"
    config.write_text('{"train": {"max_epochs": 2}}')
    model_root = tmp_path / "models"  # stands in for the object store (read through sora.data.storage)

    class FakeRec:
        meta = {"history": [{"epoch": 1, "loss": 0.5}]}

    monkeypatch.setattr(trainjob, "_is_local", lambda uri: False)
    monkeypatch.setattr("sora.model.recommender.Recommender.load", classmethod(lambda cls, d: FakeRec()))
    api = _Api([[{"type": "Complete", "status": "True"}]])

    def create(group, version, namespace, plural, body):  # the job "writes" its model where it was told
        api.created.append(body)
        out = Path(next(e["value"] for e in body["spec"]["trainer"]["env"] if e["name"] == "SORA_MODEL_URI"))
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"weights")

    api.create_namespaced_custom_object = create
    info = trainjob.train_in_trainjob(str(config), "s3://root/split", "s3://snap/abc", str(model_root),
                                      str(tmp_path / "model"), str(tmp_path / "curves.html"), "trainer@sha256:x",
                                      gpu_count=1, num_nodes=3, secret="sora-mlflow", run_name="Run 7",
                                      api=api, namespace="team")
    (body,) = api.created
    env = {e["name"]: e.get("value") for e in body["spec"]["trainer"]["env"]}
    assert env["SORA_REGISTER"] == "0" and env["SORA_PREPARED_URI"] == "s3://root/split"
    assert env["SORA_CONFIG_JSON"] == config.read_text() and env["SORA_DATA_URI"] == "s3://snap/abc"
    assert body["spec"]["trainer"]["numNodes"] == 3 and body["spec"]["trainer"]["image"] == "trainer@sha256:x"
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "curves.html").read_text() and info["trainjob"] == "team/run-7"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="object-store prefix"):
        trainjob.train_in_trainjob(str(config), "s3://root/split", "s3://snap/abc", str(model_root),
                                   str(tmp_path / "m2"), str(tmp_path / "c2"), "img", 0, 2, "s", "r", api=api,
                                   namespace="team")
