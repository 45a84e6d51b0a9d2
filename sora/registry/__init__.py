"""MLflow registry: log a training run, register the model, gate and move the ``champion`` alias.

The only package that imports MLflow (with :mod:`sora.registry.pyfunc`). Every function takes the
tracking URI explicitly; the CLI and components resolve it (flag > ``MLFLOW_TRACKING_URI`` >
``sqlite:///.sora/mlflow.db``), see :func:`resolve_tracking_uri`.

Aliases: a new version gets ``challenger``. :func:`compare` scores the challenger and the current
``champion`` on the challenger's split and applies :func:`sora.evaluation.promotion.decide`; :func:`promote` moves
``champion`` and records the version it replaced as the tag ``previous_champion``, which
:func:`rollback` follows. An unreachable server (:class:`RegistryUnreachable`) is told apart from a
missing model, version or alias (:class:`RegistryNotFound`).

Why one module of about 600 lines: it is the one place the MLflow client is used (connect, log,
register, resolve, compare, promote, roll back), and tests and the components patch its functions by
this module's path; split into submodules, a patched name would no longer be the one the others call.

Faults mid-operation (the server or its artifact store stops answering) end in one
:class:`RegistryError` line naming the server, after MLflow's own bounded retries
(``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``). :func:`log_and_register` uploads
every artifact before it creates the version, and creates it with its content-hash tag in the same call,
so a version never exists without its artifacts and a re-run finds it instead of adding another.

Package rules (``tests/test_layers.py``): owns MLflow (this module and :mod:`sora.registry.pyfunc`) and
the build information recorded with every version (:mod:`sora.registry.buildinfo`). May import
:mod:`sora.config`, :mod:`sora.data`, :mod:`sora.model`, :mod:`sora.training`, :mod:`sora.evaluation`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import torch

from sora.config import RegistryConfig, SoraConfig
from sora.data.split import Split
from sora.evaluation.evaluate import evaluate_split, model_scores, mostpop_scores
from sora.evaluation.metrics import metric_name
from sora.evaluation.promotion import Decision, decide
from sora.model.recommender import Recommender
from sora.registry.buildinfo import build_info

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///.sora/mlflow.db"
EXPERIMENT = "sora"
HASH_TAG = "sora.model_hash"
#: Tracking servers that have answered the preflight in this process (serving polls them every few seconds).
_ANSWERED: set[str] = set()


class RegistryError(Exception):
    """A registry operation failed; the message is one line for the user."""


class RegistryUnreachable(RegistryError):
    """The tracking server cannot be reached (or refuses us): an outage, not a missing model."""


class RegistryNotFound(RegistryError):
    """The server answered, but the model, version or alias does not exist."""


def _outage_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the server or its artifact store did not answer (not a bug of ours)."""
    import requests
    import urllib3

    types: list[type[BaseException]] = [requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError,
                                        TimeoutError]
    try:  # artifacts written straight to S3 (MLFLOW_S3_ENDPOINT_URL) fail with boto's own exceptions
        import boto3.exceptions
        import botocore.exceptions

        types += [botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.Boto3Error]
    except ImportError:  # no S3 client installed: nothing of it can fail
        pass
    return tuple(types)


