"""What checking one request body costs the service, in-process: the typed ``input_spec`` vs the checks it replaced.

    python benchmarks/request_checks.py [--old-rev d5e8272] [--n 20000] [--out benchmarks/RESULTS.md]

The HTTP benchmark (benchmarks/serving.py) moves by tens of percent between runs on a shared
machine, far more than a request's checks cost; this times them alone, per request, one thread.

- before (``sora/serving/core.py`` at ``--old-rev``, loaded from git): the ASGI guard parsed the
  body (``json.loads``), checked it (``validate``) and re-encoded it; BentoML parsed that into the
  model it inferred from the method's signature; the method checked the arguments again (``handle``).
- now: BentoML parses the body once into the endpoint's request model
  (:func:`sora.serving.requests.request_models`, the API's ``input_spec``).

Both include BentoML's own step (``model_validate_json`` on its IO descriptor class).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Annotated

from _results import publish  # benchmarks/ is on sys.path when run as a script
from pydantic import Field

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- request-checks:begin -->", "<!-- request-checks:end -->"

BODIES = {"/recommend": {"user_id": "196", "k": 10},
          "/recommend_from_history": {"item_ids": [str(i) for i in range(5)], "k": 10},
          "/score": {"user_id": "196", "item_ids": [str(i) for i in range(20)]}}


def old_core(rev: str) -> types.ModuleType:
    """``sora.serving.core`` as it was at git revision ``rev`` (read from git, run here, nothing installed)."""
    source = subprocess.run(["git", "-C", str(HERE), "show", f"{rev}:sora/serving_core.py"], capture_output=True,
                            text=True, check=True).stdout
    module = types.ModuleType(f"serving_core_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:sora/serving_core.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


# the service methods' parameter types before (``serving/service.py``), from which BentoML inferred its input models
OldId = Annotated[str, Field(description="an id")]
OldK = Annotated[int, Field(description="number of items")]
OldIds = Annotated[list[str], Field(description="ids")]
OldRecent = Annotated[list[str] | None, Field(description="recent item ids")]


def _recommend(self, user_id: OldId, k: OldK = 10, exclude_seen: bool = True, fallback: bool = False,
               recent_item_ids: OldRecent = None, explain: bool = False) -> dict: ...


def _recommend_from_history(self, item_ids: OldIds, k: OldK = 10, explain: bool = False) -> dict: ...


def _score(self, user_id: OldId, item_ids: OldIds, recent_item_ids: OldRecent = None) -> dict: ...


def old_signature_models() -> dict:
    """The input models BentoML inferred from those signatures, by endpoint path."""
    from _bentoml_sdk.io_models import IODescriptor

    return {"/" + f.__name__.lstrip("_"): IODescriptor.from_input(f, skip_self=True)
            for f in (_recommend, _recommend_from_history, _score)}


def per_request_us(fn, n: int) -> float:
    best = float("inf")
    for _ in range(3):  # the best of three: the least disturbed by the machine's other work
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main(argv=None) -> int:
    from _bentoml_sdk.io_models import ensure_io_descriptor

    from sora.config import SoraConfig
    from sora.serving.requests import Limits, request_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-rev", default="d5e8272", help="a git revision with the guard that re-parsed every body")
    ap.add_argument("--n", type=int, default=20_000, help="requests per timing")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    old = old_core(args.old_rev)
    old_limits = old.Limits.from_config(SoraConfig().serve)
    old_models = old_signature_models()
    new_models = {path: ensure_io_descriptor(m) for path, m in
                  ((f"/{name}", m) for name, m in request_models(Limits.from_config(SoraConfig().serve)).items())}
    rows = []
    for path, body in BODIES.items():
        raw, endpoint = json.dumps(body).encode(), path.strip("/")
        model, fields = old_models[path], list(old_models[path].model_fields)

        def before(raw=raw, endpoint=endpoint, model=model, fields=fields):
            checked = old.validate(endpoint, old.parse_body(raw, "application/json", old_limits), old_limits)
            parsed = model.model_validate_json(json.dumps(checked).encode())  # the guard re-encoded, BentoML parsed
            old.validate(endpoint, {f: getattr(parsed, f) for f in fields}, old_limits)  # handle() checked again

        typed, names = new_models[path], list(new_models[path].model_fields)

        def now(raw=raw, typed=typed, names=names):
            parsed = typed.model_validate_json(raw)
            return {f: getattr(parsed, f) for f in names}

        rows.append((path, per_request_us(before, args.n), per_request_us(now, args.n)))
        print(rows[-1], flush=True)
    lines = [MARK_BEGIN, "## Request checks per request, in-process (benchmarks/request_checks.py)", "",
             f"- command: `python benchmarks/request_checks.py --old-rev {args.old_rev} --n {args.n} "
             "--out benchmarks/RESULTS.md`",
             f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()} {os.cpu_count()} "
             f"cores (shared, load ~{os.getloadavg()[0]:.1f}), Python {platform.python_version()}; best of 3 × "
             f"{args.n} requests, one thread", "",
             "| endpoint (body) | before: guard parse + check + re-encode, BentoML parse, check again µs | "
             "now: BentoML parses into the typed request model µs |", "|---|---|---|"]
    lines += [f"| {p} `{json.dumps(BODIES[p])[:60]}` | {b:.1f} | {n:.1f} |" for p, b, n in rows]
    lines.append(MARK_END)
    publish(lines, args.out, MARK_BEGIN, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
