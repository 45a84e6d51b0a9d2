"""What every command module shares: exit codes, config arguments, the cache location, output files.

Environment variables are read here and in the command modules (the edge), never in the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from sora.config import SoraConfig, load_config

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def default_cache_dir() -> Path:
    """``$SORA_CACHE_DIR``, else ``$XDG_CACHE_HOME/sora``, else ``~/.cache/sora``."""
    base = os.environ.get("SORA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "sora")
    return Path(base)


def embedding_cache(flag: str | Path | None) -> str:
    """The embedding cache: the flag, else ``$SORA_EMBEDDING_CACHE`` (may be ``s3://…``), else the local default."""
    return str(flag or os.environ.get("SORA_EMBEDDING_CACHE") or default_cache_dir() / "embeddings")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sora").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("great_expectations", "urllib3", "sentence_transformers", "dgl", "matplotlib", "botocore",
                  "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON config file (see `sora config show`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_epochs=3 (repeatable)")


def config_from(args) -> SoraConfig:
    return load_config(getattr(args, "config", None), getattr(args, "set", None))


def tracking_uri(args, cfg: SoraConfig | None = None) -> str:
    """``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > the config's default; relative SQLite paths made absolute."""
    from sora.registry import resolve_tracking_uri

    uri = resolve_tracking_uri(getattr(args, "tracking_uri", None), dict(os.environ), cfg)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # pipeline steps may run in other directories: pin the default relative SQLite path
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def write_json(uri: str | Path, payload: Any) -> None:
    """Write JSON through a temporary name (a directory or unwritable path is one clear error)."""
    from sora.data import storage

    storage.write_text(str(uri), json.dumps(payload, indent=2))
