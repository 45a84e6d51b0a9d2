"""Kubeflow Pipelines v2 components of the Sora training pipeline (installed as ``sora_components``).

Each component only declares its interface and calls one function of :mod:`sora.steps`. They run in
the project image, which has Sora and kfp preinstalled, so nothing is installed at run time
(``install_kfp_package=False``; that is also what ``kfp.local.SubprocessRunner(use_venv=False)`` runs).
The image is ``$SORA_IMAGE`` when set at compile time, else :data:`DEFAULT_IMAGE`.
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
def validate(data_dir: str, config_overrides: str, report: Output[HTML], summary: Output[Artifact]) -> \
        NamedTuple("ValidateOutputs", [("passed", bool), ("message", str), ("fingerprint", str)]):
    """Great Expectations suites over the dataset; the HTML report is published either way."""
    from sora.steps import validate_step

    passed, message, fingerprint = validate_step(data_dir, config_overrides, report.path, summary.path)
    print(message)
    return (passed, message, fingerprint)


@component
def fail(message: str):
    """Ends the run as failed, with every failed expectation in the message."""
    raise RuntimeError(f"data validation failed; nothing was trained or registered.\n{message}")


@component
def prepare(data_dir: str, config_overrides: str, data_fingerprint: str, split: Output[Dataset]):
    """Split + id maps (the fingerprint input makes the cache key follow the data's content)."""
    from sora.steps import prepare_step

    split.metadata.update(prepare_step(data_dir, config_overrides, split.path))


@component
def embed(data_dir: str, config_overrides: str, data_fingerprint: str, cache_dir: str, embeddings: Output[Dataset]):
    """Item text → sentence embeddings (through the cache when ``cache_dir`` is set)."""
    from sora.steps import embed_step

    embeddings.metadata.update(embed_step(data_dir, config_overrides, embeddings.path, cache_dir))


@trainer_component
def train(data_dir: str, config_overrides: str, split: Input[Dataset], embeddings: Input[Dataset],
          model: Output[Model], curves: Output[HTML]):
    """Graph + GNN-Transformer training (GPU when the task is given one)."""
    from sora.steps import train_step

    model.metadata.update(train_step(data_dir, split.path, embeddings.path, config_overrides, model.path, curves.path))
    model.metadata["framework"] = "sora"


@component
def evaluate(data_dir: str, run_baselines: bool, model: Input[Model], metrics: Output[Metrics],
             report: Output[Artifact]):
    """Full-ranking metrics on the test set, beside MostPop, EASE, BPR-MF and LightGCN on the same split."""
    from sora.steps import evaluate_step

    result = evaluate_step(model.path, data_dir, report.path, baselines=run_baselines)
    for key, value in result["test"].items():
        metrics.log_metric(f"test_{key}", value)
    for name, m in result.get("baselines", {}).items():
        metrics.log_metric(f"{name}_ndcg@10", m["ndcg@10"])


@component
def register(tracking_uri: str, model_name: str, model: Input[Model], report: Input[Artifact],
             validation_report: Input[HTML], curves: Input[HTML]) -> str:
    """MLflow run + pyfunc model registered under ``model_name``, alias ``challenger``. Returns the version."""
    from sora.steps import register_step

    return register_step(tracking_uri, model_name, model.path, report.path, validation_report.path, curves.path)


@component
def compare(tracking_uri: str, model_name: str, version: str, data_dir: str, promotion_margin: float,
            model: Input[Model], report: Input[Artifact], card: Output[Markdown]) -> bool:
    """Challenger vs champion on the same split; writes the model card and the decision tags.

    Returns only the decision (a single output keeps the condition resolvable by kfp.local inside a
    nested ``dsl.If``); the reason is in the card, the MLflow tags and the log.
    """
    from sora.steps import compare_step

    promote, reason = compare_step(tracking_uri, model_name, version, model.path, data_dir, promotion_margin,
                                   report.path, card.path)
    print(reason)
    return promote


@component
def promote(tracking_uri: str, model_name: str, version: str) -> str:
    """Moves the ``champion`` alias to ``version`` (the previous champion is kept as a tag)."""
    from sora.steps import promote_step

    message = promote_step(tracking_uri, model_name, version)
    print(message)
    return message