def _as_registry_error(exc: BaseException, what: str, tracking_uri: str) -> RegistryError | None:
    """``exc`` as one line naming the server, or None when it is not a registry or store failure."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        err = _mlflow_error(exc, what, tracking_uri)
        if isinstance(err, RegistryUnreachable):
            text = " ".join(str(exc).split())[:400] or type(exc).__name__
            return RegistryUnreachable(f"cannot reach the registry at {tracking_uri} ({what}): {text}")
        return err
    if isinstance(exc, _outage_types()):
        text = " ".join(str(exc).split())[:400]
        return RegistryUnreachable(f"cannot reach the registry at {tracking_uri} or its artifact store ({what}): "
                                   f"{type(exc).__name__}: {text}")
    return None


_F = TypeVar("_F")


def _one_line_on_outage(what: str):
    """Decorator: a registry or store failure inside ``fn(tracking_uri, ...)`` becomes one :class:`RegistryError`."""
    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def inner(tracking_uri, *args, **kwargs):
            try:
                return fn(tracking_uri, *args, **kwargs)
            except RegistryError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated when it is an outage, re-raised otherwise
                err = _as_registry_error(exc, what, tracking_uri or DEFAULT_TRACKING_URI)
                if err is None:
                    raise
                raise err from exc
        return inner  # type: ignore[return-value]
    return wrap


def check_reachable(tracking_uri: str, cfg: RegistryConfig | None = None) -> None:
    """Fail fast with :class:`RegistryUnreachable` when an HTTP tracking server does not answer its API.

    ``/health`` is not enough: MLflow answers it even to a Host header it rejects on every API call.
    """
    cfg = cfg or RegistryConfig()
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return
    import requests

    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    url = tracking_uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    # MLflow's own standard variables, when set, bound this check as they bound every later request
    read_timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 30)
    tries = 1 + int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or cfg.max_retries)
    last = ""
    for attempt in range(max(1, tries)):
        if attempt:  # a read-only search: safe to retry, with exponential backoff
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        try:
            r = requests.post(url, json={"max_results": 1}, auth=auth, timeout=(cfg.connect_timeout_s, read_timeout))
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}"
            continue
        if r.status_code == 200:
            return
        last = f"HTTP {r.status_code} {r.text.strip()[:120]!r}"
        if r.status_code in (401, 403):
            break
    raise RegistryUnreachable(f"cannot reach the registry at {tracking_uri}: {last} "
                              f"(POST {url}, {max(1, tries)} tries, {cfg.connect_timeout_s:g}s connect timeout, "
                              f"{read_timeout:g}s read timeout)")


def _client(tracking_uri: str, cfg: RegistryConfig | None = None):
    import mlflow
    from mlflow import MlflowClient

    cfg = cfg or RegistryConfig()
    parsed = urlparse(tracking_uri)
    if not parsed.scheme:
        raise RegistryError(f"tracking URI {tracking_uri!r} has no scheme (sqlite:///…, http://…)")
    if parsed.scheme == "sqlite":
        db = Path(tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
    else:
        # MLflow's own defaults retry for minutes; bound them (the user can still override by env).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(cfg.max_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(int(cfg.connect_timeout_s * 6), 10)))
        if tracking_uri not in _ANSWERED:  # once per process: later outages surface as MlflowExceptions
            check_reachable(tracking_uri, cfg)
            _ANSWERED.add(tracking_uri)
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


@dataclass
class Registered:
    run_id: str
    version: str
    model_uri: str
    reused: bool = False


def _version_with_hash(client, model_name: str, model_hash: str):
    """The oldest version tagged with ``model_hash``, or None. An outage raises (it is not "no such version")."""
    found = client.search_model_versions(f"name='{model_name}' and tags.`{HASH_TAG}` = '{model_hash}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def _create_version(client, model_name: str, model_uri: str, tags: dict[str, str], model_hash: str):
    """Register ``model_uri`` (its artifacts already uploaded) with ``tags`` in the same call: the one commit point.

    MLflow retries a request whose answer was lost, so one registration can create two versions; both
    carry the content hash, and every one but the oldest is deleted (they hold the same artifacts).
    """
    import mlflow

    mv = mlflow.register_model(model_uri, model_name, tags=tags)
    if model_hash:
        kept = _version_with_hash(client, model_name, model_hash)
        if kept is not None and str(kept.version) != str(mv.version):
            log.warning("%s v%s duplicates v%s (a retried registration): deleting it", model_name, mv.version,
                        kept.version)
            client.delete_model_version(model_name, str(mv.version))
            return kept
    return mv


def _end_run_failed() -> None:
    """Mark the active run FAILED if the server still answers; never mask the error that ended it."""
    import mlflow

    try:
        mlflow.end_run("FAILED")  # forgets the run locally before it tells the server
    except Exception as exc:  # noqa: BLE001 - the server is likely gone; the run stays RUNNING there
        log.debug("could not mark the run failed: %s", exc)


@_one_line_on_outage("registering the model")
def log_and_register(tracking_uri: str, model_name: str, model_dir: str | Path, eval_report: dict[str, Any],
                     extra_artifacts: dict[str, bytes] | None = None, run_name: str | None = None,
                     lineage: dict[str, Any] | None = None, cfg: RegistryConfig | None = None) -> Registered:
    """One MLflow run: params, per-epoch metrics, final metrics, plots, reports, the dataset as an input
    and the pyfunc model, registered under ``model_name`` with alias ``challenger``.

    ``eval_report["model_hash"]`` identifies the model's content: when a version with that hash exists
    (a cached training step followed by a new registration), it is reused, not registered again.
    """
    import mlflow

    from sora.evaluation.plots import training_curves_png
    from sora.registry.pyfunc import log_pyfunc

    cfg = cfg or RegistryConfig()
    client = _client(tracking_uri, cfg)
    model_hash = eval_report.get("model_hash", "")
    if model_hash:
        existing = _version_with_hash(client, model_name, model_hash)
        if existing is not None:
            client.set_registered_model_alias(model_name, cfg.challenger_alias, str(existing.version))
            log.info("%s v%s already holds this model (hash %s): not registered again", model_name,
                     existing.version, model_hash[:12])
            return Registered(existing.run_id or "", str(existing.version), f"models:/{model_name}/{existing.version}",
                              reused=True)
    rec = Recommender.load(model_dir)
    exp_id = _experiment_id(client, tracking_uri)
    build = {f"sora.build.{k}": v for k, v in build_info().items()}
    run = mlflow.start_run(experiment_id=exp_id, run_name=run_name)
    try:
        mlflow.set_tags({"sora.data_fingerprint": rec.meta.get("data_fingerprint", ""), HASH_TAG: model_hash, **build})
        params = _flat(rec.config.to_dict())
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_params({"data_fingerprint": rec.meta.get("data_fingerprint"), "encoder_id": rec.meta.get("encoder_id"),
                           "num_users": rec.num_users, "num_items": rec.num_items})
        device = rec.meta.get("device")
        if isinstance(device, dict):
            mlflow.log_params({f"device.{k}": str(v)[:500] for k, v in device.items()})
        elif device:
            mlflow.log_param("device", str(device))
        for h in rec.meta.get("history", []):
            mlflow.log_metrics({metric_name(k): float(v) for k, v in h.items()
                                if k != "epoch" and isinstance(v, (int, float))}, step=int(h["epoch"]))
        mlflow.log_metrics(report_metrics(eval_report))
        if lineage:
            _log_dataset(lineage)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "evaluation.json").write_text(json.dumps(eval_report, indent=2))
            mlflow.log_artifact(str(Path(tmp) / "evaluation.json"), "reports")
            if rec.meta.get("history"):
                (Path(tmp) / "training_curves.png").write_bytes(training_curves_png(rec.meta["history"]))
                mlflow.log_artifact(str(Path(tmp) / "training_curves.png"), "plots")
            for name, data in (extra_artifacts or {}).items():
                (Path(tmp) / name).write_bytes(data)
                mlflow.log_artifact(str(Path(tmp) / name), "reports")
        # every artifact is uploaded before a version exists; the version is created with its hash tag
        info = log_pyfunc(rec, model_dir, None)
        version_tags = {**({HASH_TAG: model_hash} if model_hash else {}), **build}  # "dirty"/"unversioned" say so
        mv = _create_version(client, model_name, info.model_uri, version_tags, model_hash)
        version = str(mv.version)
        mlflow.set_tag("sora.model_version", version)
    except BaseException:
        _end_run_failed()
        raise
    mlflow.end_run()
    client.set_registered_model_alias(model_name, cfg.challenger_alias, version)
    log.info("registered %s version %s (run %s) as %s", model_name, version, run.info.run_id, cfg.challenger_alias)
    return Registered(run.info.run_id, version, f"models:/{model_name}/{version}")


def report_metrics(eval_report: dict[str, Any]) -> dict[str, float]:
    """The evaluation report as flat metric names, the same in the Kubeflow UI and in MLflow."""
    out = {}
    for part in ("valid", "test"):
        out.update({metric_name(f"{part}_{k}"): float(v) for k, v in eval_report.get(part, {}).items()
                    if isinstance(v, (int, float))})
    for name, m in eval_report.get("baselines", {}).items():
        out.update({metric_name(f"baseline_{name}_{k}"): float(v) for k, v in m.items() if isinstance(v, (int, float))})
    return out


def _log_dataset(lineage: dict[str, Any]) -> None:
    """The training data as an MLflow dataset input: its source URI and content digest."""
    import mlflow
    import pandas as pd

    counts = lineage.get("counts", {})
    profile = pd.DataFrame([{k: v for k, v in counts.items() if isinstance(v, (int, float))}])
    try:
        dataset = mlflow.data.from_pandas(profile, source=str(lineage["source"]), name=Path(
            str(lineage["source"]).rstrip("/")).name or "data", digest=str(lineage["digest"])[:36])
        mlflow.log_input(dataset, context="training")
    except Exception as exc:  # noqa: BLE001 - an unknown source scheme must not fail registration
        log.warning("could not log the dataset input (%s); recording it as tags", exc)
    mlflow.set_tags({"sora.data_source": str(lineage["source"]), "sora.data_digest": str(lineage["digest"])})


def _mlflow_error(exc: Exception, what: str, tracking_uri: str) -> RegistryError:
    """An MlflowException → not found (the server answered) or unreachable (it did not)."""
    code = getattr(exc, "error_code", "") or ""
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if "RESOURCE_DOES_NOT_EXIST" in code or "NOT_FOUND" in code or "not found" in text.lower():
        return RegistryNotFound(f"{what} does not exist in the registry at {tracking_uri}")
    if "INVALID_PARAMETER_VALUE" in code:
        return RegistryNotFound(f"{what}: {text}")
    return RegistryUnreachable(f"cannot reach the registry at {tracking_uri}: {text}")


def _version_by_alias(client, name: str, alias: str):
    """The version behind ``alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        server = getattr(client, "_registry_uri", "") or "?"
        err = _mlflow_error(exc, f"{name}@{alias}", server)
        if isinstance(err, RegistryNotFound):
            return None
        raise err from exc


