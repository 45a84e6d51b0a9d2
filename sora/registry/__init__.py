"""MLflow registry: log a training run, register the model, gate and move the ``champion`` alias.

The only module that imports MLflow. Every function takes the tracking URI explicitly; the CLI and
components resolve it (flag > ``MLFLOW_TRACKING_URI`` > ``sqlite:///.sora/mlflow.db``).

Aliases: a new version gets ``challenger``. :func:`decide` scores the challenger and the current
``champion`` on the challenger's split of the same data; :func:`promote` moves ``champion`` and
records the version it replaced as the tag ``previous_champion``, which :func:`rollback` follows.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch

from sora.config import SoraConfig
from sora.data import Dataset
from sora.evaluate import evaluate_split, mostpop_scores, rebuild_split
from sora.promotion import Decision, decide
from sora.recommender import Recommender
from sora.split import Split

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///.sora/mlflow.db"
EXPERIMENT = "sora"


def _client(tracking_uri: str):
    import mlflow
    from mlflow import MlflowClient

    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _experiment_id(client, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):  # keep artifacts beside the local database
        location = (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def pip_requirements() -> list[str]:
    """The stack that reproduces the model: Sora's own pins (from its installed metadata)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        reqs = [r.split(";")[0].strip() for r in requires("sora") or [] if "extra ==" not in r]
        return [f"sora=={version('sora')}", *reqs]
    except PackageNotFoundError:
        return []


@dataclass
class Registered:
    run_id: str
    version: str
    model_uri: str


