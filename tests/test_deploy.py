"""Deployment files checked without a cluster: rendered overlays, schemas, cross-file agreement, CI and
Dockerfile syntax."""

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import sora_components
import sora_pipelines
import yaml

from tests.k8s_render import render, render_kubectl, render_python

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["dev", "prod"]
K8S_VERSION = "1.30.0"
# CRDs whose schemas the validator does not ship: checked for their required fields instead.
CRD_REQUIRED = {
    "TrainJob": [("spec", "runtimeRef", "name"), ("spec", "trainer", "image"), ("spec", "trainer", "numNodes")],
    "ServiceMonitor": [("spec", "selector", "matchLabels"), ("spec", "endpoints")],
}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render(ROOT / "k8s" / "overlays" / request.param)


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _by_kind(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def test_every_resource_is_schema_valid(rendered):
    _, docs = rendered
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_REQUIRED:
            for path in CRD_REQUIRED[doc["kind"]]:
                assert _get(doc, path), (doc["kind"], path)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_serving_probes_ports_security_and_scaling(rendered):
    overlay, docs = rendered
    dep = _by_kind(docs, "Deployment", "sora-serving")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["ports"][0]["containerPort"] == 3000 and "--port" in c["command"] and "3000" in c["command"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {"/tmp", env["BENTOML_HOME"], env["HF_HOME"]} <= mounts  # writable dirs on a read-only root
    assert env["SORA_MODEL_URI"] == "models:/sora@champion"
    assert env["MLFLOW_TRACKING_URI"].endswith(":5000")
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert _by_kind(docs, "HorizontalPodAutoscaler", "sora-serving") and _by_kind(docs, "PodDisruptionBudget")
    svc = _by_kind(docs, "Service", "sora-serving")[0]
    assert svc["spec"]["ports"][0]["port"] == 3000
    assert all(d["metadata"]["namespace"] == {"dev": "sora-dev", "prod": "sora"}[overlay] for d in docs)


def test_images_and_secrets_agree_with_components_and_pipeline(rendered):
    overlay, docs = rendered
    images = {c["image"] for d in docs for c in _containers(d)}
    base_repo = sora_components.DEFAULT_IMAGE.split(":")[0]
    assert any(i.startswith(base_repo + ":") for i in images)
    trainjob = _by_kind(docs, "TrainJob")[0]
    assert trainjob["spec"]["trainer"]["image"] == sora_components.TRAINER_IMAGE
    secret = sora_pipelines.ClusterSettings().mlflow_secret
    refs = {e["secretRef"]["name"] for d in docs for c in _containers(d) for e in c.get("envFrom", [])}
    assert secret in refs
    role = _by_kind(docs, "Role", "sora-pipeline")[0]
    assert any(secret in r.get("resourceNames", []) for r in role["rules"])
    assert any("patch" in r["verbs"] and "deployments" in r["resources"] for r in role["rules"])
    assert _by_kind(docs, "ServiceAccount", "sora-pipeline") and _by_kind(docs, "RoleBinding", "sora-pipeline")
    for d in docs:  # secrets only by reference
        assert d["kind"] != "Secret"


def test_mlflow_backend_and_artifacts(rendered):
    _, docs = rendered
    pg = _by_kind(docs, "StatefulSet", "sora-mlflow-postgres")[0]
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    mlflow = _by_kind(docs, "Deployment", "sora-mlflow")[0]["spec"]["template"]["spec"]["containers"][0]
    cmd = " ".join(mlflow["args"])
    assert "--host 0.0.0.0" in cmd and "postgresql://" in cmd and "--artifacts-destination" in cmd


def test_prod_trains_on_gpu_nodes():
    docs = render(ROOT / "k8s" / "overlays" / "prod")
    tj = _by_kind(docs, "TrainJob")[0]
    assert tj["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    override = tj["spec"]["podTemplateOverrides"][0]["spec"]
    assert override["nodeSelector"] and override["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert _by_kind(docs, "ServiceMonitor", "sora-serving")
    dev = _by_kind(render(ROOT / "k8s" / "overlays" / "dev"), "TrainJob")[0]
    assert dev["spec"]["trainer"]["numNodes"] == 1


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed; nothing to compare with")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_renderer_matches_kubectl(overlay):
    def canon(node):  # merge order of named list items is not meaningful
        if isinstance(node, dict):
            return {k: canon(v) for k, v in node.items()}
        if isinstance(node, list):
            items = [canon(v) for v in node]
            if all(isinstance(v, dict) and "name" in v for v in items):
                items.sort(key=lambda v: str(v["name"]))
            return items
        return node

    def norm(docs):
        return sorted(yaml.safe_dump(canon(d), sort_keys=True) for d in docs)

    path = ROOT / "k8s" / "overlays" / overlay
    assert norm(render_python(path)) == norm(render_kubectl(path))


def _containers(doc):
    spec = doc.get("spec", {})
    tmpl = spec.get("template", {}).get("spec", {})
    return tmpl.get("containers", [])


def test_example_secrets_hold_no_real_values():
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "secrets.example.yaml").read_text()))
    for d in docs:
        for key, value in d["stringData"].items():
            if "PASSWORD" in key or "SECRET" in key or "ACCESS_KEY" in key:
                assert "CHANGE-ME" in value


def test_workflows_parse_and_trigger_as_documented():
    test = yaml.safe_load((ROOT / ".github/workflows/test.yml").read_text())
    assert "make test" in str(test["jobs"])
    retrain = yaml.safe_load((ROOT / ".github/workflows/retrain.yml").read_text())
    triggers = retrain[True]  # YAML 1.1 reads the key `on` as True
    assert {"schedule", "workflow_dispatch", "repository_dispatch", "push"} <= set(triggers)
    assert triggers["push"]["paths"] and triggers["schedule"][0]["cron"]
    steps = " ".join(str(s.get("run", "")) for s in retrain["jobs"]["submit"]["steps"])
    assert "sora pipeline compile" in steps and "sora pipeline submit" in steps
    assert "secrets.KFP_TOKEN" in (ROOT / ".github/workflows/retrain.yml").read_text()


INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


@pytest.mark.parametrize("path", ["Dockerfile", "docker/trainer.Dockerfile"])
def test_dockerfiles_are_well_formed(path):
    text = (ROOT / path).read_text()
    lines, cont = [], False
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not cont:
            lines.append(line)
        cont = line.rstrip().endswith("\\")
    keywords = [ln.split()[0].upper() for ln in lines]
    assert keywords[0] == "FROM" and set(keywords) <= INSTRUCTIONS
    assert "USER" in keywords  # not root at run time
    for src in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / src).exists(), src
    if "trainer" in path:
        assert "torch-2.2/cu121" in text and "2.2.1-cuda12.1" in text


def test_bentofile_and_requirements():
    bento = yaml.safe_load((ROOT / "serving/bentofile.yaml").read_text())
    assert bento["service"] == "service:SoraService"
    assert (ROOT / "serving" / bento["python"]["requirements_txt"]).exists()
    assert any(e["name"] == "SORA_MODEL_URI" for e in bento["envs"])
