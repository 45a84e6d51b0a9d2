"""`make bento` builds the serving Bento (slow tier): into a temporary BENTOML_HOME, nothing else touched."""

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bento(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bento")
    env = {**os.environ, "BENTOML_HOME": str(tmp / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    venv = Path(sys.prefix)
    # -o: use this environment as it is (never reinstall it from inside a test)
    out = subprocess.run(["make", "-o", str(venv / ".installed"), "bento", f"VENV={venv}", f"BENTO_CTX={tmp / 'ctx'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    listed = subprocess.run([str(venv / "bin" / "bentoml"), "list", "-o", "json"], env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    tags = [b["tag"] for b in json.loads(listed.stdout)]
    assert len(tags) == 1 and tags[0].startswith("sora:"), tags
    name, version = tags[0].split(":")
    return tmp / "home" / "bentos" / name / version


def test_bento_holds_the_service_and_the_wheel(bento):
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service:SoraService" and info["name"] == "sora"
    envs = {e["name"]: e.get("value") for e in info["envs"]}
    assert envs["SORA_MODEL_URI"] == "models:/sora@champion" and envs["SORA_STOP_LISTENING_ON_SIGTERM"] == "1"
    assert {r["route"] for r in info["schema"]["routes"]} >= {"/recommend", "/recommend_from_history",
                                                              "/similar_items", "/score"}
    assert (bento / "src" / "service.py").read_text() == (ROOT / "serving" / "service.py").read_text()
    assert (bento / "env" / "docker" / "Dockerfile").is_file()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (bento / "env" / "python" / "wheels" / f"sora-{version}-py3-none-any.whl").is_file()
    assert "torch==2.2.1" in (bento / "env" / "python" / "requirements.txt").read_text()


def test_the_wheel_ships_every_module(bento):
    """A non-editable install (the Bento, the image) has every module the editable one has."""
    wheel = next((bento / "env" / "python" / "wheels").glob("sora-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{pkg}/{p.relative_to(ROOT / src).as_posix()}"
                for pkg, src in (("sora", "sora"), ("sora_serving", "serving"), ("sora_components", "components"),
                                 ("sora_pipelines", "pipelines"))
                for p in (ROOT / src).rglob("*.py") if "__pycache__" not in p.parts}
    assert not expected - names, sorted(expected - names)
