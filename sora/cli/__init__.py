"""The ``sora`` command line (DESIGN.md §9): one module per command group, thin wrappers over :mod:`sora.stages`,
:mod:`sora.registry` and the library.

This package is the edge: it reads environment variables, configures logging, and is the only part of
``sora`` allowed to reach the pipeline (``sora_pipelines``) and service (``sora_serving``) packages,
lazily, inside the commands that need them. Every user error is one line on stderr; exit codes are
0 success, 1 data / gate / registry / storage failure, 2 usage error.

Package rules (``tests/test_layers.py``): the top layer; may import any part of ``sora`` (through
:mod:`sora.stages` where a stage exists), and holds ``make demo``'s driver (:mod:`sora.cli.demo`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from sora.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, default_cache_dir, setup_logging

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "build_parser", "default_cache_dir", "main"]

log = logging.getLogger("sora")


def build_parser() -> argparse.ArgumentParser:
    from sora.cli import batch, config, data, items, model, pipeline, registry, serve

    parser = argparse.ArgumentParser(prog="sora", description="Sora: graph + text recommender and its MLOps workflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (data, config, model, pipeline, registry, serve, items, batch):
        module.add_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split())[:2000] or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    setup_logging(args.verbose)
    from sora.config import ConfigError
    from sora.data.contract import DataError
    from sora.data.storage import StorageError
    from sora.model.recommender import ModelLoadError
    from sora.registry import RegistryError

    try:
        return args.func(args)
    except ConfigError as exc:
        message, code = f"config error: {_one_line(exc)}", EXIT_USAGE
    except DataError as exc:
        message, code = f"data error: {_one_line(exc)}", EXIT_FAIL
    except (RegistryError, StorageError, ModelLoadError) as exc:  # an outage or a damaged artifact: exit 1
        message, code = f"error: {_one_line(exc)}", EXIT_FAIL
    except KeyError as exc:  # unknown user / item ids
        message, code = f"error: {_one_line(exc)}", EXIT_USAGE
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        message, code = f"error: {_one_line(exc)}", EXIT_USAGE
    except ValueError as exc:
        message, code = f"error: {_one_line(exc)}", EXIT_USAGE
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    if args.verbose:
        log.exception("details")
    print(f"sora: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