def _get_version(client, tracking_uri: str, name: str, version: str):
    from mlflow.exceptions import MlflowException

    if not str(version).isdigit():
        raise RegistryNotFound(f"model version must be a number, got {version!r}")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise _mlflow_error(exc, f"{name} version {version}", tracking_uri) from exc


@_one_line_on_outage("resolving a model URI")
def resolve_model_uri(tracking_uri: str | None, model_uri: str) -> tuple[str, str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → (name, version, ``models:/NAME/VERSION``)."""
    import re

    tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
    m = re.match(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$", model_uri)
    if m:
        mv = _version_by_alias(_client(tracking_uri), m["name"], m["alias"])
        if mv is None:
            raise RegistryNotFound(f"{model_uri} does not exist in the registry at {tracking_uri}")
        return m["name"], str(mv.version), f"models:/{m['name']}/{mv.version}"
    m = re.match(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$", model_uri)
    if m:
        return m["name"], m["version"], model_uri
    raise ValueError(f"model URI must be models:/NAME@ALIAS or models:/NAME/VERSION, got {model_uri!r}")


@_one_line_on_outage("downloading a model version")
def load_version(tracking_uri: str, model_uri: str) -> Recommender:
    """Download a registered version (``models:/name/3`` or ``models:/name@champion``) and load it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, versioned = resolve_model_uri(tracking_uri, model_uri)
    _client(tracking_uri)  # models:/NAME/VERSION resolves without the server: bound its timeouts here too
    with tempfile.TemporaryDirectory(prefix="sora-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=versioned, dst_path=tmp,
                                                             tracking_uri=tracking_uri, registry_uri=tracking_uri))
        except MlflowException as exc:
            raise _mlflow_error(exc, versioned, tracking_uri) from exc
        candidates = list(local.rglob("model.safetensors"))
        if not candidates:
            raise RegistryNotFound(f"{model_uri}: no Sora model directory inside the artifacts")
        return Recommender.load(candidates[0].parent)


