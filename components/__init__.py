"""Kubeflow Pipelines v2 components of the Sora training pipeline (installed as ``sora_components``).

Each component only declares its interface and calls one function of :mod:`sora.stages`. They pass
typed artifacts (``Dataset``, ``Model``, ``Metrics``, ``HTML``, ``Markdown``) and URIs, never a shared
local path, so each can run in its own pod: the resolved config is an artifact written once by
``configure``; the data is read once, by ``validate`` and ``prepare``, from ``data_uri`` (a mounted path
or an object-store URI such as ``s3://bucket/prefix``); later steps read the prepared-split artifact.

They run in the project image, which has Sora and kfp preinstalled, so nothing is installed at run time
(``install_kfp_package=False``; that is also what ``kfp.local.SubprocessRunner(use_venv=False)`` runs).
The image is ``$SORA_IMAGE`` when set at compile time, else :data:`DEFAULT_IMAGE` (the train step's
``$SORA_TRAINER_IMAGE``). CI compiles with both set to the digests of the images it built from the same
commit (``.github/workflows/images.yml``), so a code change always changes the steps' cache key.
"""

# No `from __future__ import annotations` here: kfp reads the real annotation objects.
import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

DEFAULT_IMAGE = "ghcr.io/sora-ml/sora:0.1.0"
IMAGE = os.environ.get("SORA_IMAGE", DEFAULT_IMAGE)
TRAINER_IMAGE = os.environ.get("SORA_TRAINER_IMAGE", "ghcr.io/sora-ml/sora-trainer:0.1.0-cu121")

component = dsl.component(base_image=IMAGE, install_kfp_package=False)
trainer_component = dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)


@component
def configure(config_overrides: list[str], config: Output[Artifact]):
    """Resolve the config once (defaults + ``key=value`` overrides, validated) into the artifact every later
    step reads."""
    from sora import stages

    # a list parameter; a `;`-joined string (older callers of this function) is still read
    overrides = stages.parse_overrides(config_overrides) if isinstance(config_overrides, str) else \
        [str(o).strip() for o in config_overrides if str(o).strip()]
    stages.configure(None, overrides, config.path)


@component
def connect(tracking_uri: str, snapshot_root: str = "") -> str:
    """The run's first step, before any data is read: the registry answers (in a pod: an MLflow server, never
    a pod-local file) and the snapshot root is usable (in a pod: an object-store prefix). Returns the
    tracking URI later steps use: the parameter, else the Secret's ``MLFLOW_TRACKING_URI``, else (local runs
    only) the local default."""
    import os

    from sora.cluster import preflight

    return preflight(tracking_uri, snapshot_root, dict(os.environ))[0]


@component
def validate(data_uri: str, config: Input[Artifact], report: Output[HTML], summary: Output[Artifact]) -> \
        NamedTuple("ValidateOutputs", [("passed", bool), ("message", str), ("fingerprint", str)]):
    """Great Expectations suites over the dataset; the HTML report is published either way."""
    from sora import stages

    result = stages.validate(data_uri, stages.load_resolved(config.path), report.path, summary.path)
    print(result.message)
    return (result.passed, result.message, result.fingerprint)


@component
def fail(message: str):
    """Ends the run as failed, with the reason (failed expectations, or the drift gate) in the message."""
    raise RuntimeError(f"{message}\nnothing was trained or registered.")


@component
def drift(data_uri: str, reference_uri: str, tracking_uri: str, model_name: str, config: Input[Artifact],
          report: Output[HTML], metrics: Output[Metrics]) -> str:
    """The drift gate: new data vs the champion's training data (``reference_uri``, else the snapshot the
    champion was trained on, recorded with its version). Returns pass, warn, fail or skipped (no champion)."""
    from sora import stages
    from sora.registry import alias_data_source

    reference = reference_uri or alias_data_source(tracking_uri, model_name)
    if not reference:
        with open(report.path, "w") as f:
            f.write("<html><body><p>No champion yet: nothing to compare the data with.</p></body></html>")
        return "skipped"
    print(f"drift reference: {reference}")
    result = stages.drift(reference, data_uri, stages.load_resolved(config.path), report.path)
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)) and value == value:
            metrics.log_metric(f"drift_{key}", float(value))
    print(result.summary())
    return result.status


@component
def prepare(data_uri: str, data_fingerprint: str, config: Input[Artifact], split: Output[Dataset],
            snapshot_root: str = ""):
    """Split + id maps + item table, from an immutable snapshot of the data (``<root>/<fingerprint>``, the root
    from ``snapshot_root`` else the Secret's ``SORA_SNAPSHOT_ROOT``), which the registered version records and
    the next run's drift step reads; without a root (local runs only) from the data itself. The fingerprint
    also makes the cache key follow the data's content."""
    import os

    from sora import stages
    from sora.data.snapshot import resolve_root, take_snapshot

    root = resolve_root(snapshot_root, dict(os.environ))
    source = take_snapshot(data_uri, root, data_fingerprint) if root else data_uri
    prepared = stages.prepare(source, stages.load_resolved(config.path), split.path)
    split.metadata.update(prepared.counts())
    split.metadata["source"] = data_uri
    split.metadata["snapshot"] = source


