"""``sora items add``: new catalogue items through their text, same weights (:func:`sora.serving.items.add_items`).

With ``--model-uri models:/NAME@ALIAS`` the result is registered as a new version of NAME and the alias
is moved to it (``--no-promote`` leaves it on ``challenger``), so every replica's hot swap picks it up.
With ``--model DIR --out NEW_DIR`` it is written as a model directory.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from sora.cli.batch import add_model_args, load_model_from
from sora.cli.common import EXIT_OK, EXIT_USAGE, embedding_cache, tracking_uri


def read_items_file(uri: str):
    """An items table (CSV or Parquet, by extension); an unreadable one is an ItemsError naming the file."""
    import io

    import pandas as pd

    from sora.data import storage
    from sora.serving.items import ItemsError

    data = storage.read_bytes(uri)
    try:
        if uri.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(data))
        return pd.read_csv(io.BytesIO(data), dtype={"item_id": str}, keep_default_na=False, na_values=[""])
    except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed table
        raise ItemsError(f"{uri}: cannot read the items table ({type(exc).__name__}: {exc})", uri) from exc


def cmd_items_add(args) -> int:
    import sys

    from sora import stages
    from sora.model.text import EmbeddingCache, load_encoder
    from sora.serving.items import add_items

    registry_uri = args.model_uri if args.model_uri and args.model_uri.startswith("models:/") else None
    if not registry_uri and not args.out:
        print("sora items add: --out is required with --model (a new model directory)", file=sys.stderr)
        return EXIT_USAGE
    rec = load_model_from(args)
    new_items = read_items_file(args.items)
    encoder = load_encoder(rec.config.text)
    cache = EmbeddingCache(embedding_cache(args.cache))
    bigger, report = add_items(rec, new_items, encoder, cache, k=args.knn_k, progress=not args.no_progress)
    if not registry_uri:
        stages.save_model(bigger, args.out)
        print(f"added {report['added']} items ({report['items_before']} → {report['items_after']}): {args.out}")
    else:
        from sora import registry

        uri = tracking_uri(args)
        name, parent_version, _ = registry.resolve_model_uri(uri, registry_uri)
        m = re.match(r"^models:/[^/@]+@(?P<alias>[^/@]+)$", registry_uri)
        with tempfile.TemporaryDirectory(prefix="sora-items-") as tmp:
            model_dir = bigger.save(Path(tmp) / "model")
            eval_report = {"valid": {k: v for k, v in (rec.meta.get("valid") or {}).items()
                                     if isinstance(v, (int, float))},
                           "model_hash": stages.model_hash(str(model_dir)),
                           "catalogue": {"parent_version": parent_version, **{k: v for k, v in report.items()
                                                                               if k != "neighbours"}}}
            reg = registry.log_and_register(uri, name, model_dir, eval_report, run_name=f"items-add-v{parent_version}")
        print(f"added {report['added']} items ({report['items_before']} → {report['items_after']}): "
              f"registered {name} v{reg.version} (from v{parent_version})")
        if m and not args.no_promote:
            previous = registry.promote(uri, name, reg.version, alias=m["alias"])
            print(f"{m['alias']}: {name} v{reg.version} (was v{previous}); serving replicas swap on their next poll")
    if args.json:
        print(json.dumps(report, indent=2))
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("items", help="catalogue changes without retraining")
    isub = p.add_subparsers(dest="items_command", required=True)
    a = isub.add_parser("add", help="add items through their text (same weights, larger catalogue)")
    add_model_args(a)
    a.add_argument("--items", required=True, help="CSV/Parquet with item_id, title (+ categories, text, …)")
    a.add_argument("--out", help="new model directory or URI (required with --model)")
    a.add_argument("--knn-k", type=int, default=None, help="text neighbours per new item (default graph.item_knn_k)")
    a.add_argument("--cache", help="embedding cache directory or URI")
    a.add_argument("--no-promote", action="store_true",
                   help="with models:/NAME@ALIAS: register only (alias challenger), do not move ALIAS")
    a.add_argument("--no-progress", action="store_true")
    a.add_argument("--json", action="store_true", help="print the report (with each new item's neighbours)")
    a.set_defaults(func=cmd_items_add)