@_one_line_on_outage("reading the champion's data source")
def alias_data_source(tracking_uri: str, model_name: str, alias: str = "champion") -> str | None:
    """The data URI the version behind ``alias`` was trained on (its run's ``sora.data_source`` tag)."""
    client = _client(tracking_uri)
    mv = _version_by_alias(client, model_name, alias)
    if mv is None or not mv.run_id:
        return None
    return client.get_run(mv.run_id).data.tags.get("sora.data_source") or None


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


@_one_line_on_outage("comparing challenger and champion")
def compare(tracking_uri: str, model_name: str, challenger_version: str, rec: Recommender, split: Split,
            margin: float, cfg: RegistryConfig | None = None) -> Decision:
    """Score challenger ``rec`` and the champion on the challenger's ``split``; record the decision as tags."""
    cfg = cfg or RegistryConfig()
    client = _client(tracking_uri, cfg)
    ks = rec.config.eval.ks
    ch_metrics = evaluate_split(model_scores(rec, split, "test"), split, "test", ks)  # protocol-aware
    champ = _version_by_alias(client, model_name, cfg.champion_alias)
    if champ is None or str(champ.version) == str(challenger_version):
        ref = evaluate_split(mostpop_scores(split.matrix("train")), split, "test", ks)
        decision = decide(ch_metrics, ref, margin, "mostpop", challenger_version, None)
        decision.reason = f"no {cfg.champion_alias} yet; " + decision.reason
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
    mv = _get_version(client, tracking_uri, model_name, challenger_version)
    if mv.run_id:
        for k, v in tags.items():
            client.set_tag(mv.run_id, k, v)
    log.info("promotion decision for %s v%s: %s", model_name, challenger_version, decision.reason)
    return decision


