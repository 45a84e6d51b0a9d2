"""The stage API: one function per pipeline stage, over saved artifacts addressed by URI (DESIGN.md §6, §10).

    configure → validate → drift → prepare → embed → train → evaluate → register → compare → promote

Each stage reads the previous stages' artifacts and writes its own; nothing after ``prepare`` reads
the raw data again or rebuilds the split, and ``--set`` overrides are parsed once, by ``configure``,
into a resolved-config artifact that every later stage reads. The CLI commands and the Kubeflow
components (``components/``) call these functions and nothing else. Every URI may be a local path or
an object-store URI (:mod:`sora.data.storage`); every artifact is written through a temporary name.

Artifacts:

- resolved config: ``config.json`` (the whole :class:`~sora.config.SoraConfig`)
- prepared split: a directory with ``split/`` (split + id maps), ``items.parquet``, optional
  ``user_edges.parquet`` and ``prepared.json`` (source URI, data fingerprint, counts)
- embeddings: one Parquet file (:class:`~sora.model.text.ItemEmbeddings`)
- model: Sora's model directory (:class:`~sora.model.recommender.Recommender`)
- evaluation: JSON ``{"valid": …, "test": …, "baselines": {…}}``
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from sora.config import SoraConfig, load_config
from sora.data import storage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ configure

def configure(config_file: str | None, overrides: list[str] | None, out_uri: str) -> SoraConfig:
    """Defaults, then ``config_file`` (a path or URI), then ``overrides``: validated once, saved as JSON."""
    cfg = load_config(None, overrides)
    if config_file:
        import yaml

        raw = yaml.safe_load(storage.read_text(config_file)) or {}
        cfg = SoraConfig.from_dict(raw).with_overrides(overrides)
    storage.write_text(out_uri, json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return cfg


def load_resolved(uri: str) -> SoraConfig:
    """The resolved config written by :func:`configure`."""
    return SoraConfig.from_dict(json.loads(storage.read_text(uri)))


def parse_overrides(text: str) -> list[str]:
    """Pipeline parameters are scalars: overrides arrive as one ``;``- or newline-separated string."""
    return [p.strip() for p in (text or "").replace("\n", ";").split(";") if p.strip()]


# ------------------------------------------------------------------------------------------ validate

@dataclass
class Validated:
    passed: bool
    message: str
    fingerprint: str


def validate(data_uri: str, cfg: SoraConfig, report_html: str | None = None,
             summary_json: str | None = None) -> Validated:
    """Great Expectations suites over the dataset at ``data_uri``; the report is written either way."""
    import tempfile

    from sora.data.contract import DataError, load_dataset
    from sora.data.validation import validate_dataset_dir

    with storage.local_dir(data_uri) as data_dir:
        report = validate_dataset_dir(data_dir, cfg.validation, cfg.data)
        with tempfile.TemporaryDirectory(prefix="sora-report-") as tmp:
            report.write(Path(tmp) / "summary.json", Path(tmp) / "report.html")
            for src, dst in (("summary.json", summary_json), ("report.html", report_html)):
                if dst:
                    storage.write_bytes(dst, (Path(tmp) / src).read_bytes())
        fingerprint = ""
        if report.passed:
            try:
                fingerprint = load_dataset(data_dir).fingerprint()
            except DataError as exc:  # validation passed, so this would be a reader bug: fail loudly
                return Validated(False, str(exc), "")
    return Validated(report.passed, report.summary(), fingerprint)


# ------------------------------------------------------------------------------------------ drift

def drift(reference_uri: str, data_uri: str, cfg: SoraConfig, report_html: str | None = None,
          summary_json: str | None = None):
    """The drift report of ``data_uri`` against ``reference_uri`` (the champion's training data)."""
    import tempfile

    from sora.data.contract import load_dataset
    from sora.data.drift import drift_report

    with storage.local_dir(reference_uri) as ref_dir:
        reference = load_dataset(ref_dir)
    with storage.local_dir(data_uri) as data_dir:
        current = load_dataset(data_dir)
    report = drift_report(reference, current, cfg.drift)
    with tempfile.TemporaryDirectory(prefix="sora-drift-") as tmp:
        report.write(Path(tmp) / "drift.json", Path(tmp) / "drift.html")
        for src, dst in (("drift.json", summary_json), ("drift.html", report_html)):
            if dst:
                storage.write_bytes(dst, (Path(tmp) / src).read_bytes())
    return report


# ------------------------------------------------------------------------------------------ prepare

@dataclass
class Prepared:
    """The prepared-split artifact: everything later stages need from the data, read once."""

    split: Any  # sora.data.split.Split
    items: pd.DataFrame
    user_edges: pd.DataFrame | None
    fingerprint: str
    source: str

    def save(self, directory: Path) -> None:
        self.split.save(directory / "split")
        self.items.to_parquet(directory / "items.parquet", index=False)
        if self.user_edges is not None:
            self.user_edges.to_parquet(directory / "user_edges.parquet", index=False)
        info = {"source": self.source, "fingerprint": self.fingerprint, "users": self.split.num_users,
                "items": self.split.num_items, "train": len(self.split.train), "valid": len(self.split.valid),
                "test": len(self.split.test), "split": self.split.spec.__dict__}
        (directory / "prepared.json").write_text(json.dumps(info, indent=2, default=list))

    @classmethod
    def load(cls, uri: str) -> Prepared:
        from sora.data.split import Split

        with storage.local_dir(uri) as directory:
            info_path = directory / "prepared.json"
            if not info_path.exists():
                raise storage.StorageError(f"{uri} is not a prepared-split artifact (no prepared.json)")
            info = json.loads(info_path.read_text())
            edges = directory / "user_edges.parquet"
            return cls(Split.load(directory / "split"), pd.read_parquet(directory / "items.parquet"),
                       pd.read_parquet(edges) if edges.exists() else None, info["fingerprint"], info["source"])

    def counts(self) -> dict[str, Any]:
        s = self.split
        return {"users": s.num_users, "items": s.num_items, "train": len(s.train), "valid": len(s.valid),
                "test": len(s.test), "fingerprint": self.fingerprint}


def prepare(data_uri: str, cfg: SoraConfig, out_uri: str) -> Prepared:
    """Read the raw data once, split it, and save the prepared-split artifact."""
    from sora.data.contract import load_dataset
    from sora.data.split import make_split

    with storage.local_dir(data_uri) as data_dir:
        ds = load_dataset(data_dir)
    split = make_split(ds, cfg.split)
    items = ds.items.copy()
    items["item_id"] = items["item_id"].astype(str)
    prepared = Prepared(split, items, ds.user_edges, ds.fingerprint(), data_uri)
    with storage.output_dir(out_uri) as tmp:
        prepared.save(tmp)
    log.info("prepared %s: %s", data_uri, prepared.counts())
    return prepared


# ------------------------------------------------------------------------------------------ embed

def embed(prepared: Prepared, cfg: SoraConfig, out_uri: str, cache_uri: str | None = None,
          progress: bool = True, encoder=None) -> dict[str, Any]:
    """Item text → sentence embeddings (through the cache, which may live in the object store)."""
    import tempfile

    from sora.model.text import EmbeddingCache, embed_items, load_encoder

    encoder = encoder or load_encoder(cfg.text)
    emb, stats = embed_items(prepared.items, cfg.data.item_text_template, encoder,
                             EmbeddingCache(cache_uri) if cache_uri else None, cfg.text.batch_size, progress)
    with tempfile.TemporaryDirectory(prefix="sora-emb-") as tmp:
        emb.save(Path(tmp) / "embeddings.parquet")
        storage.write_bytes(out_uri, (Path(tmp) / "embeddings.parquet").read_bytes())
    return {"items": stats.items, "encoded": stats.encoded, "cached": stats.cached,
            "items_per_s": round(stats.items_per_s, 1) if stats.encoded else 0.0, "encoder_id": emb.encoder_id,
            "dim": int(emb.vectors.shape[1])}


def load_embeddings(uri: str):
    from sora.model.text import ItemEmbeddings

    with storage.local_file(uri) as path:
        return ItemEmbeddings.load(path)


# ------------------------------------------------------------------------------------------ train

def train(prepared: Prepared, embeddings_uri: str | None, cfg: SoraConfig, model_uri: str,
          curves_html: str | None = None, progress: bool = True, write: bool = True,
          checkpoint_uri: str | None = None):
    """Graph + GNN-Transformer training on the prepared split; saves the model directory at ``model_uri``.

    With ``train.checkpoint_every`` > 0 the loop checkpoints under ``checkpoint_uri`` (default
    ``<model_uri>.checkpoint``) and the same call resumes from there after a kill; the checkpoint is
    removed once the model is written.
    """
    from sora.evaluation.plots import training_curves_html
    from sora.training.checkpoint import Checkpointer
    from sora.training.checkpoint import checkpoint_uri as default_checkpoint_uri
    from sora.training.train import train_model

    emb = load_embeddings(embeddings_uri) if (cfg.model.use_text and embeddings_uri) else None
    checkpoint = None
    if cfg.train.checkpoint_every > 0:  # a preempted step resumes: run the same command again
        checkpoint = Checkpointer(checkpoint_uri or default_checkpoint_uri(model_uri), "",
                                  cfg.train.checkpoint_every, writer=write)
    result = train_model(prepared.split, emb, prepared.items, cfg, prepared.user_edges, progress=progress,
                         checkpoint=checkpoint)
    result.recommender.meta["data_source"] = prepared.source
    if write:
        save_model(result.recommender, model_uri)
        if curves_html:
            storage.write_text(curves_html, training_curves_html(result.history))
        if checkpoint is not None:
            checkpoint.clear()  # the model is written whole: nothing left to resume
    return result


def save_model(rec, model_uri: str) -> None:
    with storage.output_dir(model_uri) as tmp:
        rec.save(tmp)


def load_model(model_uri: str):
    from sora.model.recommender import Recommender

    with storage.local_dir(model_uri) as directory:
        return Recommender.load(directory)


def train_summary(result) -> dict[str, Any]:
    """What training chose on valid, for the pipeline's Model artifact and the CLI."""
    rec = result.recommender
    return {"best_epoch": result.best_epoch, "epochs": len(result.history), "seconds": round(result.seconds, 2),
            "temperature": rec.config.train.temperature, "head_weight": round(float(rec.alpha), 4),
            "head_decay": rec.head_decay, "transition_weight": round(float(rec.beta), 4),
            "transition_decay": rec.transition_decay,
            **{f"valid_{k}": v for k, v in result.valid.items()},
            **{f"tuning: {' '.join(t['overrides'])}": round(t["valid_ndcg@10"], 4) for t in rec.meta.get("tuning", [])}}


# ------------------------------------------------------------------------------------------ evaluate

def check_same_data(rec, prepared: Prepared, model_uri: str) -> None:
    """A model is only evaluated on the split it was trained on (same data fingerprint)."""
    trained_on = rec.meta.get("data_fingerprint")
    if trained_on and trained_on != prepared.fingerprint:
        raise ValueError(f"{model_uri} was trained on data with fingerprint {trained_on[:12]}, "
                         f"but {prepared.source} has {prepared.fingerprint[:12]}: evaluate on the training data")


def evaluate(model_uri: str, prepared: Prepared, out_json: str | None = None, baselines: bool = True,
             cfg: SoraConfig | None = None, embeddings_uri: str | None = None) -> dict[str, Any]:
    """Full-ranking metrics on the prepared split's test set, beside the baselines on the same split."""
    from sora.evaluation.evaluate import BASELINES, COLD_BASELINES, evaluate_model
    from sora.model.recommender import Recommender

    with storage.local_dir(model_uri) as directory:  # one download serves the load and the hash
        rec = Recommender.load(directory)
        digest = _hash_model_dir(directory)
    check_same_data(rec, prepared, model_uri)
    names: tuple[str, ...] = ()
    emb = None
    if baselines:
        names = COLD_BASELINES if prepared.split.spec.mode == "cold-item" else BASELINES
        if "textknn" in names:
            if embeddings_uri:
                emb = load_embeddings(embeddings_uri)
            else:
                names = tuple(n for n in names if n != "textknn")  # needs the embeddings artifact
    report = evaluate_model(rec, prepared.split, cfg or rec.config, names, emb)
    report["model_hash"] = digest
    if out_json:
        storage.write_text(out_json, json.dumps(report, indent=2))
    return report


#: What identifies a model's behaviour: its weights and fitted vectors, its config and its id maps. The
#: training log in ``meta.json`` (timings) is left out, so retraining to identical weights is the same model.
HASHED_FILES = ("model.safetensors", "config.json", "items.parquet")


def model_hash(model_uri: str) -> str:
    """sha256 over the model's defining files: identical models, identical hash."""
    with storage.local_dir(model_uri) as directory:
        return _hash_model_dir(directory)


def _hash_model_dir(directory: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in HASHED_FILES:
        path = directory / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ registry

def register(tracking_uri: str, model_name: str, model_uri: str, eval_json: str, prepared: Prepared | None = None,
             validation_html: str | None = None, curves_html: str | None = None) -> str:
    """Log the MLflow run and register the model (alias ``challenger``); an identical model is not
    registered twice (deduplicated by content hash). Returns the version."""
    from sora.registry import log_and_register

    report = json.loads(storage.read_text(eval_json))
    extra = {}
    with storage.local_dir(model_uri) as model_dir:
        for name, uri in (("validation_report.html", validation_html), ("training_curves.html", curves_html)):
            if uri and storage.exists(uri):
                extra[name] = storage.read_bytes(uri)
        lineage = None
        if prepared is not None:
            lineage = {"source": prepared.source, "digest": prepared.fingerprint, "counts": prepared.counts()}
        return log_and_register(tracking_uri, model_name, model_dir, report, extra, lineage=lineage).version


def compare(tracking_uri: str, model_name: str, version: str, model_uri: str, prepared: Prepared, margin: float,
            eval_json: str, card_md: str | None = None) -> tuple[bool, str]:
    """Gate the challenger against the champion on the challenger's own split; write the model card."""
    from sora.registry import compare as registry_compare
    from sora.registry import model_card

    rec = load_model(model_uri)
    check_same_data(rec, prepared, model_uri)
    decision = registry_compare(tracking_uri, model_name, version, rec, prepared.split, margin)
    if card_md:
        report = json.loads(storage.read_text(eval_json))
        from sora.model.explain import explanation_markdown

        card = model_card(report, decision, model_name, version)
        storage.write_text(card_md, card + "\n" + explanation_markdown(rec, rec.user_ids[0]))
    return decision.promote, decision.reason


def promote(tracking_uri: str, model_name: str, version: str, alias: str = "champion") -> str:
    from sora.registry import promote as registry_promote

    previous = registry_promote(tracking_uri, model_name, version, alias=alias)
    return f"{model_name} v{version} is {alias} (previous: {previous or 'none'})"


# ------------------------------------------------------------------------------------------ batch scoring

def batch_score(model_uri: str, k: int, out_uri: str, batch_size: int = 1024, progress: bool = True) -> dict[str, Any]:
    """Every known user's top-``k`` from the model at ``model_uri`` as Parquet (user_id, rank, item_id, score)."""
    from dataclasses import asdict

    from sora.serving.batch import batch_recommend

    stats = batch_recommend(load_model(model_uri), "all", k, out_uri, batch_size=batch_size, progress=progress)
    return {k: v for k, v in asdict(stats).items() if isinstance(v, (int, float, str))}

