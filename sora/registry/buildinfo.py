"""Where the running code came from: the git commit of Sora's source tree, and whether it was dirty.

Recorded with every registered model (and the Bento), so a model built from uncommitted changes or
from an unversioned copy says so. In a source checkout git answers; in an image (no ``.git`` in the
build context) the commit comes from the ``SORA_GIT_COMMIT`` build argument, which the Dockerfiles
turn into an environment variable (``SORA_GIT_TREE`` says ``clean`` when the build was from a clean
checkout, as CI's is; anything else counts as ``dirty``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

COMMIT_ENV = "SORA_GIT_COMMIT"
TREE_ENV = "SORA_GIT_TREE"
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


@lru_cache(maxsize=1)
def build_info() -> dict[str, str]:
    """``{"version", "commit", "tree"}``; ``tree`` is ``clean``, ``dirty`` or ``unversioned``."""
    return _build_info(Path(__file__).resolve().parent.parent, os.environ)


def _build_info(source: Path, env: Mapping[str, str]) -> dict[str, str]:
    try:
        pkg_version = version("sora")
    except PackageNotFoundError:
        pkg_version = "unknown"
    info = {"version": pkg_version, "commit": "", "tree": "unversioned"}
    git = _from_git(source)
    if git is not None:
        return {**info, **git}
    commit = (env.get(COMMIT_ENV) or "").strip().lower()
    if _SHA.match(commit):
        tree = "clean" if (env.get(TREE_ENV) or "").strip() == "clean" else "dirty"
        return {**info, "commit": commit, "tree": tree}
    return info


def _from_git(source: Path) -> dict[str, str] | None:
    """Commit and tree state from git, or None where ``source`` is not in a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--",
                                 "sora", "components", "pipelines", "serving", "pyproject.toml"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "tree": "dirty" if status.stdout.strip() else "clean"}
