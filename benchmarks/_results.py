"""Shared by the benchmark scripts: one marked section of benchmarks/RESULTS.md, and the default model."""

import subprocess
import sys
from pathlib import Path

DEFAULT_MODEL = Path(".sora/bench/model")
DEFAULT_DATA = Path(".sora/bench/ml-100k")


def write_section(path: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into ``path``, replacing the old one."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def publish(lines: list[str], out: Path | None, begin: str, end: str) -> str:
    """Print the section ``lines`` (``begin`` … ``end``) and, with ``out``, put it into that file in place of the old one."""
    section = "\n".join(lines)
    print(section)
    if out:
        write_section(out, begin, end, section)
    return section


def movielens_100k(data: Path) -> Path:
    """``data``; the default path (:data:`DEFAULT_DATA`) gets MovieLens-100K fetched first when it is absent
    (offline: from the recbole wheel). Any other path is read as given, so a mistyped one fails to load."""
    if data == DEFAULT_DATA and not data.exists():
        from sora.data.fetch import fetch_to

        fetch_to("movielens-100k", data)
    return data


def default_model(data: Path) -> Path:
    """``.sora/bench/model``, trained first with `sora train` on ``data`` (MovieLens-100K, fetched if absent)."""
    return trained_model(data, DEFAULT_MODEL)


def trained_model(data: Path, out: Path, *overrides: str) -> Path:
    """``out``, trained first with `sora train --set OVERRIDE ...` on ``data`` (fetched if the default) when absent."""
    if not (out / "model.safetensors").exists():
        movielens_100k(data)
        subprocess.check_call([sys.executable, "-m", "sora.cli", "train", "--data", str(data), "--out", str(out),
                               *(arg for o in overrides for arg in ("--set", o))])
    return out