@component
def embed(cache_uri: str, config: Input[Artifact], split: Input[Dataset], embeddings: Output[Dataset]):
    """Item text → sentence embeddings (through the cache, which may live in the object store)."""
    from sora import stages

    prepared = stages.Prepared.load(split.path)
    embeddings.metadata.update(stages.embed(prepared, stages.load_resolved(config.path), embeddings.path,
                                            cache_uri or None))


@trainer_component
def train(config: Input[Artifact], split: Input[Dataset], embeddings: Input[Dataset], model: Output[Model],
          curves: Output[HTML]):
    """Graph + GNN-Transformer training (GPU when the task is given one).

    Checkpoints go beside the model's artifact URI (the object store on a cluster, where a retried pod of
    the same task finds them), so a preempted step resumes rather than starting again."""
    from sora import stages
    from sora.training.checkpoint import checkpoint_uri

    result = stages.train(stages.Prepared.load(split.path), embeddings.path, stages.load_resolved(config.path),
                          model.path, curves.path, checkpoint_uri=checkpoint_uri(model.uri or model.path))
    model.metadata.update(stages.train_summary(result))
    model.metadata["framework"] = "sora"


@component
def train_distributed(config: Input[Artifact], split: Input[Dataset], model_root: str, gpu_count: int,
                      num_nodes: int, image: str, secret: str, model: Output[Model], curves: Output[HTML]):
    """Multi-node training as a Kubeflow Trainer TrainJob (``num_nodes`` × ``gpu_count`` GPUs) on the prepared
    split with the resolved config; waits for it and hands its model to the same evaluate / register /
    compare gates as the single-pod train step."""
    import os

    from sora_pipelines.trainjob import train_in_trainjob

    data = split.metadata.get("snapshot") or split.metadata.get("source") or ""
    model.metadata.update(train_in_trainjob(
        config.path, split.uri, data, model_root, model.path, curves.path, image, gpu_count, num_nodes, secret,
        run_name=f"sora-{os.environ.get('HOSTNAME', 'train')}"))
    model.metadata["framework"] = "sora"


@component
def evaluate(run_baselines: bool, model: Input[Model], split: Input[Dataset], embeddings: Input[Dataset],
             metrics: Output[Metrics], report: Output[Artifact]):
    """Full-ranking metrics on the test set, beside MostPop, EASE, BPR-MF and LightGCN on the same split."""
    from sora import stages
    from sora.registry import report_metrics

    result = stages.evaluate(model.path, stages.Prepared.load(split.path), report.path, baselines=run_baselines,
                             embeddings_uri=embeddings.path)
    for key, value in report_metrics(result).items():  # the same names as in the MLflow run
        if not key.startswith("valid_"):
            metrics.log_metric(key, value)


@component
def register(tracking_uri: str, model_name: str, model: Input[Model], split: Input[Dataset],
             report: Input[Artifact], validation_report: Input[HTML], curves: Input[HTML]) -> str:
    """MLflow run + pyfunc model registered under ``model_name``, alias ``challenger``; an identical model
    (same content hash, e.g. from a cached train step) is not registered twice. Returns the version."""
    from sora import stages

    return stages.register(tracking_uri, model_name, model.path, report.path, stages.Prepared.load(split.path),
                           validation_report.path, curves.path)


@component
def compare(tracking_uri: str, model_name: str, version: str, promotion_margin: float, model: Input[Model],
            split: Input[Dataset], report: Input[Artifact], card: Output[Markdown]) -> bool:
    """Challenger vs champion on the challenger's split; writes the model card and the decision tags.

    Returns only the decision (a single output keeps the condition resolvable by kfp.local inside a
    nested ``dsl.If``); the reason is in the card, the MLflow tags and the log.
    """
    from sora import stages

    promote, reason = stages.compare(tracking_uri, model_name, version, model.path, stages.Prepared.load(split.path),
                                     promotion_margin, report.path, card.path)
    print(reason)
    return promote


@component
def promote(tracking_uri: str, model_name: str, version: str) -> str:
    """Moves the ``champion`` alias to ``version`` (the previous champion is kept as a tag)."""
    from sora import stages

    message = stages.promote(tracking_uri, model_name, version)
    print(message)
    return message


@component
def batch_score(k: int, model: Input[Model], scores: Output[Dataset]):
    """The new champion's top-``k`` for every user, as a Parquet artifact (user_id, rank, item_id, score);
    ``k = 0`` (the default) skips the scoring."""
    from sora import stages

    if k <= 0:
        scores.metadata["skipped"] = "batch_top_k is 0"
        return
    scores.metadata.update(stages.batch_score(model.path, k, scores.path))

