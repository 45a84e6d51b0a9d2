"""One Kubeflow Trainer ``TrainJob`` per training run (installed as ``sora_pipelines.trainjob``).

Multi-node training is not a standing resource in ``k8s/``: the pipeline (or ``sora pipeline submit
--distributed``) renders a TrainJob for its run with :func:`render_trainjob` and creates it
(``CustomObjectsApi.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)``).
Every node runs ``torchrun -m sora.cli train --data DATA_URI --out MODEL_URI``; once node 0's
torchrun has finished (rank 0 lives there and writes the model), node 0 runs
``sora registry register --model MODEL_URI --data DATA_URI`` (evaluates it and registers it as
challenger; with ``promotion_margin`` also ``--promote-if-better --margin M``).

Data and model travel by URI: object-store URIs (``s3://``, ``gs://``) with the store's credentials from
the Secret, or paths on PersistentVolumeClaims mounted with ``volumes`` (ReadWriteMany when more than
one node writes or reads them). A local path with no volume under it is refused, since a model written
to the container's own filesystem is lost with the pod.

API: Kubeflow Trainer v2.2 or later (``trainer.kubeflow.org/v1alpha1`` with ``runtimePatches``) and its
stock ClusterTrainingRuntime ``torch-distributed``. Pod-level settings (labels the NetworkPolicies
match, the token-less ``sora-trainer`` service account, security contexts, volumes and, only when GPUs
are asked for, the GPU node selector and tolerations) go in one runtime patch.

`k8s/templates/trainjob.yaml` is this function's output for :data:`EXAMPLE`; regenerate it with
``python -m sora_pipelines.trainjob > k8s/templates/trainjob.yaml``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
RUNTIME = "torch-distributed"
#: runtimePatches are keyed by the manager that wrote them.
PATCH_MANAGER = "sora.ml/trainjob"
#: k8s/base/rbac.yaml: no API token, no permissions.
SERVICE_ACCOUNT = "sora-trainer"
#: k8s/base/networkpolicy.yaml lets pods with this label reach each other, MLflow and the object store.
POD_LABELS = {"app.kubernetes.io/name": "sora-trainer", "app.kubernetes.io/part-of": "sora"}
RUN_LABEL = "sora.ml/run"
#: The trainer image's user (docker/trainer.Dockerfile).
USER_ID = 10001
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
#: Keys of the MLflow / object-store Secret that become the trainer's environment. The account and the
#: store's keys are required (a Secret without them stops the pods before anything trains); the region and
#: endpoints only some stores need. The tracking URI comes from the Secret only when no ``tracking_uri``
#: is given, and is then required too.
REQUIRED_SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID",
                       "AWS_SECRET_ACCESS_KEY")
OPTIONAL_SECRET_ENV = ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
SECRET_ENV = REQUIRED_SECRET_ENV + OPTIONAL_SECRET_ENV
CPU_RESOURCES = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}}
GPU_NODE_RESOURCES = {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"cpu": "16", "memory": "64Gi"}}
#: JobSet derives pod host names (``NAME-node-0-0``) from the TrainJob name; keep them short.
MAX_NAME = 40

# Every node trains; node 0 registers after its torchrun returns (unless the pipeline launched the job:
# its own evaluate / register / compare steps follow). Values come in through the environment, never
# pasted into the script, so a URI cannot change what the shell runs.
SCRIPT = """\
set -eu
set -- --data "$SORA_DATA_URI" --out "$SORA_MODEL_URI" --device "$SORA_DEVICE"
if [ -n "${SORA_CONFIG_JSON:-}" ]; then
  printf '%s' "$SORA_CONFIG_JSON" > /tmp/sora-config.json
  set -- "$@" --config /tmp/sora-config.json
fi
if [ -n "${SORA_PREPARED_URI:-}" ]; then
  set -- "$@" --prepared "$SORA_PREPARED_URI"
fi
torchrun -m sora.cli train "$@"
if [ "${SORA_REGISTER:-1}" = "1" ] && [ "${PET_NODE_RANK:-0}" = "0" ]; then
  if [ -n "${SORA_PROMOTION_MARGIN:-}" ]; then
    exec sora registry register --model "$SORA_MODEL_URI" --data "$SORA_DATA_URI" \\
      --promote-if-better --margin "$SORA_PROMOTION_MARGIN"
  fi
  exec sora registry register --model "$SORA_MODEL_URI" --data "$SORA_DATA_URI"
fi
"""

#: The arguments k8s/templates/trainjob.yaml was rendered with.
EXAMPLE = {
    "run_name": "sora-example",
    "data_uri": "s3://CHANGE-ME-bucket/data/movielens-100k",
    "model_uri": "s3://CHANGE-ME-bucket/models/sora-example",
    "tracking_uri": "http://sora-mlflow:5000",
    "image": "ghcr.io/sora-ml/sora-trainer:0.1.0-cu121",
    "gpu_count": 1,
    "num_nodes": 2,
}


def trainjob_name(run_name: str) -> str:
    """A valid TrainJob name (RFC 1035 label, at most :data:`MAX_NAME` characters) for ``run_name``."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"run name {run_name!r} has no letters or digits to name a TrainJob with")
    if not slug[0].isalpha():
        slug = f"sora-{slug}"
    return slug[:MAX_NAME].rstrip("-")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _under(path: str, mount: str) -> bool:
    mount = mount.rstrip("/") or "/"
    return path == mount or path.startswith(mount if mount.endswith("/") else mount + "/")


