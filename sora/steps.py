"""One function per pipeline step, over paths (the layer between Kubeflow components and the library).

Each Kubeflow component in ``components/`` calls exactly one of these; ``sora pipeline run --local``
runs them through ``kfp.local``. Overrides arrive as one string of ``key=value`` items separated by
``;`` (pipeline parameters are scalars).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sora.config import SoraConfig

log = logging.getLogger(__name__)


def parse_overrides(text: str) -> list[str]:
    return [p.strip() for p in (text or "").replace("\n", ";").split(";") if p.strip()]


def config_from(overrides: str) -> SoraConfig:
    return SoraConfig().with_overrides(parse_overrides(overrides))


def validate_step(data_dir: str, overrides: str, report_html: str, summary_json: str) -> tuple[bool, str, str]:
    """Validate; always write the HTML report and JSON summary. Returns (passed, message, data fingerprint)."""
    from sora.data import DataError, load_dataset
    from sora.validation import validate_dataset_dir

    cfg = config_from(overrides)
    report = validate_dataset_dir(data_dir, cfg.validation, cfg.data)
    report.write(summary_json, report_html)
    fingerprint = ""
    if report.passed:
        try:
            fingerprint = load_dataset(data_dir).fingerprint()
        except DataError as exc:  # validation passed, so this would be a reader bug: fail loudly
            return False, str(exc), ""
    return report.passed, report.summary(), fingerprint


def prepare_step(data_dir: str, overrides: str, split_dir: str) -> dict[str, Any]:
    from sora.data import load_dataset
    from sora.split import make_split

    split = make_split(load_dataset(data_dir), config_from(overrides).split)
    split.save(split_dir)
    return {"users": split.num_users, "items": split.num_items, "train": len(split.train),
            "valid": len(split.valid), "test": len(split.test)}


def embed_step(data_dir: str, overrides: str, out_file: str, cache_dir: str = "") -> dict[str, Any]:
    from sora.data import load_dataset
    from sora.text import EmbeddingCache, embed_items, load_encoder

    cfg = config_from(overrides)
    ds = load_dataset(data_dir)
    emb, stats = embed_items(ds.items, cfg.data.item_text_template, load_encoder(cfg.text),
                             EmbeddingCache(cache_dir) if cache_dir else None, cfg.text.batch_size)
    emb.save(out_file)
    return {"items": stats.items, "encoded": stats.encoded, "cached": stats.cached, "encoder_id": emb.encoder_id}


def train_step(data_dir: str, split_dir: str, embeddings_file: str, overrides: str, model_dir: str,
               curves_html: str = "") -> dict[str, Any]:
    from sora.data import load_dataset
    from sora.plots import training_curves_html
    from sora.split import Split
    from sora.text import ItemEmbeddings
    from sora.train import train_model

    cfg = config_from(overrides)
    ds = load_dataset(data_dir)
    emb = ItemEmbeddings.load(embeddings_file) if cfg.model.use_text else None
    result = train_model(Split.load(split_dir), emb, ds.items, cfg, ds.user_edges)
    result.recommender.save(model_dir)
    if curves_html:
        Path(curves_html).write_text(training_curves_html(result.history))
    return {"best_epoch": result.best_epoch, "epochs": len(result.history), "seconds": result.seconds,
            **{f"valid_{k}": v for k, v in result.valid.items()}}


def evaluate_step(model_dir: str, data_dir: str, out_json: str, baselines: bool = True) -> dict[str, Any]:
    from sora.data import load_dataset
    from sora.evaluate import BASELINES, COLD_BASELINES, evaluate_model, rebuild_split
    from sora.recommender import Recommender

    rec = Recommender.load(model_dir)
    split = rebuild_split(rec, load_dataset(data_dir))
    names = (COLD_BASELINES if split.spec.mode == "cold-item" else BASELINES) if baselines else ()
    names = tuple(n for n in names if n != "textknn")  # needs the encoder; the benchmark reports it
    report = evaluate_model(rec, split, rec.config, names)
    Path(out_json).write_text(json.dumps(report, indent=2))
    return report


def register_step(tracking_uri: str, model_name: str, model_dir: str, eval_json: str, validation_html: str = "",
                  curves_html: str = "") -> str:
    from sora.registry import log_and_register

    report = json.loads(Path(eval_json).read_text())
    extra = {"training_curves": curves_html} if curves_html else None
    return log_and_register(tracking_uri, model_name, model_dir, report, validation_html or None, extra).version


def compare_step(tracking_uri: str, model_name: str, version: str, model_dir: str, data_dir: str, margin: float,
                 eval_json: str, card_md: str) -> tuple[bool, str]:
    """Gate the challenger against the champion; write the model card. Returns (promote, reason)."""
    from sora.data import load_dataset
    from sora.registry import compare, model_card

    decision = compare(tracking_uri, model_name, version, load_dataset(data_dir), margin, challenger_dir=model_dir)
    report = json.loads(Path(eval_json).read_text())
    Path(card_md).write_text(model_card(report, decision, model_name, version))
    return decision.promote, decision.reason


def promote_step(tracking_uri: str, model_name: str, version: str) -> str:
    from sora.registry import promote

    previous = promote(tracking_uri, model_name, version)
    return f"{model_name} v{version} is champion (previous: {previous or 'none'})"
