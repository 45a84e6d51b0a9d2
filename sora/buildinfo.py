"""Where the running code came from: the git commit of Sora's source tree, and whether it was dirty.

Recorded with every registered model (and the Bento), so a model built from uncommitted changes or
from an unversioned copy says so.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@lru_cache(maxsize=1)
def build_info() -> dict[str, str]:
    """``{"version", "commit", "tree"}``; ``tree`` is ``clean``, ``dirty`` or ``unversioned``."""
    source = Path(__file__).resolve().parent.parent
    try:
        pkg_version = version("sora")
    except PackageNotFoundError:
        pkg_version = "unknown"
    info = {"version": pkg_version, "commit": "", "tree": "unversioned"}
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return info
        status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--",
                                 "sora", "components", "pipelines", "serving", "pyproject.toml"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return info
    info["commit"] = commit.stdout.strip()
    info["tree"] = "dirty" if status.stdout.strip() else "clean"
    return info
