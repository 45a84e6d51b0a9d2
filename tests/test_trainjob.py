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
        assert ref == {"name": "my-secret", "key": key, "optional": True}
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
