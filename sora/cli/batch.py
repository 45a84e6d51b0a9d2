"""``sora batch-recommend``: every user's top-k, offline, as one Parquet table (:func:`sora.serving.batch.batch_recommend`)."""

from __future__ import annotations

import json

from sora.cli.common import EXIT_OK, positive_int, tracking_uri


def add_model_args(p) -> None:
    """``--model-uri models:/NAME@ALIAS`` (registry) or ``--model DIR`` (a model directory or URI); one is required."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-uri", help="registry model, models:/NAME@ALIAS or models:/NAME/VERSION")
    which.add_argument("--model", help="model directory or URI")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)")


def load_model_from(args):
    """The Recommender named by ``--model-uri`` or ``--model``."""
    from sora import stages

    if args.model_uri and args.model_uri.startswith("models:/"):
        from sora.registry import load_version

        return load_version(tracking_uri(args), args.model_uri)
    return stages.load_model(args.model_uri or args.model)


def read_users_arg(value: str) -> str | list[str]:
    """``all``, or a users file (CSV / Parquet with a user_id column, or a text file of one id per line)."""
    if value == "all":
        return "all"
    import io

    import pandas as pd

    from sora.data import storage
    from sora.serving.batch import read_user_ids

    data = storage.read_bytes(value)
    if value.endswith(".parquet"):
        return read_user_ids(pd.read_parquet(io.BytesIO(data)))
    text = data.decode("utf-8")
    first = text.splitlines()[0].strip() if text.strip() else ""
    if value.endswith(".csv") or "," in first or first == "user_id":
        return read_user_ids(pd.read_csv(io.StringIO(text), dtype={"user_id": str}, keep_default_na=False,
                                         na_values=[""]))
    return [line.strip() for line in text.splitlines() if line.strip()]


def cmd_batch_recommend(args) -> int:
    from sora.serving.batch import batch_recommend

    rec = load_model_from(args)
    users = read_users_arg(args.users)
    stats = batch_recommend(rec, users, args.k, args.out, batch_size=args.batch_size,
                            exclude_seen=not args.include_seen, skip_unknown=args.skip_unknown,
                            progress=not args.no_progress)
    print(f"scored {stats.users} users ({stats.rows} rows, k={stats.k}) in {stats.seconds:.1f}s: "
          f"{stats.users_per_s:.0f} users/s -> {stats.out}")
    if stats.skipped_unknown:
        print(f"skipped {len(stats.skipped_unknown)} unknown user id(s): {', '.join(stats.skipped_unknown[:20])}"
              + (" …" if len(stats.skipped_unknown) > 20 else ""))
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("batch-recommend", help="top-k for every user (or a users file) into one Parquet table")
    add_model_args(p)
    p.add_argument("--users", default="all", help="'all' (default) or a file of user ids (CSV/Parquet with a "
                   "user_id column, or one id per line); unknown ids are an error unless --skip-unknown")
    p.add_argument("-k", type=positive_int, default=100, help="items per user (default 100)")
    p.add_argument("--out", required=True, help="output Parquet file (path or URI): user_id, rank, item_id, score")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="users scored at once (bounds memory)")
    p.add_argument("--include-seen", action="store_true", help="do not exclude the users' known items")
    p.add_argument("--skip-unknown", action="store_true", help="score the known users, list the unknown ones")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's stats as JSON")
    p.set_defaults(func=cmd_batch_recommend)
