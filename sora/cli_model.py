"""``sora train | evaluate | recommend``: thin wrappers over :mod:`sora.train`, :mod:`sora.evaluate`
and :class:`sora.recommender.Recommender`."""

from __future__ import annotations

import json
from pathlib import Path

EXIT_OK = 0


def cmd_train(args) -> int:
    from sora.cli import _config, default_cache_dir
    from sora.data import load_dataset
    from sora.text import EmbeddingCache
    from sora.train import prepare, train_model

    cfg = _config(args)
    if args.device:
        cfg.train.device = args.device
    rank = _init_distributed(cfg.train.device)
    ds = load_dataset(args.data)
    split, emb = prepare(ds, cfg, cache=EmbeddingCache(args.cache or default_cache_dir() / "embeddings"),
                         progress=rank == 0)
    result = train_model(split, emb, ds.items, cfg, ds.user_edges, progress=rank == 0)
    if rank > 0:
        return EXIT_OK  # every rank holds the same weights; rank 0 writes them
    result.recommender.save(args.out)
    v = result.valid
    print(f"trained in {result.seconds:.1f}s, best epoch {result.best_epoch}/{len(result.history)}: "
          f"valid ndcg@10 {v.get('ndcg@10', 0):.4f}, recall@10 {v.get('recall@10', 0):.4f}")
    print(f"model: {Path(args.out).resolve()}")
    return EXIT_OK


def _init_distributed(device: str) -> int:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns this rank."""
    import os

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
    from sora.cli import _config, default_cache_dir
    from sora.data import load_dataset
    from sora.evaluate import BASELINES, COLD_BASELINES, evaluate_model, rebuild_split
    from sora.recommender import Recommender

    rec = Recommender.load(args.model)
    ds = load_dataset(args.data)
    split = rebuild_split(rec, ds)
    names: tuple[str, ...] = ()
    emb = None
    if args.baselines:
        names = COLD_BASELINES if split.spec.mode == "cold-item" else BASELINES
        if "textknn" in names:
            from sora.text import EmbeddingCache, embed_items, load_encoder

            emb, _ = embed_items(ds.items, rec.config.data.item_text_template, load_encoder(rec.config.text),
                                 EmbeddingCache(default_cache_dir() / "embeddings"))
    cfg = rec.config if not (args.config or args.set) else _config(args)
    report = evaluate_model(rec, split, cfg, names, emb)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    if args.json:
        print(f"metrics: {args.json.resolve()}")
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
    from sora.recommender import Recommender

    rec = Recommender.load(args.model)
    if args.history:
        items, ignored = rec.recommend_from_history(args.history.split(","), k=args.k)
        if ignored:
            print(f"ignored unknown item ids: {', '.join(ignored)}")
    elif args.similar_to:
        items = rec.similar_items(args.similar_to, k=args.k)
    else:
        items = rec.recommend(args.user, k=args.k, exclude_seen=not args.include_seen)
    if args.json:
        print(json.dumps(items, indent=2))
        return EXIT_OK
    for rank, it in enumerate(items, 1):
        print(f"{rank:>3}. {it['title'] or it['item_id']}  (item {it['item_id']}, score {it['score']:.4f})")
    return EXIT_OK


def register(sub, add_config_args) -> None:
    p = sub.add_parser("train", help="prepare → embed → graph → train; writes a model directory")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="model directory (replaced atomically)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    p.add_argument("--cache", type=Path, help="embedding cache directory")
    add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="full-ranking metrics on the model's own split (+ baselines)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--json", type=Path, help="write {valid, test, baselines} metrics here")
    p.add_argument("--baselines", action="store_true", help="also fit and score MostPop, EASE, BPR-MF, LightGCN "
                   "(cold-item: MostPop, text kNN) on the same split")
    add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k for a user, a history of items, or items similar to one")
    p.add_argument("--model", type=Path, required=True)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user id")
    who.add_argument("--history", help="comma-separated item ids (anonymous user)")
    who.add_argument("--similar-to", help="item id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--include-seen", action="store_true", help="do not exclude the user's known items")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)
