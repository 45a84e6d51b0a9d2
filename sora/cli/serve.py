"""``sora serve``: start the BentoML service (``sora_serving``) — placeholder port of the old command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sora.cli.common import EXIT_OK, tracking_uri


def cmd_serve(args) -> int:
    env = dict(os.environ)
    if args.model:
        env["SORA_MODEL_DIR"] = str(Path(args.model).resolve())
    else:
        env.pop("SORA_MODEL_DIR", None)
        env["SORA_MODEL_URI"] = args.model_uri
        env["MLFLOW_TRACKING_URI"] = tracking_uri(args)
    env["SORA_POLL_INTERVAL_S"] = str(args.poll_interval)
    cmd = [sys.executable, "-m", "bentoml", "serve", "sora_serving.service:SoraService",
           "--host", args.host, "--port", str(args.port)]
    print(f"serving {args.model or args.model_uri} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    os.execve(sys.executable, cmd, env)
    return EXIT_OK  # not reached


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="start the BentoML service (JSON APIs, /livez, /readyz, /metrics)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-uri", default="models:/sora@champion", help="registry URI, polled for alias moves")
    src.add_argument("--model", help="a local model directory instead of the registry")
    p.add_argument("--tracking-uri")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--poll-interval", type=float, default=30.0, help="seconds between alias checks")
    p.set_defaults(func=cmd_serve)