def log_and_register(tracking_uri: str, model_name: str, model_dir: str | Path, eval_report: dict[str, Any],
                     validation_html: str | Path | None = None, extra_artifacts: dict[str, str | Path] | None = None,
                     run_name: str | None = None) -> Registered:
    """One MLflow run: params, per-epoch metrics, final metrics, plots, reports and the pyfunc model,
    registered under ``model_name`` with alias ``challenger``."""
    import mlflow
    from mlflow.models import infer_signature

    from sora.plots import training_curves_png
    from sora.registry.pyfunc import SoraPyfunc, recommend_frame

    client = _client(tracking_uri)
    rec = Recommender.load(model_dir)
    exp_id = _experiment_id(client, tracking_uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        params = _flat(rec.config.to_dict())
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_params({"data_fingerprint": rec.meta.get("data_fingerprint"), "encoder_id": rec.meta.get("encoder_id"),
                           "num_users": rec.num_users, "num_items": rec.num_items})
        for h in rec.meta.get("history", []):
            mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in h.items()
                                if k != "epoch" and isinstance(v, (int, float))}, step=int(h["epoch"]))
        final = {f"{part}_{k}": v for part in ("valid", "test") for k, v in eval_report.get(part, {}).items()}
        for name, m in eval_report.get("baselines", {}).items():
            final.update({f"baseline_{name}_{k}": v for k, v in m.items()})
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in final.items() if isinstance(v, (int, float))})
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "evaluation.json").write_text(json.dumps(eval_report, indent=2))
            mlflow.log_artifact(str(Path(tmp) / "evaluation.json"), "reports")
            if rec.meta.get("history"):
                (Path(tmp) / "training_curves.png").write_bytes(training_curves_png(rec.meta["history"]))
                mlflow.log_artifact(str(Path(tmp) / "training_curves.png"), "plots")
        if validation_html and Path(validation_html).exists():
            mlflow.log_artifact(str(validation_html), "reports")
        for path in (extra_artifacts or {}).values():
            if Path(path).exists():
                mlflow.log_artifact(str(path), "reports")
        example = pd.DataFrame({"user_id": rec.user_ids[:2], "k": [10, 10]})
        signature = infer_signature(example, recommend_frame(rec, example))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=SoraPyfunc(), artifacts={"model_dir": str(model_dir)},
            signature=signature, input_example=example, pip_requirements=pip_requirements(),
            registered_model_name=model_name,
        )
        version = str(info.registered_model_version)
        mlflow.set_tags({"sora.model_version": version, "sora.data_fingerprint": rec.meta.get("data_fingerprint", "")})
    client.set_registered_model_alias(model_name, "challenger", version)
    log.info("registered %s version %s (run %s) as challenger", model_name, version, run.info.run_id)
    return Registered(run.info.run_id, version, f"models:/{model_name}/{version}")


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def resolve_model_uri(tracking_uri: str | None, model_uri: str) -> tuple[str, str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → (name, version, ``models:/NAME/VERSION``)."""
    import re

    m = re.match(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$", model_uri)
    if m:
        client = _client(tracking_uri or DEFAULT_TRACKING_URI)
        mv = client.get_model_version_by_alias(m["name"], m["alias"])
        return m["name"], str(mv.version), f"models:/{m['name']}/{mv.version}"
    m = re.match(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$", model_uri)
    if m:
        return m["name"], m["version"], model_uri
    raise ValueError(f"model URI must be models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")


def load_version(tracking_uri: str, model_uri: str) -> Recommender:
    """Download a registered version (``models:/name/3`` or ``models:/name@champion``) and load it."""
    import mlflow

    _client(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    candidates = list(local.rglob("model.safetensors"))
    if not candidates:
        raise FileNotFoundError(f"{model_uri}: no Sora model directory inside the artifacts")
    return Recommender.load(candidates[0].parent)


def aligned_scores(rec: Recommender, split: Split):
    """A score function over ``split``'s user/item indices for a model with its own id maps.

    Users or items the model does not know score -inf, so another model's champion can be ranked
    on exactly the challenger's split.
    """
    u_map = torch.tensor([rec.user_index.get(u, -1) for u in split.user_ids])
    i_map = torch.tensor([rec.item_index.get(i, -1) for i in split.item_ids])
    known_items = i_map >= 0

    def score(users: np.ndarray) -> torch.Tensor:
        mapped = u_map[torch.as_tensor(users, dtype=torch.long)]
        out = torch.full((len(users), len(split.item_ids)), -torch.inf)
        ok = mapped >= 0
        if ok.any():
            s = rec.score_users(mapped[ok].numpy())
            block = torch.full((int(ok.sum()), len(split.item_ids)), -torch.inf)
            block[:, known_items] = s[:, i_map[known_items]]
            out[ok] = block
        return out

    return score


def compare(tracking_uri: str, model_name: str, challenger_version: str, dataset: Dataset, margin: float,
            challenger_dir: str | Path | None = None) -> Decision:
    """Score challenger and champion on the challenger's split of ``dataset``; record the decision as tags."""
    client = _client(tracking_uri)
    rec = (Recommender.load(challenger_dir) if challenger_dir else
           load_version(tracking_uri, f"models:/{model_name}/{challenger_version}"))
    split = rebuild_split(rec, dataset)
    ks = rec.config.eval.ks
    ch_metrics = evaluate_split(rec.score_users, split, "test", ks)
    champ = _version_by_alias(client, model_name, "champion")
    if champ is None or str(champ.version) == str(challenger_version):
        ref = evaluate_split(mostpop_scores(split.matrix("train")), split, "test", ks)
        decision = decide(ch_metrics, ref, margin, "mostpop", challenger_version, None)
        decision.reason = "no champion yet; " + decision.reason
    else:
        champion_rec = load_version(tracking_uri, f"models:/{model_name}/{champ.version}")
        ref = evaluate_split(aligned_scores(champion_rec, split), split, "test", ks)
        decision = decide(ch_metrics, ref, margin, "champion", str(challenger_version), str(champ.version))
    tags = {"promotion.decision": "promote" if decision.promote else "keep champion",
            "promotion.reason": decision.reason[:5000],
            "promotion.reference": decision.reference,
            "promotion.champion_version": decision.champion_version or ""}
    for k, v in tags.items():
        client.set_model_version_tag(model_name, challenger_version, k, v)
    mv = client.get_model_version(model_name, challenger_version)
    if mv.run_id:
        for k, v in tags.items():
            client.set_tag(mv.run_id, k, v)
    log.info("promotion decision for %s v%s: %s", model_name, challenger_version, decision.reason)
    return decision


def promote(tracking_uri: str, model_name: str, version: str) -> str | None:
    """Point ``champion`` at ``version``; remember the version it replaced. Returns that version."""
    client = _client(tracking_uri)
    current = _version_by_alias(client, model_name, "champion")
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        return previous
    client.set_registered_model_alias(model_name, "champion", str(version))
    client.set_model_version_tag(model_name, str(version), "previous_champion", previous or "")
    log.info("champion: %s v%s (was %s)", model_name, version, previous)
    return previous


def rollback(tracking_uri: str, model_name: str) -> tuple[str, str]:
    """Move ``champion`` back to the version that held it before. Returns (from, to)."""
    client = _client(tracking_uri)
    current = _version_by_alias(client, model_name, "champion")
    if current is None:
        raise ValueError(f"{model_name} has no champion to roll back")
    previous = current.tags.get("previous_champion", "")
    if not previous:
        raise ValueError(f"{model_name} v{current.version} has no previous champion to roll back to")
    client.set_registered_model_alias(model_name, "champion", previous)
    client.set_model_version_tag(model_name, str(current.version), "rolled_back", "true")
    return str(current.version), previous


def show(tracking_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every version with its aliases, decision tags and test NDCG@10."""
    client = _client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except Exception:  # noqa: BLE001 - no such model yet
        return []
    aliases: dict[str, list[str]] = {}
    try:
        for alias, v in client.get_registered_model(model_name).aliases.items():
            aliases.setdefault(str(v), []).append(alias)
    except Exception:  # noqa: BLE001
        pass
    rows = []
    for mv in sorted(versions, key=lambda m: int(m.version)):
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        rows.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                     "test_ndcg@10": metrics.get("test_ndcg_at_10"), "decision": mv.tags.get("promotion.decision", ""),
                     "reason": mv.tags.get("promotion.reason", ""), "run_id": mv.run_id})
    return rows


def model_card(eval_report: dict[str, Any], decision: Decision | None, model_name: str, version: str) -> str:
    """Markdown model card: Sora vs baselines vs champion, and the promotion decision."""
    keys = ["ndcg@10", "recall@10", "hit@10", "mrr@10", "precision@10", "coverage@10", "recall@20", "coverage@20"]
    lines = [f"# {model_name} v{version}", "", "Test set, full ranking (DESIGN.md §4).", "",
             "| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]

    def row(name, m):
        lines.append(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in keys) + " |")

    row(f"**sora v{version}** (challenger)", eval_report["test"])
    for name, m in eval_report.get("baselines", {}).items():
        row(name, m)
    if decision is not None and decision.champion is not None:
        row(f"{decision.reference} v{decision.champion_version}" if decision.champion_version else decision.reference,
            decision.champion)
    if decision is not None:
        verdict = "PROMOTED to champion" if decision.promote else "NOT promoted (champion kept)"
        lines += ["", f"**Decision: {verdict}.** {decision.reason}"]
    return "\n".join(lines) + "\n"


def resolve_tracking_uri(flag: str | None, env: dict[str, str], cfg: SoraConfig | None = None) -> str:
    """Flag > ``MLFLOW_TRACKING_URI`` > config/default. Called at the edges only."""
    return flag or env.get("MLFLOW_TRACKING_URI") or (cfg.registry.tracking_uri if cfg else DEFAULT_TRACKING_URI)