@_one_line_on_outage("moving an alias")
def promote(tracking_uri: str, model_name: str, version: str, alias: str = "champion") -> str | None:
    """Point ``alias`` at ``version``; remember the version it replaced. Returns that version."""
    client = _client(tracking_uri)
    _get_version(client, tracking_uri, model_name, version)
    current = _version_by_alias(client, model_name, alias)
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        return previous
    client.set_registered_model_alias(model_name, alias, str(version))
    client.set_model_version_tag(model_name, str(version), "previous_champion", previous or "")
    log.info("%s: %s v%s (was %s)", alias, model_name, version, previous)
    return previous


@_one_line_on_outage("rolling back an alias")
def rollback(tracking_uri: str, model_name: str, alias: str = "champion") -> tuple[str, str]:
    """Move ``alias`` back to the version that held it before. Returns (from, to)."""
    client = _client(tracking_uri)
    current = _version_by_alias(client, model_name, alias)
    if current is None:
        raise RegistryNotFound(f"{model_name}@{alias} does not exist in the registry at {tracking_uri}: "
                               "nothing to roll back")
    previous = current.tags.get("previous_champion", "")
    if not previous:
        raise RegistryNotFound(f"{model_name} v{current.version} has no previous {alias} to roll back to")
    client.set_registered_model_alias(model_name, alias, previous)
    client.set_model_version_tag(model_name, str(current.version), "rolled_back", "true")
    return str(current.version), previous


@_one_line_on_outage("listing versions")
def show(tracking_uri: str, model_name: str) -> list[dict[str, Any]]:
    """Every version with its aliases, decision tags and test NDCG@10 (empty when the model has none)."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name='{model_name}'")
        aliases: dict[str, list[str]] = {}
        if versions:
            for alias, v in client.get_registered_model(model_name).aliases.items():
                aliases.setdefault(str(v), []).append(alias)
        rows = []
        for mv in sorted(versions, key=lambda m: int(m.version)):
            metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
            rows.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                         "test_ndcg@10": metrics.get(metric_name("test_ndcg@10")),
                         "decision": mv.tags.get("promotion.decision", ""),
                         "reason": mv.tags.get("promotion.reason", ""), "run_id": mv.run_id})
    except MlflowException as exc:
        err = _mlflow_error(exc, model_name, tracking_uri)
        if isinstance(err, RegistryNotFound):
            return []
        raise err from exc
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
    """Flag or parameter > ``MLFLOW_TRACKING_URI`` > config/default. Called at the edges only.

    Empty strings count as unset (a pipeline parameter left at its default is ``""``).
    """
    return (flag or "").strip() or (env.get("MLFLOW_TRACKING_URI") or "").strip() or (
        cfg.registry.tracking_uri if cfg else DEFAULT_TRACKING_URI)


def connect(flag: str | None, env: dict[str, str], flag_name: str = "the tracking_uri parameter",
            cfg: RegistryConfig | None = None) -> str:
    """The tracking URI a pipeline run uses (``flag`` > ``MLFLOW_TRACKING_URI`` > the local default), checked
    before any data is read: in a Kubernetes pod (``KUBERNETES_SERVICE_HOST`` is set) only an HTTP(S) server
    is accepted, since a ``sqlite:``/``file:`` store would live and die with the pod; an HTTP server must
    answer (:func:`check_reachable`). Raises :class:`RegistryError` in one line that names where the value
    came from. ``env`` is the caller's environment (read at the edge)."""
    if (flag or "").strip():
        uri, source = flag.strip(), flag_name
    elif (env.get("MLFLOW_TRACKING_URI") or "").strip():
        uri, source = env["MLFLOW_TRACKING_URI"].strip(), "MLFLOW_TRACKING_URI (the environment)"
    else:
        uri, source = DEFAULT_TRACKING_URI, "the built-in default (neither was set)"
    if env.get("KUBERNETES_SERVICE_HOST") and urlparse(uri).scheme not in ("http", "https"):
        raise RegistryError(f"tracking URI {uri!r} from {source} is not an MLflow server: a pipeline pod would "
                            "register into a file that vanishes with it; set MLFLOW_TRACKING_URI in the "
                            "pipeline's Secret (or the tracking_uri parameter) to the server's http(s):// URL")
    try:
        check_reachable(uri, cfg)
    except RegistryUnreachable as exc:
        raise RegistryUnreachable(f"{exc} [tracking URI from {source}]") from exc
    return uri
