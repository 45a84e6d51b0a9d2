"""Render the kustomize overlays: ``kubectl kustomize`` when kubectl is there, else a small Python
equivalent covering what k8s/ uses (resources, components, namespace, labels, images, strategic-merge and
JSON 6902 patches). A test checks the two agree wherever both run."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import yaml


def render(overlay: Path) -> list[dict]:
    if shutil.which("kubectl"):
        return render_kubectl(overlay)
    return render_python(overlay)


def render_kubectl(overlay: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, b in enumerate(out) if b["name"] == item["name"]), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = _merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def _json6902(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p for p in op["path"].split("/") if p]
        node = doc
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        last = parts[-1]
        if op["op"] in ("replace", "add"):
            if isinstance(node, list):
                idx = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(idx, op["value"])
                else:
                    node[idx] = op["value"]
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
    return doc


def _set_images(doc: dict, images: list[dict]) -> None:
    def visit(node):
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                for c in node.get(key, []) or []:
                    name, _, tag = c["image"].partition(":")
                    for img in images:
                        if img["name"] == name:
                            c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}".rstrip(":")
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(doc)


def _patch(docs: list[dict], directory: Path, patches: list[dict]) -> None:
    by_key = {_key(d): i for i, d in enumerate(docs)}
    for patch in patches:
        if "path" in patch:
            for p in yaml.safe_load_all((directory / patch["path"]).read_text()):
                i = by_key[_key(p)]
                docs[i] = _merge(docs[i], p)
        else:
            t = patch["target"]
            i = by_key[(t["kind"], t["name"])]
            docs[i] = _json6902(docs[i], yaml.safe_load(patch["patch"]))


def render_python(directory: Path) -> list[dict]:
    directory = Path(directory)
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs += render_python(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    # components first (kustomize applies them after the resources, before this kustomization's patches)
    for comp in kust.get("components", []):
        comp_dir = directory / comp
        comp_kust = yaml.safe_load((comp_dir / "kustomization.yaml").read_text())
        assert comp_kust["kind"] == "Component", comp_dir
        docs += [d for res in comp_kust.get("resources", []) for d in yaml.safe_load_all((comp_dir / res).read_text()) if d]
        _patch(docs, comp_dir, comp_kust.get("patches", []))
        if comp_kust.get("images"):
            for d in docs:
                _set_images(d, comp_kust["images"])
    _patch(docs, directory, kust.get("patches", []))
    for lab in kust.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(lab["pairs"])
    if kust.get("images"):
        for d in docs:
            _set_images(d, kust["images"])
    if kust.get("namespace"):
        for d in docs:
            d["metadata"]["namespace"] = kust["namespace"]
            if d["kind"] == "RoleBinding":
                for s in d.get("subjects", []):
                    s.setdefault("namespace", kust["namespace"])
                    s["namespace"] = kust["namespace"]
    return docs


OVERLAYS_DIR = Path(__file__).resolve().parents[1] / "k8s" / "overlays"


def _mlflow_container(overlay: str | Path) -> dict:
    path = Path(overlay)
    docs = render(path if path.is_dir() else OVERLAYS_DIR / str(overlay))
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sora-mlflow")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow")


def mlflow_server_command(overlay: str) -> tuple[list[str], dict[str, str]]:
    """The rendered MLflow container's command + args, and its env values written literally in the manifest.

    ``overlay`` is an overlay name (``dev``, ``prod``) or directory. Left out of the env: values from
    Secrets and values composed from other variables (``$(VAR)``, e.g. ``MLFLOW_BACKEND_STORE_URI``);
    :func:`mlflow_server_secret_env` names them, and a local run supplies its own (backend store,
    ``MLFLOW_AUTH_CONFIG_PATH`` pointing at a local ini, admin account, Flask secret key, artifact root).
    """
    c = _mlflow_container(overlay)
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e and "$(" not in e["value"]}
    return list(c.get("command", [])) + list(c.get("args", [])), env


def mlflow_server_secret_env(overlay: str) -> dict[str, str]:
    """Env of the rendered MLflow container that k8s fills from Secrets or composes: name → where from
    (``secret/KEY``, ``secret/*`` for a whole-Secret ``envFrom``, or the ``$(VAR)`` template)."""
    c = _mlflow_container(overlay)
    out: dict[str, str] = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            out[e["name"]] = f"{ref['name']}/{ref['key']}"
        elif "$(" in e.get("value", ""):
            out[e["name"]] = e["value"]
    for src in c.get("envFrom", []):
        if "secretRef" in src:
            out[f"{src['secretRef']['name']}/*"] = f"{src['secretRef']['name']}/*"
    return out


COMPONENTS_DIR = Path(__file__).resolve().parents[1] / "k8s" / "components"


def baked_overlay(tmp: Path, base_overlay: str = "prod", tag: str = "v7") -> Path:
    """An overlay (written under ``tmp``) that adds k8s/components/baked-model to ``base_overlay`` and pins
    the baked image, the way a team would switch serving to a baked model."""
    import os

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(OVERLAYS_DIR / base_overlay, tmp)],
            "components": [os.path.relpath(COMPONENTS_DIR / "baked-model", tmp)],
            "images": [{"name": "sora-serving-baked", "newName": "ghcr.io/sora-ml/sora-serving-baked", "newTag": tag}]}
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    return tmp


def serving_container(docs: list[dict]) -> dict:
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sora-serving")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "sora")