def _volumes(data_uri: str, model_uri: str, volumes: Mapping[str, str]) -> tuple[list[dict], list[dict]]:
    """Pod volumes and the trainer's mounts: scratch space on the read-only root, plus the PVCs."""
    pod = [{"name": "tmp", "emptyDir": {}},
           {"name": "dshm", "emptyDir": {"medium": "Memory"}}]  # NCCL and data loaders use /dev/shm
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    for i, (path, claim) in enumerate(sorted(volumes.items())):
        if not path.startswith("/"):
            raise ValueError(f"volume mount path {path!r} must be absolute")
        # a volume only the data lives on is mounted read-only
        writes = _is_local(model_uri) and _under(_local_path(model_uri), path)
        name = f"volume-{i}"
        pod.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": not writes}})
        mounts.append({"name": name, "mountPath": path, "readOnly": not writes})
    for what, uri in (("data", data_uri), ("model", model_uri)):
        if _is_local(uri) and not any(_under(_local_path(uri), p) for p in volumes):
            raise ValueError(f"{what} URI {uri!r} is a path inside the container but no volume is mounted "
                             f"over it: use an object-store URI or pass volumes={{'/mount/path': 'claim-name'}}")
    return pod, mounts


def render_trainjob(run_name: str, data_uri: str, model_uri: str, tracking_uri: str, image: str,
                    gpu_count: int, num_nodes: int = 1, namespace: str | None = None,
                    secret: str = "sora-mlflow", *, volumes: Mapping[str, str] | None = None,
                    runtime: str = RUNTIME, node_selector: Mapping[str, str] | None = None,
                    tolerations: Sequence[Mapping[str, str]] | None = None,
                    promotion_margin: float | None = None, register: bool = True,
                    config_json: str | None = None, prepared_uri: str | None = None) -> dict:
    """The TrainJob manifest (a plain dict, ready for the Kubernetes API or ``yaml.safe_dump``) for one run.

    ``tracking_uri`` is where ``sora registry register`` records the model; when empty, the Secret's
    ``MLFLOW_TRACKING_URI`` is used. ``secret`` also supplies the MLflow account and object-store
    credentials (:data:`SECRET_ENV`). ``gpu_count`` GPUs per node: with 0 the job asks for no GPU and
    carries no GPU node selector or toleration, so CPU runs schedule on CPU nodes; with more, one
    process per GPU. ``volumes`` maps mount paths to PersistentVolumeClaim names, for data or model
    URIs that are paths. ``node_selector`` / ``tolerations`` replace the GPU defaults
    (:data:`GPU_NODE_SELECTOR`, :data:`GPU_TOLERATIONS`) and, like them, apply only when
    ``gpu_count > 0``. ``promotion_margin``: when given, the registration also gates the challenger
    against the champion and promotes it when it wins by that margin (what the pipeline's compare and
    promote steps do); when ``None``, the run only registers a challenger. ``register=False``: the job only
    trains (the pipeline's train step launched it, and its own gates follow). ``config_json``: the resolved
    config (``sora train --config``); ``prepared_uri``: the prepared-split artifact to train on.
    """
    if gpu_count < 0:
        raise ValueError(f"gpu_count must be 0 or more, got {gpu_count}")
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be 1 or more, got {num_nodes}")
    for what, value in (("data_uri", data_uri), ("model_uri", model_uri), ("image", image)):
        if not value:
            raise ValueError(f"{what} is required")
    if tracking_uri and (tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri):
        raise ValueError(f"tracking URI {tracking_uri!r} is local to the pod and would vanish with it: give the "
                         "MLflow server's URL, or leave it empty to use the Secret's MLFLOW_TRACKING_URI")
    name = trainjob_name(run_name)
    pod_volumes, mounts = _volumes(data_uri, model_uri, volumes or {})

    env = [{"name": "SORA_DATA_URI", "value": data_uri},
           {"name": "SORA_MODEL_URI", "value": model_uri},
           {"name": "SORA_DEVICE", "value": "cuda" if gpu_count else "cpu"},
           {"name": "SORA_RUN_NAME", "value": run_name},
           {"name": "SORA_PROMOTION_MARGIN", "value": "" if promotion_margin is None else str(promotion_margin)},
           {"name": "SORA_REGISTER", "value": "1" if register else "0"},
           {"name": "HF_HUB_OFFLINE", "value": "1"},
           # writable places on a read-only root filesystem
           {"name": "HOME", "value": "/tmp"},
           {"name": "HF_HOME", "value": "/tmp/hf"},
           {"name": "SORA_CACHE_DIR", "value": "/tmp/sora-cache"}]
    if config_json:
        env.append({"name": "SORA_CONFIG_JSON", "value": config_json})
    if prepared_uri:
        env.append({"name": "SORA_PREPARED_URI", "value": prepared_uri})
    if tracking_uri:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": tracking_uri})
    else:
        env.append({"name": "MLFLOW_TRACKING_URI",
                    "valueFrom": {"secretKeyRef": {"name": secret, "key": "MLFLOW_TRACKING_URI"}}})
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}} for key in REQUIRED_SECRET_ENV]
    env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in OPTIONAL_SECRET_ENV]

    resources = copy.deepcopy(GPU_NODE_RESOURCES if gpu_count else CPU_RESOURCES)
    pod_spec: dict = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                            "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": pod_volumes,
        "containers": [{
            "name": "node",
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": mounts,
        }],
    }
    if gpu_count:
        for part in ("requests", "limits"):
            resources[part][GPU_RESOURCE] = str(gpu_count)
        pod_spec["nodeSelector"] = dict(GPU_NODE_SELECTOR if node_selector is None else node_selector)
        pod_spec["tolerations"] = [dict(t) for t in (GPU_TOLERATIONS if tolerations is None else tolerations)]

    labels = {**POD_LABELS, RUN_LABEL: name}
    metadata: dict = {"name": name, "labels": dict(labels), "annotations": {"sora.ml/run-name": run_name}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": metadata,
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
            "trainer": {
                "image": image,
                "command": ["sh", "-c", SCRIPT],
                "env": env,
                "numNodes": num_nodes,
                "numProcPerNode": max(1, gpu_count),
                "resourcesPerNode": resources,
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": "node",
                    "template": {"spec": {"template": {"metadata": {"labels": labels}, "spec": pod_spec}}},
                }]}}},
            }],
        },
    }


