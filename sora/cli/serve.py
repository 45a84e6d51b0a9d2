"""``sora serve``: run the BentoML service (``sora_serving``) as a child that cannot outlive this process.

``sora serve`` stays the parent of ``bentoml serve``: the child runs in its own session with
``PR_SET_PDEATHSIG`` (SIGTERM when ``sora serve`` dies, even by SIGKILL), its workers carry the same
setting towards it (``SORA_DIE_WITH_PARENT``), and ``sora serve`` is a child subreaper, so a worker
orphaned by its arbiter comes back to it and is stopped on exit. SIGTERM / SIGINT / SIGHUP are
forwarded; in-flight requests get ``serve.grace_period_s`` to finish, then everything left is killed.
A port already in use is one line on stderr and exit 2, before anything starts.
"""

from __future__ import annotations

import argparse
import ctypes  # noqa: F401 - loaded before fork: the child's preexec_fn must not import
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sora.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE, tracking_uri
from sora.config import SoraConfig

PR_SET_CHILD_SUBREAPER = 36


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (e.g. "Address already in use"), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc.strerror or str(exc)
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no problem
        try:
            s.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _stop_leftovers(timeout: float = 5.0) -> None:
    """Terminate, then kill, any process still below this one (workers orphaned by their arbiter)."""
    import psutil

    left = psutil.Process().children(recursive=True)
    for p in left:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def cmd_serve(args) -> int:
    """Run ``bentoml serve sora_serving.service:SoraService`` until it exits or a signal stops it."""
    from sora.serving.http import die_with_parent

    grace = SoraConfig().serve.grace_period_s
    problem = port_problem(args.host, args.port)
    if problem:
        print(f"sora: cannot serve on {args.host}:{args.port}: {problem} (choose another --port)", file=sys.stderr)
        return EXIT_USAGE
    env = dict(os.environ)
    if args.model:
        model = Path(args.model)
        if not (model / "model.safetensors").is_file():
            print(f"sora: {args.model}: not a Sora model directory (no model.safetensors)", file=sys.stderr)
            return EXIT_USAGE
        env["SORA_MODEL_DIR"] = str(model.resolve())
    else:
        env.pop("SORA_MODEL_DIR", None)
        env["SORA_MODEL_URI"] = args.model_uri
        env["MLFLOW_TRACKING_URI"] = tracking_uri(args)
    env["SORA_POLL_INTERVAL_S"] = str(args.poll_interval)
    env["SORA_DIE_WITH_PARENT"] = "1"
    env["SORA_STOP_LISTENING_ON_SIGTERM"] = "1"
    cmd = [sys.executable, "-m", "bentoml", "serve", "sora_serving.service:SoraService",
           "--host", args.host, "--port", str(args.port), "--timeout-graceful-shutdown", str(int(grace))]

    _become_subreaper()
    parent = os.getpid()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent))
    stop_at: list[float] = []

    def forward(signum, _frame) -> None:
        stop_at.append(time.monotonic())
        try:
            proc.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    print(f"serving {args.model or args.model_uri} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop_at and time.monotonic() - stop_at[0] > grace + 5:
                    print(f"sora: server still running {grace + 5:.0f}s after the stop signal; killing it",
                          file=sys.stderr)
                    proc.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _stop_leftovers()
    if stop_at:
        return EXIT_OK if code in (0, -signal.SIGTERM, -signal.SIGINT) else EXIT_FAIL
    return EXIT_OK if code == 0 else EXIT_FAIL


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {value}")
    return value


def add_parser(sub) -> None:
    serve = SoraConfig().serve
    p = sub.add_parser("serve", help="start the BentoML service (JSON APIs, /livez, /readyz, /metrics)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-uri", default=serve.model_uri,
                     help=f"registry URI, polled for alias moves (default {serve.model_uri})")
    src.add_argument("--model", help="a local model directory instead of the registry")
    p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///.sora/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=serve.port, help=f"default {serve.port}")
    p.add_argument("--poll-interval", type=float, default=serve.poll_interval_s,
                   help=f"seconds between alias checks (default {serve.poll_interval_s:g})")
    p.set_defaults(func=cmd_serve)
