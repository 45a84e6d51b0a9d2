"""Deployment files checked without a cluster: rendered overlays, schemas, cross-file agreement, cluster
hardening (network policies, MLflow auth, secrets, security contexts, tokens, RBAC), CI and Dockerfile
syntax.

Over 400 lines on purpose: the cross-file checks read the same rendered overlays once.
"""

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import sora_components
import sora_pipelines
import yaml
from sora_pipelines import trainjob

from tests.k8s_render import (
    baked_overlay,
    mlflow_server_command,
    mlflow_server_secret_env,
    render,
    render_kubectl,
    render_python,
    serving_container,
)

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["dev", "prod"]
NAMESPACE = {"dev": "sora-dev", "prod": "sora"}
K8S_VERSION = "1.30.0"
# CRDs whose schemas the validator does not ship: checked for their required fields instead.
CRD_REQUIRED = {
    "ServiceMonitor": [("spec", "selector", "matchLabels"), ("spec", "endpoints")],
}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY$|BACKEND_STORE_URI")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render(ROOT / "k8s" / "overlays" / request.param)


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _by_kind(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _pod_templates(docs):
    """(owner, pod template) for every workload the overlay renders."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out.append((d, d["spec"]["template"]))
    return out


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_every_resource_is_schema_valid(rendered):
    _, docs = rendered
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_REQUIRED:
            for path in CRD_REQUIRED[doc["kind"]]:
                assert _get(doc, path), (doc["kind"], path)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_serving_probes_ports_security_and_drain(rendered):
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
    svc = _by_kind(docs, "Service", "sora-serving")[0]
    assert svc["spec"]["ports"][0]["port"] == 3000
    assert all(d["metadata"]["namespace"] == NAMESPACE[overlay] for d in docs)
    # SIGTERM drain: endpoints drop the pod during preStop, then BentoML finishes in-flight requests
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = int(pre_stop[1])
    timeout = re.search(r'traffic=\{"timeout":\s*(\d+)', (ROOT / "serving" / "service.py").read_text())
    drain += int(timeout.group(1)) if timeout else 0
    assert pod["terminationGracePeriodSeconds"] > drain


def test_replicas_hpa_and_pdb_agree(rendered):
    overlay, docs = rendered
    dep = _by_kind(docs, "Deployment", "sora-serving")[0]
    hpa = _by_kind(docs, "HorizontalPodAutoscaler", "sora-serving")[0]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "sora-serving"
    assert "replicas" not in dep["spec"], overlay  # the HPA owns the scale: an apply must not reset it
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"], overlay
    pdb = _by_kind(docs, "PodDisruptionBudget", "sora-serving")[0]["spec"]
    # a node drain must be possible at the smallest size
    if "maxUnavailable" in pdb:
        assert int(pdb["maxUnavailable"]) >= 1
    else:
        assert int(pdb["minAvailable"]) < hpa["minReplicas"]


def test_mlflow_survives_a_node_drain(rendered):
    """Every serving pod loads its model through MLflow at start: more than one replica, and a PDB that
    lets a drain take one at a time but never all."""
    overlay, docs = rendered
    dep = _by_kind(docs, "Deployment", "sora-mlflow")[0]
    replicas = dep["spec"]["replicas"]
    assert replicas >= 2, overlay
    env = _env(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")  # shared state, not a pod's file
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pdbs = [p for p in _by_kind(docs, "PodDisruptionBudget") if _selects(p["spec"]["selector"], labels)]
    assert len(pdbs) == 1, overlay
    spec = pdbs[0]["spec"]
    available = int(spec["minAvailable"]) if "minAvailable" in spec else replicas - int(spec["maxUnavailable"])
    assert 1 <= available < replicas


def test_baked_model_component_serves_without_the_registry(tmp_path):
    """prod loads the champion from the registry; the baked-model component (tested here and, with the
    registry down, in tests/test_baked_serving.py) serves a model inside the image instead."""
    prod = serving_container(render(ROOT / "k8s" / "overlays" / "prod"))
    assert "SORA_MODEL_DIR" not in _env(prod) and _env(prod)["SORA_MODEL_URI"]["value"] == "models:/sora@champion"
    overlay = baked_overlay(tmp_path / "baked")
    docs = render(overlay)
    for doc in docs:
        if doc["kind"] not in CRD_REQUIRED:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    c = serving_container(docs)
    assert c["image"] == "ghcr.io/sora-ml/sora-serving-baked:v7"
    assert _env(c)["SORA_MODEL_DIR"]["value"] == "/opt/sora/model"
    assert c["command"] == prod["command"]  # the same service, only the model source differs
    # the baked image puts the model where the component points
    dockerfile = (ROOT / "docker" / "baked.Dockerfile").read_text()
    assert "SORA_MODEL_DIR=/opt/sora/model" in dockerfile and " /opt/sora/model/" in dockerfile
    if shutil.which("kubectl"):  # the Python renderer reads components as kustomize does
        assert _norm(render_python(overlay)) == _norm(render_kubectl(overlay))


def test_every_image_is_pinned_by_the_overlay(rendered):
    overlay, docs = rendered
    kust = yaml.safe_load((ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text())
    pinned = {i["name"]: i["newTag"] for i in kust.get("images", [])}
    images = [c["image"] for _, t in _pod_templates(docs)
              for c in t["spec"].get("containers", []) + t["spec"].get("initContainers", [])]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name in pinned and tag == pinned[name], (overlay, image)


def test_no_training_runs_at_apply():
    """TrainJobs are created per run (pipelines/trainjob.py); the template is in no kustomization."""
    for overlay in OVERLAYS:
        assert not _by_kind(render(ROOT / "k8s" / "overlays" / overlay), "TrainJob")
    listed = set()
    for kust in (ROOT / "k8s").rglob("kustomization.yaml"):
        for res in yaml.safe_load(kust.read_text()).get("resources", []):
            listed.add((kust.parent / res).resolve())
    template = (ROOT / "k8s" / "templates" / "trainjob.yaml").resolve()
    assert template.exists() and template not in listed and template.parent not in listed


def test_mlflow_allowed_hosts_cover_the_service_names(rendered):
    overlay, docs = rendered
    ns = NAMESPACE[overlay]
    c = _by_kind(docs, "Deployment", "sora-mlflow")[0]["spec"]["template"]["spec"]["containers"][0]
    args = c.get("command", []) + c.get("args", [])
    value = args[args.index("--allowed-hosts") + 1] if "--allowed-hosts" in args else \
        _env(c)["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]
    hosts = set(value.split(","))
    for name in ("sora-mlflow", f"sora-mlflow.{ns}", f"sora-mlflow.{ns}.svc", f"sora-mlflow.{ns}.svc.cluster.local"):
        assert {name, f"{name}:5000"} <= hosts, name
    assert "localhost" in hosts and "*" not in hosts
    # every in-cluster client addresses the server by one of those names
    serving = _by_kind(docs, "Deployment", "sora-serving")[0]["spec"]["template"]["spec"]["containers"][0]
    uri = _env(serving)["MLFLOW_TRACKING_URI"]["value"]
    assert re.match(r"https?://([^/]+)", uri).group(1) in hosts
    assert trainjob.EXAMPLE["tracking_uri"].split("//")[1] in hosts


def test_mlflow_backend_auth_and_artifacts(rendered):
    overlay, docs = rendered
    pg = _by_kind(docs, "StatefulSet", "sora-mlflow-postgres")[0]
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    pod = _by_kind(docs, "Deployment", "sora-mlflow")[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c["command"] + c["args"]
    assert args[:2] == ["mlflow", "server"] and args[args.index("--app-name") + 1] == "basic-auth"
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--serve-artifacts" in args
    env = _env(c)
    # the backend store URI is an env var built by the kubelet from the Postgres Secret, whose
    # variables must come first for $(VAR) to expand
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql://") and "@sora-mlflow-postgres:5432/" in uri
    names = [e["name"] for e in c["env"]]
    for ref in re.findall(r"\$\((\w+)\)", uri):
        assert "secretKeyRef" in env[ref]["valueFrom"] and names.index(ref) < names.index("MLFLOW_BACKEND_STORE_URI")
    # artifacts: destination and write keys from the server's own Secret
    assert [s["secretRef"]["name"] for s in c["envFrom"]] == ["sora-mlflow-server"]
    # auth: config file from a Secret volume; admin account and Flask key from a Secret
    config = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    mount = next(m for m in c["volumeMounts"] if config.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "sora-mlflow-auth"
    assert config.endswith("/" + volume["secret"]["items"][0]["path"])
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "sora-mlflow-auth"
    command, literal = mlflow_server_command(overlay)
    assert command == args and "MLFLOW_SERVER_ALLOWED_HOSTS" in literal
    assert not any("$(" in v for v in literal.values())
    assert "MLFLOW_BACKEND_STORE_URI" in mlflow_server_secret_env(overlay)


def test_no_secret_on_a_command_line(rendered):
    _, docs = rendered
    for owner, template in _pod_templates(docs):
        for c in template["spec"].get("containers", []) + template["spec"].get("initContainers", []):
            secret_vars = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
                           and SECRETISH.search(e["valueFrom"]["secretKeyRef"]["key"])}
            secret_vars |= {e["name"] for e in c.get("env", []) if SECRETISH.search(e["name"])}
            lines = [c.get("command", []) + c.get("args", [])]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                lines.append(c.get(probe, {}).get("exec", {}).get("command", []))
            lines.append(c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
            text = " ".join(" ".join(line) for line in lines)
            for var in secret_vars:
                assert not re.search(rf"\$\(?\{{?{var}\b", text), (owner["metadata"]["name"], c["name"], var)
            assert not re.search(r"://[^/\s:]+:[^@\s]+@", text), (owner["metadata"]["name"], "credentials in a URI")


def _ours(labels):
    return {"ns": None, "pod": labels}  # a pod in the overlay's namespace


ADDRESS = {"ns": None, "pod": None}  # outside the cluster
OTHER_POD = {"ns": {"kubernetes.io/metadata.name": "other"}, "pod": {"app": "other"}}
DNS = {"ns": {"kubernetes.io/metadata.name": "kube-system"}, "pod": {"k8s-app": "kube-dns"}}
KFP_API = {"ns": {"kubernetes.io/metadata.name": "kubeflow"}, "pod": {"app": "ml-pipeline"}}
PIPELINE_LABELS = {"pipelines.kubeflow.org/v2_component": "true"}
PROFILE_PIPELINE = {"ns": {"kubernetes.io/metadata.name": "team-a", "sora.ml/pipeline-namespace": "true"},
                    "pod": PIPELINE_LABELS}
OTHER_PIPELINE = {"ns": {"kubernetes.io/metadata.name": "team-b"}, "pod": PIPELINE_LABELS}


def test_network_policies_allow_only_the_needed_flows(rendered):
    _, docs = rendered
    policies = _by_kind(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) ==
            {"Ingress", "Egress"} and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "no default-deny policy"
    serving, mlflow, postgres, users = (_ours({"app.kubernetes.io/name": n}) for n in
                                        ("sora-serving", "sora-mlflow", "sora-mlflow-postgres", "sora-mlflow-users"))
    trainer, pipeline = _ours(dict(trainjob.POD_LABELS)), _ours(PIPELINE_LABELS)
    needed = [(ADDRESS, serving, 3000), (OTHER_POD, serving, 3000), (serving, mlflow, 5000),
              (pipeline, mlflow, 5000), (PROFILE_PIPELINE, mlflow, 5000), (trainer, mlflow, 5000),
              (users, mlflow, 5000), (trainer, trainer, 29400), (mlflow, postgres, 5432), (mlflow, ADDRESS, 443),
              (trainer, ADDRESS, 443), (pipeline, ADDRESS, 443), (pipeline, KFP_API, 8887), (serving, DNS, 53),
              (postgres, DNS, 53)]
    refused = [(ADDRESS, mlflow, 5000), (OTHER_POD, mlflow, 5000), (OTHER_PIPELINE, mlflow, 5000),
               (ADDRESS, postgres, 5432), (OTHER_POD, postgres, 5432), (serving, postgres, 5432),
               (pipeline, postgres, 5432), (trainer, postgres, 5432), (users, postgres, 5432),
               (serving, ADDRESS, 443), (serving, serving, 3000), (serving, ADDRESS, 53), (postgres, ADDRESS, 443),
               (users, ADDRESS, 443), (ADDRESS, trainer, 29400), (OTHER_POD, trainer, 29400),
               (serving, trainer, 29400)]
    for src, dst, port in needed:
        assert _flow(policies, src, dst, port), (src, dst, port)
    for src, dst, port in refused:
        assert not _flow(policies, src, dst, port), (src, dst, port)
    # every workload has its own policy beyond the default deny and DNS
    for owner, template in _pod_templates(docs):
        labels = template["metadata"]["labels"]
        assert any(p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], labels) for p in policies), \
            owner["metadata"]["name"]


def _selects(selector, labels):
    assert not selector.get("matchExpressions"), "the evaluator below reads matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(rule_peer, peer):
    if "ipBlock" in rule_peer:
        return peer["pod"] is None
    if "namespaceSelector" in rule_peer:
        return peer["ns"] is not None and _selects(rule_peer["namespaceSelector"], peer["ns"]) and \
            _selects(rule_peer.get("podSelector", {}), peer["pod"])
    return peer["ns"] is None and peer["pod"] is not None and _selects(rule_peer["podSelector"], peer["pod"])


def _allows(policies, direction, pod, peer, port):
    """Whether our ``pod`` may send to (Egress) / receive from (Ingress) ``peer`` on TCP/UDP ``port``."""
    applicable = [p for p in policies if direction in p["spec"]["policyTypes"]
                  and _selects(p["spec"]["podSelector"], pod)]
    if not applicable:
        return True
    key, side = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for p in applicable:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(side)
            ports = rule.get("ports")
            if (not peers or any(_peer_matches(x, peer) for x in peers)) and \
                    (not ports or any(x.get("port") == port for x in ports)):
                return True
    return False


def _is_ours(peer):
    return peer["ns"] is None and peer["pod"] is not None


def _flow(policies, src, dst, port):
    """Both ends agree: the source's egress (when it is ours) and the destination's ingress (when ours)."""
    ours = _is_ours
    return (not ours(src) or _allows(policies, "Egress", src["pod"], dst, port)) and \
        (not ours(dst) or _allows(policies, "Ingress", dst["pod"], src, port))


def test_security_context_on_every_container(rendered):
    _, docs = rendered
    templates = [(o["metadata"]["name"], t["spec"]) for o, t in _pod_templates(docs)]
    tj = trainjob.render_trainjob(**trainjob.EXAMPLE)
    patch = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    templates.append(("trainjob", patch["template"]["spec"]["template"]["spec"]))
    for name, spec in templates:
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"], name
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), (name, c["name"])


def test_tokens_only_where_used_and_minimal_rbac(rendered):
    _, docs = rendered
    accounts = {d["metadata"]["name"]: d for d in _by_kind(docs, "ServiceAccount")}
    assert [n for n, sa in accounts.items() if sa.get("automountServiceAccountToken", True)] == ["sora-pipeline"]
    assert accounts[trainjob.SERVICE_ACCOUNT]["automountServiceAccountToken"] is False
    for owner, template in _pod_templates(docs):  # none of Sora's own pods calls the Kubernetes API
        spec = template["spec"]
        sa = accounts.get(spec.get("serviceAccountName", "default"), {})
        assert spec.get("automountServiceAccountToken", sa.get("automountServiceAccountToken", True)) is False, \
            owner["metadata"]["name"]
    role = _by_kind(docs, "Role", "sora-pipeline")[0]
    for rule in role["rules"]:  # promotion moves an MLflow alias: nothing in Kubernetes to patch or read
        assert not {"escalate", "bind", "impersonate", "*"} & set(rule["verbs"]), rule
        assert not {"deployments", "secrets", "roles", "rolebindings", "*"} & set(rule["resources"]), rule
        if {"patch", "update"} & set(rule["verbs"]):  # only Argo's executor reporting a step's result
            assert rule["apiGroups"] == ["argoproj.io"] and rule["resources"] == ["workflowtaskresults"], rule
        if "configmaps" in rule["resources"]:
            assert rule["resourceNames"] == ["kfp-launcher"] and rule["verbs"] == ["get"], rule
    assert any("trainjobs" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    binding = _by_kind(docs, "RoleBinding", "sora-pipeline")[0]
    assert [s["name"] for s in binding["subjects"]] == ["sora-pipeline"]
    assert not _by_kind(docs, "ClusterRole") and not _by_kind(docs, "ClusterRoleBinding")


def test_mlflow_accounts_pipeline_writes_serving_reads(rendered):
    _, docs = rendered
    secret = sora_pipelines.ClusterSettings().mlflow_secret
    serving = _by_kind(docs, "Deployment", "sora-serving")[0]["spec"]["template"]["spec"]["containers"][0]
    env = _env(serving)
    assert not serving.get("envFrom") and not any(n.startswith("AWS_") for n in env)  # no object-store keys
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env.values() if "valueFrom" in e}
    assert refs == {"sora-serving-mlflow"}
    assert env["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"]["key"] == "MLFLOW_TRACKING_USERNAME"
    # only the MLflow server holds the object-store write keys
    holders = {o["metadata"]["name"] for o, t in _pod_templates(docs) for c in t["spec"]["containers"]
               for s in c.get("envFrom", []) if s.get("secretRef", {}).get("name") == "sora-mlflow-server"}
    assert holders == {"sora-mlflow"}
    # the bootstrap creates the pipeline's account from the pipeline's Secret, serving's from its own
    job = _by_kind(docs, "Job", "sora-mlflow-users")[0]["spec"]["template"]["spec"]
    jenv = _env(job["containers"][0])
    assert jenv["SORA_PIPELINE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == secret
    assert jenv["SORA_SERVING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "sora-serving-mlflow"
    script = _by_kind(docs, "ConfigMap", "sora-mlflow-users")[0]["data"]["ensure_users.py"]
    compile(script, "ensure_users.py", "exec")
    grants = re.findall(r"^grant\((\w+),", script, re.M)  # top-level calls
    assert grants and set(grants) == {"pipeline"}  # serving keeps default_permission = READ


def test_images_and_secrets_agree_with_components_and_pipeline(rendered):
    _, docs = rendered
    images = {c["image"] for _, t in _pod_templates(docs) for c in t["spec"]["containers"]}
    base_repo = sora_components.DEFAULT_IMAGE.split(":")[0]
    assert any(i.startswith(base_repo + ":") for i in images)
    assert trainjob.EXAMPLE["image"].split(":")[0] == sora_components.TRAINER_IMAGE.split(":")[0]
    assert _by_kind(docs, "ServiceAccount", "sora-pipeline") and _by_kind(docs, "RoleBinding", "sora-pipeline")
    for d in docs:  # secrets only by reference
        assert d["kind"] != "Secret"
    # every Secret the manifests reference is documented, with every key they read
    example = {d["metadata"]["name"]: d["stringData"] for d in
               yaml.safe_load_all((ROOT / "k8s" / "secrets.example.yaml").read_text())}
    for o, t in _pod_templates(docs):
        spec = t["spec"]
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in example[ref["name"]], (o["metadata"]["name"], ref)
            for s in c.get("envFrom", []):
                assert s["secretRef"]["name"] in example
        for v in spec.get("volumes", []):
            if "secret" in v:
                assert all(i["key"] in example[v["secret"]["secretName"]] for i in v["secret"]["items"])
    settings = sora_pipelines.ClusterSettings()
    assert set(settings.secret_env) <= set(example[settings.mlflow_secret])
    assert set(trainjob.SECRET_ENV) | {"MLFLOW_TRACKING_URI"} <= set(example[settings.mlflow_secret])


def test_prod_scrapes_metrics():
    assert _by_kind(render(ROOT / "k8s" / "overlays" / "prod"), "ServiceMonitor", "sora-serving")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed; nothing to compare with")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_renderer_matches_kubectl(overlay):
    path = ROOT / "k8s" / "overlays" / overlay
    assert _norm(render_python(path)) == _norm(render_kubectl(path))


def _canon(node):  # merge order of named list items is not meaningful
    if isinstance(node, dict):
        return {k: _canon(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [_canon(v) for v in node]
        if all(isinstance(v, dict) and "name" in v for v in items):
            items.sort(key=lambda v: str(v["name"]))
        return items
    return node


def _norm(docs):
    return sorted(yaml.safe_dump(_canon(d), sort_keys=True) for d in docs)


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
    text = (ROOT / ".github/workflows/retrain.yml").read_text()
    assert "secrets.KFP_TOKEN" in text and "--token" not in text  # the token is read from the environment
    assert "--tracking-uri" not in steps  # the cluster's Secret says where MLflow is
    # images by digest, never a fixed tag: the compile and submit steps get SORA_IMAGE / SORA_TRAINER_IMAGE
    # from the digests images.yml passes (workflow_call) or resolves for the last commit that changed them
    assert "workflow_call" in triggers and {"sora_image", "trainer_image"} <= set(triggers["workflow_call"]["inputs"])
    for step in retrain["jobs"]["submit"]["steps"]:
        if "sora pipeline" in str(step.get("run", "")):
            assert step["env"]["SORA_IMAGE"] == "${{ steps.images.outputs.sora }}", step["name"]
            assert step["env"]["SORA_TRAINER_IMAGE"] == "${{ steps.images.outputs.trainer }}", step["name"]
    assert not re.search(r"sora(-trainer)?:\d", text)


def test_images_are_built_and_pushed_by_commit_then_the_pipeline_runs_them_by_digest():
    wf = yaml.safe_load((ROOT / ".github/workflows/images.yml").read_text())
    build = wf["jobs"]["build"]
    pushes = [s for s in build["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert {s["with"]["file"] for s in pushes} == {"Dockerfile", "docker/trainer.Dockerfile"}
    for s in pushes:
        assert s["with"]["push"] is True and s["with"]["tags"].endswith(":${{ github.sha }}")
        assert "SORA_GIT_COMMIT=${{ github.sha }}" in s["with"]["build-args"]  # reaches sora.registry.buildinfo
    assert any(str(s.get("uses", "")).startswith("docker/login-action@") for s in build["steps"])
    assert wf["permissions"]["packages"] == "write"
    refs = build["outputs"]
    refs_step = next(s for s in build["steps"] if s.get("id") == "refs")["run"]
    assert "@${{ steps.sora.outputs.digest }}" in refs_step and "@${{ steps.trainer.outputs.digest }}" in refs_step
    submit = wf["jobs"]["submit"]
    assert submit["uses"] == "./.github/workflows/retrain.yml" and submit["needs"] == "build"
    assert submit["with"] == {"sora_image": "${{ needs.build.outputs.sora }}",
                              "trainer_image": "${{ needs.build.outputs.trainer }}"} and set(refs) == {"sora", "trainer"}
    # every change to what an image contains rebuilds it: each COPY source is under a trigger path
    paths = wf[True]["push"]["paths"]
    for dockerfile in ("Dockerfile", "docker/trainer.Dockerfile"):
        for line in re.findall(r"^COPY (?!--from)(.+)$", (ROOT / dockerfile).read_text(), re.M):
            for src in line.split()[:-1]:
                src = src.rstrip("/")
                assert any(src == p or (p.endswith("/**") and (src + "/").startswith(p[:-2])) for p in paths), \
                    (dockerfile, src)


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
    # both images: Python 3.11 from the base tag, every dependency from the lock (tests/test_images.py)
    assert keywords.count("FROM") == 1 and re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "-c requirements.lock" in text


def test_bentofile_and_requirements():
    bento = yaml.safe_load((ROOT / "serving/bentofile.yaml").read_text())
    assert bento["service"] == "service:SoraService"
    assert (ROOT / "serving" / bento["python"]["requirements_txt"]).exists()
    assert any(e["name"] == "SORA_MODEL_URI" for e in bento["envs"])


def test_images_can_run_what_the_manifests_start():
    """The MLflow pod runs `mlflow server --app-name basic-auth` from the project image, which needs
    MLflow's auth extra (Flask-WTF); the serving preStop hook needs `sleep` (any Debian-based image)."""
    deps = re.search(r"dependencies\s*=\s*\[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S).group(1)
    assert re.search(r"mlflow\[[^\]]*auth", deps)
    assert re.search(r"pip install (--no-deps )?\.", (ROOT / "Dockerfile").read_text())
