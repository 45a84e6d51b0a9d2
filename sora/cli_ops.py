"""``sora pipeline …`` and ``sora registry …``: thin wrappers over ``sora_pipelines`` and :mod:`sora.registry`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL = 0, 1


def _tracking_uri(args) -> str:
    from sora.registry import resolve_tracking_uri

    uri = resolve_tracking_uri(getattr(args, "tracking_uri", None), dict(os.environ))
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # pipeline steps may run elsewhere: make the default relative SQLite path absolute
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _arguments(args, data_dir: str) -> dict:
    return {"data_dir": data_dir, "config_overrides": ";".join(args.set or []), "tracking_uri": _tracking_uri(args),
            "model_name": args.model_name, "promotion_margin": args.margin, "gpu_count": args.gpus,
            "embedding_cache": str(args.embedding_cache) if args.embedding_cache else "",
            "run_baselines": not args.no_baselines}


def cmd_compile(args) -> int:
    from sora_pipelines import compile_pipeline

    print(f"pipeline: {compile_pipeline(args.output).resolve()}")
    return EXIT_OK


def cmd_run(args) -> int:
    from sora import registry
    from sora.cli import default_cache_dir

    if not args.local:
        print("sora: only --local runs here; use `sora pipeline submit --host URL` for a cluster", file=sys.stderr)
        return 2
    data = args.data
    if data is None:
        from sora.fetch import fetch_to

        data = Path(args.workdir) / "data" / "movielens-100k"
        if not (data / "interactions.csv").exists():
            fetch_to("movielens-100k", data, cache_dir=default_cache_dir() / "downloads")
    if args.embedding_cache is None:
        args.embedding_cache = default_cache_dir() / "embeddings"
    arguments = _arguments(args, str(Path(data).resolve()))
    uri = arguments["tracking_uri"]
    before = {r["version"] for r in registry.show(uri, args.model_name)}
    from sora_pipelines import run_local

    try:
        run_local(arguments, Path(args.workdir).resolve() / "pipeline_runs", enable_caching=not args.no_cache)
    except RuntimeError as exc:
        print(f"sora: pipeline failed: {exc}", file=sys.stderr)
        print("nothing was registered" if {r["version"] for r in registry.show(uri, args.model_name)} == before
              else "", file=sys.stderr)
        return EXIT_FAIL
    rows = registry.show(uri, args.model_name)
    new = [r for r in rows if r["version"] not in before]
    for r in new:
        print(f"registered {args.model_name} v{r['version']} (test ndcg@10 {r['test_ndcg@10']:.4f}): "
              f"{r['decision'] or 'no decision'} — {r['reason']}")
    champion = next((r for r in rows if "champion" in r["aliases"]), None)
    if champion:
        print(f"champion: {args.model_name} v{champion['version']} (test ndcg@10 {champion['test_ndcg@10']:.4f})")
    bindir = Path(sys.executable).parent  # the environment's own scripts, also when it is not activated
    print(f"MLflow UI:  {bindir / 'mlflow'} ui --backend-store-uri {uri}")
    print(f"serve it:   MLFLOW_TRACKING_URI={uri} {bindir / 'sora'} serve --model-uri models:/{args.model_name}@champion")
    return EXIT_OK


def _read_token(args) -> str | None:
    return args.token or os.environ.get("KFP_TOKEN")


def cmd_submit(args) -> int:
    from sora_pipelines import submit

    run = submit(args.host, _arguments(args, args.data), _read_token(args), args.namespace)
    print(f"submitted run {getattr(run, 'run_id', run)} to {args.host}")
    return EXIT_OK


def cmd_schedule(args) -> int:
    from sora_pipelines import compile_pipeline, schedule

    package = compile_pipeline(Path(args.workdir) / "sora-training.yaml")
    job = schedule(args.host, args.cron, _arguments(args, args.data), package, _read_token(args), args.namespace)
    print(f"scheduled recurring run {getattr(job, 'recurring_run_id', job)} ({args.cron}) on {args.host}")
    return EXIT_OK


def cmd_registry(args) -> int:
    from sora import registry

    uri = _tracking_uri(args)
    if args.registry_command == "show":
        rows = registry.show(uri, args.model_name)
        if not rows:
            print(f"no versions of {args.model_name} in {uri}")
        for r in rows:
            ndcg = f"{r['test_ndcg@10']:.4f}" if r["test_ndcg@10"] is not None else "-"
            print(f"v{r['version']:<4} {','.join(r['aliases']) or '-':<22} test ndcg@10 {ndcg}  {r['decision']}")
        return EXIT_OK
    if args.registry_command == "promote":
        previous = registry.promote(uri, args.model_name, args.version)
        print(f"champion: {args.model_name} v{args.version} (was {previous or 'none'})")
        return EXIT_OK
    frm, to = registry.rollback(uri, args.model_name)
    print(f"champion rolled back: {args.model_name} v{frm} → v{to}")
    return EXIT_OK


def cmd_serve(args) -> int:
    """Start ``bentoml serve sora_serving.service:SoraService`` with the model source in its environment."""
    env = dict(os.environ)
    if args.model:
        env["SORA_MODEL_DIR"] = str(Path(args.model).resolve())
    else:
        env.pop("SORA_MODEL_DIR", None)
        env["SORA_MODEL_URI"] = args.model_uri
        env["MLFLOW_TRACKING_URI"] = _tracking_uri(args)
    env["SORA_POLL_INTERVAL_S"] = str(args.poll_interval)
    cmd = [sys.executable, "-m", "bentoml", "serve", "sora_serving.service:SoraService",
           "--host", args.host, "--port", str(args.port)]
    print(f"serving {args.model or args.model_uri} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    # Replace this process with bentoml's, so signals (Ctrl-C, SIGTERM from a supervisor or a test)
    # reach the server directly and no orphaned server outlives `sora serve`.
    os.execve(sys.executable, cmd, env)
    return EXIT_OK  # not reached


def register(sub, add_config_args) -> None:
    def common(p, data_required=False):
        p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///.sora/mlflow.db)")
        p.add_argument("--model-name", default="sora")
        p.add_argument("--margin", type=float, default=0.0, help="relative NDCG@10 margin the challenger must beat")
        p.add_argument("--gpus", type=int, default=0, help="GPUs for the train step (0 = CPU)")
        p.add_argument("--embedding-cache", type=Path, help="embedding cache directory shared by runs")
        p.add_argument("--data", required=data_required, help="dataset directory (a path the steps can read)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
        p.add_argument("--workdir", default=".sora", help="local outputs (default .sora)")
        p.add_argument("--no-baselines", action="store_true", help="skip the baselines in the evaluate step")

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
        p.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint")
        p.add_argument("--token", help="bearer token for multi-user clusters (default: $KFP_TOKEN)")
        p.add_argument("--namespace", help="Kubeflow profile namespace")
        if name == "schedule":
            p.add_argument("--cron", required=True, help="6-field cron, e.g. '0 0 3 * * *' (daily 03:00)")
        common(p, data_required=True)
        p.set_defaults(func=fn)

    p = sub.add_parser("serve", help="start the BentoML service (JSON APIs, /livez, /readyz, /metrics)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-uri", default="models:/sora@champion", help="registry URI, polled for alias moves")
    src.add_argument("--model", help="a local model directory instead of the registry")
    p.add_argument("--tracking-uri")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--poll-interval", type=float, default=30.0, help="seconds between alias checks")
    p.set_defaults(func=cmd_serve)

    reg = sub.add_parser("registry", help="show versions, promote a version, roll back the champion")
    rs = reg.add_subparsers(dest="registry_command", required=True)
    for name, helptext in (("show", "list versions with aliases and decisions"),
                           ("promote", "make a version the champion"),
                           ("rollback", "move champion back to the version it replaced")):
        p = rs.add_parser(name, help=helptext)
        p.add_argument("--tracking-uri")
        p.add_argument("--model-name", default="sora")
        if name == "promote":
            p.add_argument("version")
        p.set_defaults(func=cmd_registry)