def wait_for(api, name: str, namespace: str, poll_s: float = 30.0, timeout_s: float = 48 * 3600,
             sleep=None, clock=None) -> dict:
    """Poll the TrainJob until its ``Complete`` or ``Failed`` condition is true; return it, or raise
    RuntimeError (failed, or still running after ``timeout_s``) with the job's own message."""
    import time

    sleep, clock = sleep or time.sleep, clock or time.monotonic
    deadline = clock() + timeout_s
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
        if conditions.get("Failed", {}).get("status") == "True":
            c = conditions["Failed"]
            raise RuntimeError(f"TrainJob {namespace}/{name} failed: {c.get('reason', '')} {c.get('message', '')}".strip())
        if conditions.get("Complete", {}).get("status") == "True":
            return job
        if clock() > deadline:
            raise RuntimeError(f"TrainJob {namespace}/{name} still running after {timeout_s:g}s")
        sleep(poll_s)


def _pod_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        raise RuntimeError(f"not in a Kubernetes pod ({path} is missing): the distributed train step launches "
                           "a TrainJob and runs on a cluster only") from None


def train_in_trainjob(config_path: str, split_uri: str, data_uri: str, model_root: str, model_path: str,
                      curves_path: str, image: str, gpu_count: int, num_nodes: int, secret: str,
                      run_name: str, api=None, namespace: str | None = None) -> dict:
    """The distributed pipeline's train step: render a TrainJob that trains (no registration) on the
    prepared split with the resolved config, create it in this pod's namespace, wait for it, then copy the
    model it wrote under ``model_root`` into the step's ``Model`` artifact (``model_path``)."""
    import shutil
    from pathlib import Path

    from sora.data import storage
    from sora.evaluation.plots import training_curves_html
    from sora.model.recommender import Recommender

    if not model_root or _is_local(model_root):
        raise ValueError(f"model_root {model_root!r} must be an object-store prefix the TrainJob's nodes can "
                         "write, e.g. s3://bucket/sora/models")
    name = trainjob_name(run_name)
    model_uri = f"{model_root.rstrip('/')}/{name}"
    manifest = render_trainjob(run_name=run_name, data_uri=data_uri, model_uri=model_uri, tracking_uri="",
                               image=image, gpu_count=gpu_count, num_nodes=num_nodes, secret=secret,
                               register=False, config_json=Path(config_path).read_text(), prepared_uri=split_uri)
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    namespace = namespace or _pod_namespace()
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    wait_for(api, manifest["metadata"]["name"], namespace)
    with storage.local_dir(model_uri) as trained:
        shutil.copytree(trained, model_path, dirs_exist_ok=True)
        history = Recommender.load(trained).meta.get("history", [])
    Path(curves_path).write_text(training_curves_html(history))
    return {"trainjob": f"{namespace}/{manifest['metadata']['name']}", "model_uri": model_uri,
            "num_nodes": num_nodes, "gpus_per_node": gpu_count}


if __name__ == "__main__":
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper, value):  # the shell script as a readable block
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    print("# Example TrainJob: what sora_pipelines.trainjob.render_trainjob() creates for one run, here for\n"
          "# sora_pipelines.trainjob.EXAMPLE. Not part of any kustomization (nothing trains at `kubectl apply`).\n"
          "# Regenerate: python -m sora_pipelines.trainjob > k8s/templates/trainjob.yaml")
    print(yaml.dump(render_trainjob(**EXAMPLE), Dumper=_Dumper, sort_keys=False, width=110), end="")
