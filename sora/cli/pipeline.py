"""``sora pipeline compile | run --local | submit | schedule``: the only CLI module that reaches ``sora_pipelines``
(imported lazily, so the library never depends on its wrappers)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sora.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, default_cache_dir, embedding_cache, tracking_uri


def _arguments(args, data_uri: str, local: bool = False) -> dict:
    """The run's parameters. A local run resolves the tracking URI (flag > ``MLFLOW_TRACKING_URI`` > the local
    SQLite default) and snapshots under the workdir; a cluster run sends only what was asked for on the
    command line, so the steps take the rest from the pipeline's Secret, never this machine's defaults."""
    if local:
        uri = tracking_uri(args)
        snapshots = args.snapshot_root or str((Path(args.workdir) / "snapshots").resolve())
    else:
        uri, snapshots = args.tracking_uri or "", args.snapshot_root or ""
    return {"data_uri": data_uri, "config_overrides": list(args.set or []), "tracking_uri": uri,
            "model_name": args.model_name, "promotion_margin": args.margin, "gpu_count": args.gpus,
            "embedding_cache": embedding_cache(args.embedding_cache) if args.embedding_cache or local
            else "", "run_baselines": not args.no_baselines,
            "batch_top_k": args.batch_top_k, "snapshot_root": snapshots}


def cmd_compile(args) -> int:
    from sora_pipelines import compile_pipeline

    print(f"pipeline: {compile_pipeline(args.output).resolve()}")
    return EXIT_OK


def cmd_run(args) -> int:
    from sora import registry

    data = args.data
    if data is None:
        from sora.data.fetch import fetch_to

        data = Path(args.workdir) / "data" / "movielens-100k"
        if not (data / "interactions.csv").exists():
            fetch_to("movielens-100k", data, cache_dir=default_cache_dir() / "downloads")
    from sora.data import storage

    data_uri = str(data) if storage.is_remote(str(data)) else str(Path(data).resolve())
    arguments = _arguments(args, data_uri, local=True)
    uri = arguments["tracking_uri"]
    registry.check_reachable(uri)
    before = {r["version"] for r in registry.show(uri, args.model_name)}
    from sora_pipelines import run_local

    try:
        run_local(arguments, Path(args.workdir).resolve() / "pipeline_runs", enable_caching=not args.no_cache)
    except RuntimeError as exc:
        print(f"sora: pipeline failed: {str(exc).splitlines()[0] if str(exc) else exc}", file=sys.stderr)
        if {r["version"] for r in registry.show(uri, args.model_name)} == before:
            print("nothing was registered", file=sys.stderr)
        return EXIT_FAIL
    rows = registry.show(uri, args.model_name)
    new = [r for r in rows if r["version"] not in before]
    for r in new:
        print(f"registered {args.model_name} v{r['version']} (test ndcg@10 {r['test_ndcg@10']:.4f}): "
              f"{r['decision'] or 'no decision'} — {r['reason']}")
    if not new:
        print("no new version: this model is already registered (same content hash)")
    champion = next((r for r in rows if "champion" in r["aliases"]), None)
    if champion:
        print(f"champion: {args.model_name} v{champion['version']} (test ndcg@10 {champion['test_ndcg@10']:.4f})")
    bindir = Path(sys.executable).parent  # the environment's own scripts, also when it is not activated
    print(f"MLflow UI:  {bindir / 'mlflow'} ui --backend-store-uri {uri}")
    print(f"serve it:   MLFLOW_TRACKING_URI={uri} {bindir / 'sora'} serve --model-uri models:/{args.model_name}@champion")
    return EXIT_OK


def _read_token() -> str | None:
    """The Kubeflow Pipelines bearer token: ``$KFP_TOKEN`` only (a command-line token would show in process
    listings and CI logs)."""
    return os.environ.get("KFP_TOKEN") or None


def cmd_submit(args) -> int:
    arguments = _arguments(args, args.data)
    if args.distributed:
        if not args.model_out:
            print("sora pipeline submit --distributed needs --model-out URI (the object-store prefix the TrainJob "
                  "writes its model under)", file=sys.stderr)
            return EXIT_USAGE
        arguments.update(num_nodes=args.nodes, model_root=args.model_out)
    if args.dry_run:
        from sora_pipelines import compile_pipeline

        package = compile_pipeline(Path(args.workdir) / "sora-training.yaml", distributed=args.distributed)
        print(json.dumps({"pipeline": str(package.resolve()), "arguments": arguments}, indent=2))
        return EXIT_OK
    if not args.host:
        print("sora pipeline submit: --host is required (or --dry-run)", file=sys.stderr)
        return EXIT_USAGE
    from sora_pipelines import submit

    run = submit(args.host, arguments, _read_token(), args.namespace, distributed=args.distributed)
    print(f"submitted run {getattr(run, 'run_id', run)} to {args.host}")
    return EXIT_OK


def cmd_schedule(args) -> int:
    from sora_pipelines import compile_pipeline, schedule

    package = compile_pipeline(Path(args.workdir) / "sora-training.yaml")
    job = schedule(args.host, args.cron, _arguments(args, args.data), package, _read_token(), args.namespace)
    print(f"scheduled recurring run {getattr(job, 'recurring_run_id', job)} ({args.cron}) on {args.host}")
    return EXIT_OK


def add_parser(sub) -> None:
    from sora.config import RegistryConfig

    defaults = RegistryConfig()

    def common(p, data_required=False):
        p.add_argument("--tracking-uri", help="MLflow URI (run --local: default $MLFLOW_TRACKING_URI, else "
                       "sqlite:///.sora/mlflow.db; submit/schedule: default none, the steps read the Secret's)")
        p.add_argument("--snapshot-root", help="where immutable copies of the training data go (an object-store "
                       "prefix on a cluster; default: run --local WORKDIR/snapshots, submit/schedule the "
                       "Secret's SORA_SNAPSHOT_ROOT)")
        p.add_argument("--model-name", default=defaults.model_name)
        p.add_argument("--margin", type=float, default=defaults.promotion_margin,
                       help="relative NDCG@10 margin the challenger must beat")
        p.add_argument("--gpus", type=int, default=0, help="GPUs for the train step (0 = CPU nodes)")
        p.add_argument("--embedding-cache", help="embedding cache shared by runs (directory or s3:// URI)")
        p.add_argument("--data", required=data_required,
                       help="dataset URI the steps can read (s3://bucket/prefix, gs://…, or a mounted path)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
        p.add_argument("--workdir", default=".sora", help="local outputs (default .sora)")
        p.add_argument("--no-baselines", action="store_true", help="skip the baselines in the evaluate step")
        p.add_argument("--batch-top-k", type=int, default=0, metavar="K",
                       help="after a promotion, write the new champion's top-K for every user (0 = skip)")

    pipe = sub.add_parser("pipeline", help="compile, run locally, submit or schedule the Kubeflow pipeline")
    ps = pipe.add_subparsers(dest="pipeline_command", required=True)
    p = ps.add_parser("compile", help="write the pipeline IR YAML")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=cmd_compile)
    p = ps.add_parser("run", help="run the whole pipeline with kfp.local in this environment")
    p.add_argument("--local", action="store_true", required=True)
    p.add_argument("--no-cache", action="store_true", help="disable kfp.local step caching")
    common(p)
    p.set_defaults(func=cmd_run)
    for name, fn, helptext in (("submit", cmd_submit, "start a run on a Kubeflow Pipelines endpoint"),
                               ("schedule", cmd_schedule, "create a recurring run")):
        p = ps.add_parser(name, help=helptext)
        p.add_argument("--host", required=name == "schedule",
                       help="Kubeflow Pipelines API endpoint (bearer token for multi-user clusters: $KFP_TOKEN)")
        p.add_argument("--namespace", help="Kubeflow profile namespace")
        if name == "schedule":
            p.add_argument("--cron", required=True, help="6-field cron, e.g. '0 0 3 * * *' (daily 03:00)")
        else:
            p.add_argument("--distributed", action="store_true",
                           help="the pipeline whose train step is a multi-node TrainJob (Kubeflow Trainer), behind "
                           "the same validate, drift and compare gates")
            p.add_argument("--nodes", type=int, default=2, help="TrainJob nodes (with --distributed)")
            p.add_argument("--model-out", help="object-store prefix the TrainJob writes models under (with --distributed)")
            p.add_argument("--dry-run", action="store_true",
                           help="compile the pipeline and print it with the run's arguments; submit nothing")
        common(p, data_required=True)
        p.set_defaults(func=fn)
