"""``sora data fetch | validate | drift``."""

from __future__ import annotations

import logging
from pathlib import Path

from sora.cli.common import EXIT_FAIL, EXIT_OK, add_config_args, config_from, default_cache_dir, positive_int

#: sora.data.fetch.SOURCES and sora.data.datasets.DATASETS, written out so that building the parser imports no pandas
FETCH_NAMES = ("movielens-100k | ml-latest-small | movielens-1m | goodbooks-10k | book-crossing | anime | amazon-beauty | "
               "amazon-video-games | steam")


def cmd_fetch(args) -> int:
    from sora.data.contract import has_time_order
    from sora.data.fetch import fetch_to

    ds, origin = fetch_to(args.name, args.dest, cache_dir=args.cache or default_cache_dir() / "downloads",
                          source=args.source, fmt=args.format, core=args.core,
                          users=args.users or 0)
    print(f"fetched {args.name} from {origin}")
    print(f"  interactions: {len(ds.interactions)} rows, {ds.interactions['user_id'].nunique()} users, "
          f"{ds.interactions['item_id'].nunique()} items rated; items: {len(ds.items)}")
    if not has_time_order(ds.interactions):
        print("  no timestamps in the source: every row at 0 (1970-01-01); temporal splits and Protocol T do not apply")
    print(f"  written to {Path(args.dest).resolve()} ({args.format})")
    return EXIT_OK


def _print_result(text: str, args) -> None:
    print(text)
    for label, path in (("JSON summary", args.json), ("HTML report", args.report)):
        if path:
            print(f"{label}: {path}")


def cmd_validate(args) -> int:
    import great_expectations  # noqa: F401 - imported first so its logger levels can be overridden

    from sora import stages

    cfg = config_from(args)
    # GX sets this module's logger to INFO on import; quieten it after the import.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    result = stages.validate(args.data, cfg, args.report, args.json)
    _print_result(result.message, args)
    return EXIT_OK if result.passed else EXIT_FAIL


def cmd_drift(args) -> int:
    from sora import stages

    cfg = config_from(args)
    result = stages.drift(args.reference, args.data, cfg, args.report, args.json)
    _print_result(result.summary(), args)
    return EXIT_FAIL if result.status == "fail" else EXIT_OK


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="fetch, validate and compare data sets").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("fetch", help="write a public data set in Sora's layout (offline fallback for ml-100k)")
    p.add_argument("name", help=FETCH_NAMES)
    p.add_argument("--dest", type=Path, required=True, help="directory to write the tables to")
    p.add_argument("--source", default="auto", metavar="auto|grouplens|recbole|PATH|URL",
                   help="where the files come from: a local mirror (directory, archive or file as distributed) or "
                        "a URL; auto = the public download (for ml-100k offline: the recbole wheel)")
    p.add_argument("--users", type=positive_int, metavar="N",
                   help="keep N users drawn at random (seed 0), with all their interactions")
    p.add_argument("--core", type=int, default=0, metavar="K",
                   help="keep only users and items with at least K interactions (repeated until stable; after --users)")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--cache", type=Path, help="download cache (default: $SORA_CACHE_DIR or ~/.cache/sora)")
    p.set_defaults(func=cmd_fetch)

    p = data.add_parser("validate", help="run the Great Expectations suites; exit 1 on failure")
    p.add_argument("--data", required=True, help="dataset directory or URI (s3://bucket/prefix)")
    p.add_argument("--report", help="write a single-file HTML report here (path or URI)")
    p.add_argument("--json", help="write the JSON summary here (path or URI)")
    add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = data.add_parser("drift", help="compare new data with reference data; exit 1 when a fail threshold is crossed")
    p.add_argument("--reference", required=True, help="the champion's training data (directory or URI)")
    p.add_argument("--data", required=True, help="the new data (directory or URI)")
    p.add_argument("--report", help="write a single-file HTML report here")
    p.add_argument("--json", help="write the JSON summary here")
    add_config_args(p)
    p.set_defaults(func=cmd_drift)
