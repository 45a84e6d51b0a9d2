"""``make demo``: the whole workflow on MovieLens-100K, printing where each output went.

Run as ``python -m sora.demo --workdir DIR``. Each step calls the same ``sora`` CLI entry points a
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
    _step("fetch", ["data", "fetch", "movielens-100k", "--dest", str(data)])
    _step("validate", ["data", "validate", "--data", str(data), "--report", str(out / "validation.html"),
                       "--json", str(out / "validation.json")])
    _step("embed", ["embed", "--data", str(data), "--out", str(out / "item_embeddings.parquet")])


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".sora/demo"))
    args = parser.parse_args(argv)
    run(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
