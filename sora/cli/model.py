"""``sora embed | train | evaluate | recommend | explain``: the stage functions of :mod:`sora.stages` for people at a terminal."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from sora.cli.common import EXIT_OK, add_config_args, config_from, embedding_cache, positive_int, write_json


@contextlib.contextmanager
def _prepared(data: str, cfg, prepared_uri: str | None = None):
    """The prepared-split artifact: the one given, else prepared now from ``data`` in a temporary directory."""
    from sora import stages

    if prepared_uri:
        yield stages.Prepared.load(prepared_uri)
        return
    with tempfile.TemporaryDirectory(prefix="sora-prep-") as tmp:
        yield stages.prepare(data, cfg, str(Path(tmp) / "prepared"))


def cmd_embed(args) -> int:
    from sora import stages

    cfg = config_from(args)
    cache = embedding_cache(args.cache)
    with _prepared(args.data, cfg) as prepared:
        stats = stages.embed(prepared, cfg, str(args.out), cache)
    rate = f"{stats['items_per_s']:.0f} items/s" if stats["encoded"] else "nothing to encode"
    print(f"embedded {stats['items']} items with {stats['encoder_id']}: {stats['encoded']} encoded ({rate}), "
          f"{stats['cached']} from cache {cache}")
    print(f"embeddings ({stats['dim']}-d): {args.out}")
    return EXIT_OK


def cmd_train(args) -> int:
    from sora import stages

    cfg = config_from(args)
    if args.device:
        cfg.train.device = args.device
    rank = _init_distributed(cfg.train.device)
    with _prepared(args.data, cfg, args.prepared) as prepared, tempfile.TemporaryDirectory() as tmp:
        emb_uri = None
        if cfg.model.use_text:
            emb_uri = str(Path(tmp) / "embeddings.parquet")
            stages.embed(prepared, cfg, emb_uri, embedding_cache(args.cache), progress=rank == 0)
        result = stages.train(prepared, emb_uri, cfg, str(args.out), progress=rank == 0, write=rank == 0)
    if rank > 0:
        return EXIT_OK  # every rank holds the same weights; rank 0 writes them
    v = result.valid
    device = result.recommender.meta.get("device")
    print(f"trained in {result.seconds:.1f}s, best epoch {result.best_epoch}/{len(result.history)}: "
          f"valid ndcg@10 {v.get('ndcg@10', 0):.4f}, recall@10 {v.get('recall@10', 0):.4f}"
          + (f" on {device.get('name', device) if isinstance(device, dict) else device}" if device else ""))
    rec = result.recommender
    trials = "; ".join(f"{' '.join(t['overrides'])}: {t['valid_ndcg@10']:.4f}" for t in rec.meta.get("tuning", []))
    print(f"chosen on valid: {_tuned_values(rec)}"
          + (f" (valid ndcg@10 by trial: {trials})" if trials else "")
          + f", item–item head weight {rec.alpha:.3g}, recency decay {rec.head_decay:g}"
          + (f", transition head weight {rec.beta:.3g}, decay {rec.transition_decay:g}" if rec.beta else ""))
    print(f"model: {args.out}")
    return EXIT_OK


def _tuned_values(rec) -> str:
    """The values of the keys ``tune.grid`` tried (``model.position_std=1.0 train.temperature=1.0``), or the temperature."""
    from operator import attrgetter

    keys = sorted({o.split("=", 1)[0] for t in rec.meta.get("tuning", []) for o in t["overrides"]}) or ["train.temperature"]
    return " ".join(f"{key}={attrgetter(key)(rec.config)}" for key in keys)


def _init_distributed(device: str) -> int:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns this rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch
    import torch.distributed as dist

    backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank()


def cmd_evaluate(args) -> int:
    from sora import stages

    rec_cfg = stages.load_model(str(args.model)).config
    cfg = config_from(args) if (args.config or args.set) else rec_cfg
    with _prepared(args.data, rec_cfg, args.prepared) as prepared, tempfile.TemporaryDirectory() as tmp:
        emb_uri = None
        if args.baselines and prepared.split.spec.mode == "cold-item":
            emb_uri = str(Path(tmp) / "embeddings.parquet")
            stages.embed(prepared, rec_cfg, emb_uri, embedding_cache(None))
        report = stages.evaluate(str(args.model), prepared, None, args.baselines, cfg, emb_uri)
    if args.json:
        write_json(args.json, report)
    print(format_report(report))
    if args.json:
        print(f"metrics: {args.json}")
    return EXIT_OK


def format_report(report: dict) -> str:
    keys = ["recall@10", "ndcg@10", "hit@10", "mrr@10", "precision@10", "coverage@10", "recall@20", "ndcg@20"]
    rows = [("sora (valid)", report["valid"]), ("sora (test)", report["test"])]
    rows += [(f"{name} (test)", m) for name, m in report.get("baselines", {}).items()]
    width = max(len(r[0]) for r in rows)
    lines = [" " * width + "  " + "  ".join(f"{k:>12}" for k in keys)]
    for name, m in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m.get(k, float('nan')):>12.4f}" for k in keys))
    return "\n".join(lines)


def cmd_recommend(args) -> int:
    from sora import stages

    rec = stages.load_model(str(args.model))
    if args.explain and args.similar_to:
        raise ValueError("--explain explains a user's or a history's recommendations, not --similar-to")
    if args.history:
        items, ignored = rec.recommend_from_history(args.history.split(","), k=args.k, explain=args.explain)
        if ignored:
            print(f"ignored unknown item ids: {', '.join(ignored)}")
    elif args.similar_to:
        items = rec.similar_items(args.similar_to, k=args.k)
    else:
        items = rec.recommend(args.user, k=args.k, exclude_seen=not args.include_seen, explain=args.explain)
    if args.json:
        print(json.dumps(items, indent=2))
        return EXIT_OK
    print(format_recommendations(items, rec.titles))
    return EXIT_OK


def format_recommendations(items: list[dict], titles: dict[str, str]) -> str:
    """Ranked lines; with explanations, each item's ``because`` items indented beneath it."""
    lines = []
    for rank, it in enumerate(items, 1):
        lines.append(f"{rank:>3}. {it['title'] or it['item_id']}  (item {it['item_id']}, score {it['score']:.4f})")
        for b in it.get("because", []):
            lines.append(f"       because of {titles.get(b['item_id']) or b['item_id']}  "
                         f"(item {b['item_id']}, weight {b['weight']:+.4f})")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="embed item text (cached by encoder and text hash)")
    p.add_argument("--data", required=True, help="dataset directory or URI")
    p.add_argument("--out", required=True, help="Parquet file of item_id, text, vector (path or URI)")
    p.add_argument("--cache", help="embedding cache, a directory or URI (default: $SORA_EMBEDDING_CACHE, "
                   "else ~/.cache/sora/embeddings)")
    add_config_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("train", help="prepare → embed → graph → train; writes a model directory")
    p.add_argument("--data", required=True, help="dataset directory or URI")
    p.add_argument("--prepared", help="a prepared-split artifact to train on instead of splitting --data again")
    p.add_argument("--out", required=True, help="model directory or URI (replaced whole, only on success)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    p.add_argument("--cache", help="embedding cache directory or URI")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="full-ranking metrics on the model's own split (+ baselines)")
    p.add_argument("--model", required=True, help="model directory or URI")
    p.add_argument("--data", required=True, help="the dataset the model was trained on (directory or URI)")
    p.add_argument("--prepared", help="the prepared-split artifact instead of splitting --data again")
    p.add_argument("--json", help="write {valid, test, baselines} metrics here")
    p.add_argument("--baselines", action="store_true", help="also fit and score MostPop, EASE, BPR-MF, LightGCN "
                   "(cold-item: MostPop, text kNN) on the same split")
    add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k for a user, a history of items, or items similar to one")
    p.add_argument("--model", required=True, help="model directory or URI")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id")
    who.add_argument("--history", help="comma-separated item ids (anonymous user)")
    who.add_argument("--similar-to", help="item id")
    p.add_argument("-k", type=positive_int, default=10, help="number of items (>= 1)")
    p.add_argument("--include-seen", action="store_true", help="do not exclude the user's known items")
    p.add_argument("--explain", action="store_true", help="list under each item the history items that drove it "
                   "(their weight: item–item head share + the score change without them)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("explain", help="a user's (or a history's) top-k, each with the history items that drove it")
    p.add_argument("--model", required=True, help="model directory or URI")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id")
    who.add_argument("--history", help="comma-separated item ids, oldest first (anonymous user)")
    p.add_argument("-k", type=positive_int, default=5, help="number of items (>= 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend, explain=True, similar_to=None, include_seen=False)
