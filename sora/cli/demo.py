"""``make demo``: the whole workflow on MovieLens-100K, printing where each output went.

Run as ``python -m sora.cli.demo --workdir DIR``. Each step calls the same ``sora`` CLI entry points a
person would type, so the demo doubles as their smoke test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sora.cli import main as sora


def _step(title: str, argv: list[str]) -> None:
    print(f"\n=== {title}: sora {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = sora(argv)
    print(f"--- {title}: exit {code} in {time.perf_counter() - start:.1f}s", flush=True)
    if code != 0:
        sys.exit(code)


def run(workdir: Path) -> None:
    data, out = workdir / "ml-100k", workdir / "out"
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "interactions.csv").exists():
        _step("fetch", ["data", "fetch", "movielens-100k", "--dest", str(data)])
    _step("validate", ["data", "validate", "--data", str(data), "--report", str(out / "validation.html"),
                       "--json", str(out / "validation.json")])
    # validate → prepare → embed → train → evaluate → register → compare → promote, with kfp.local;
    # MLflow on sqlite:///.sora/mlflow.db unless MLFLOW_TRACKING_URI says otherwise.
    _step("pipeline", ["pipeline", "run", "--local", "--data", str(data), "--workdir", str(workdir.parent)])
    print(f"\nKubeflow outputs of each step (HTML report, metrics, model card, curves): "
          f"{(workdir.parent / 'pipeline_runs').resolve()}")


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".sora/demo"),
                        help="data and reports go here; pipeline outputs beside it")
    args = parser.parse_args(argv)
    run(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
