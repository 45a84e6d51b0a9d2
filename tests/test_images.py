"""The images, checked without a Docker engine: every base image's Python against ``requires-python``,
every install from the one lock (``requirements.lock``, also what ``make venv`` installs), each image's
install set resolved for its Python and platform, and the commit reaching ``sora.registry.buildinfo``."""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from sora.registry.buildinfo import _build_info

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "docker").glob("*.Dockerfile"))]
#: The images built from a Python base, each installing from the lock; the others derive from these.
BUILT = {"ghcr.io/sora-ml/sora": ROOT / "Dockerfile", "ghcr.io/sora-ml/sora-trainer": ROOT / "docker" / "trainer.Dockerfile"}
#: The file the Dockerfiles write pyproject.toml's dependencies to before installing them.
DEPS_FILE = "/tmp/sora-deps.txt"
#: glibc of each Debian release a slim Python image is built on (what manylinux wheels it can run).
DEBIAN_GLIBC = {"bullseye": (2, 31), "bookworm": (2, 36), "trixie": (2, 41)}
#: Pure-Python packages PyPI has only as an sdist at the locked version (built while installing).
SDIST_ONLY = {"kfp-server-api"}


# ------------------------------------------------------------------------------------------ parsing

def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    return out


def base_images(text: str) -> list[str]:
    """Every ``FROM`` image, with ``${ARG}`` / ``$ARG`` replaced by the ARG's default."""
    args, images = {}, []
    for keyword, rest in instructions(text):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip().strip('"')
        elif keyword == "FROM":
            image = re.sub(r"^--platform=\S+\s+", "", rest).split()[0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image))
    return images


def image_python(image: str) -> tuple[str, str | None]:
    """(``X.Y``, Debian release or None) of an official Python image; ValueError for any other image."""
    m = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)(?:\.\d+)?(?:-(\w+))?(?:-(\w+))?(?:@sha256:\w+)?",
                     image)
    if not m:
        raise ValueError(f"base image {image!r} does not say its Python in its tag (use python:X.Y-slim-<release>)")
    release = next((p for p in (m.group(2), m.group(3)) if p in DEBIAN_GLIBC), None)
    return m.group(1), release


def requires_python() -> SpecifierSet:
    return SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert m, f"requirements.lock: {line!r} is not an exact pin"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def pyproject_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def requirements_file(path: Path) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines() if ln.split("#", 1)[0].strip()]


def pip_installs(text: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in the Dockerfile's RUN instructions."""
    out = []
    for keyword, rest in instructions(text):
        if keyword != "RUN":
            continue
        for command in rest.split("&&"):
            words = shlex.split(command.replace(">", " > "))
            for i in range(len(words) - 1):
                if words[i] == "pip" and words[i + 1] == "install":
                    out.append(words[i + 2:])
    return out


def image_install_set(text: str) -> list[str]:
    """The requirements a Dockerfile installs from the lock (``-c requirements.lock``); ``-r`` files
    resolved (``/tmp/sora-deps.txt`` is pyproject.toml's dependencies, written by the same RUN)."""
    reqs: list[str] = []
    locked = [args for args in pip_installs(text) if "-c" in args]
    assert len(locked) == 1, "one pip install constrained by the lock"
    args = locked[0]
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-c", "-r"):
            value = args[i + 1]
            if a == "-c":
                assert value == "requirements.lock", value
            elif value == DEPS_FILE:
                assert "tomllib" in text and "['project']['dependencies']" in text
                reqs += pyproject_requirements()
            else:
                reqs += requirements_file(ROOT / value)
            i += 2
            continue
        assert not a.startswith("-"), f"unexpected pip option {a!r} in the locked install"
        reqs.append(a)
        i += 1
    return reqs


# ------------------------------------------------------------------------------------------ offline checks

def test_base_image_python_is_read_from_the_tag():
    assert base_images("ARG PY=3.11\nFROM python:${PY}-slim-bookworm AS base\nFROM base\n")[0] == \
        "python:3.11-slim-bookworm"
    assert image_python("python:3.11-slim-bookworm") == ("3.11", "bookworm")
    assert image_python("python:3.12.4-slim") == ("3.12", None)
    # the trainer's old base: conda Python 3.10 that its tag does not state
    with pytest.raises(ValueError, match="does not say its Python"):
        image_python("pytorch/pytorch:2.2.1-cuda12.1-cudnn8-runtime")
    assert "3.10" not in requires_python()


def _python_of(image: str) -> tuple[str, str | None]:
    """The Python of an image: from its tag, or for one of the project's own images from its Dockerfile."""
    repo = re.split(r"[:@]", image)[0]
    if repo in BUILT:
        (base,) = base_images(BUILT[repo].read_text())
        return image_python(base)
    return image_python(image)


def test_derived_images_take_python_from_the_image_they_extend():
    import sora_components

    assert set(BUILT) == {sora_components.DEFAULT_IMAGE.split(":")[0], sora_components.TRAINER_IMAGE.split(":")[0]}
    assert _python_of("ghcr.io/sora-ml/sora@sha256:" + "0" * 64) == _python_of("python:3.11-slim-bookworm")
    for dockerfile in DOCKERFILES:
        if dockerfile not in BUILT.values():  # derived: nothing installed on top (its deps are the base's)
            assert not pip_installs(dockerfile.read_text()), dockerfile.name
            assert all(re.split(r"[:@]", i)[0] in BUILT for i in base_images(dockerfile.read_text()))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_base_image_runs_a_python_the_package_accepts(dockerfile):
    images = base_images(dockerfile.read_text())
    assert images, dockerfile
    for image in images:
        version, release = _python_of(image)
        assert version in requires_python(), f"{dockerfile.name}: {image} has Python {version}, " \
            f"pyproject.toml requires {requires_python()}"
        assert release, f"{image}: name the Debian release in the tag, so its glibc (and wheels) are fixed"


def test_the_lock_pins_everything_pyproject_asks_for():
    pins = lock_pins()
    env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    wanted = pyproject_requirements(("dev",)) + requirements_file(ROOT / "docker" / "mlflow-server.in")
    for text in wanted:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: regenerate it (see its header)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {name}=={pins[name]}, pyproject.toml asks for {text}: regenerate the lock"
    assert "sora" not in pins  # the project itself is installed from source, never from the lock


@pytest.mark.parametrize("dockerfile", BUILT.values(), ids=lambda p: p.name)
def test_images_install_only_from_the_lock(dockerfile):
    text = dockerfile.read_text()
    copied = " ".join(rest for k, rest in instructions(text) if k == "COPY")
    assert "requirements.lock" in copied.split()
    installs = pip_installs(text)
    assert installs
    for args in installs:  # every install is either constrained by the lock or resolves nothing
        assert ("-c" in args and args[args.index("-c") + 1] == "requirements.lock") or "--no-deps" in args, args
        assert not any("--index-url" in a or "--extra-index-url" in a or a in ("-i", "-f") for a in args), args
    assert "pip check" in text
    reqs = image_install_set(text)
    pins = lock_pins()
    for text_req in reqs:
        assert canonicalize_name(Requirement(text_req).name) in pins, text_req
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.lstrip().startswith("#")]
    for needed in ("requirements.lock", "docker", "pyproject.toml", "sora"):
        assert needed not in ignored, needed


def test_make_venv_installs_the_lock():
    text = (ROOT / "Makefile").read_text()
    lock_var = re.search(r"^LOCK\s*:?=\s*(\S+)", text, re.M)
    assert lock_var and lock_var.group(1) == LOCK.name
    stamp = re.search(r"^\$\(STAMP\):(.*)$", text, re.M).group(1).split()
    assert "$(LOCK)" in stamp and "pyproject.toml" in stamp  # a new lock reinstalls (CI too)
    recipe = text.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "pip install -r $(LOCK)" in recipe
    assert "--no-deps -e" in recipe and "pip check" in recipe
    # nothing else installed outside the lock (pip itself aside)
    installs = [ln for ln in recipe.splitlines() if "pip install" in ln]
    assert all("-r $(LOCK)" in ln or "--no-deps" in ln or '"pip' in ln for ln in installs), installs


@pytest.mark.parametrize("dockerfile", BUILT.values(), ids=lambda p: p.name)
def test_commit_reaches_the_image_as_a_build_argument(dockerfile):
    parsed = instructions(dockerfile.read_text())
    args = [rest for k, rest in parsed if k == "ARG"]
    envs = " ".join(rest for k, rest in parsed if k == "ENV")
    assert any(a.startswith("SORA_GIT_COMMIT") for a in args)
    assert "SORA_GIT_COMMIT=${SORA_GIT_COMMIT}" in envs and "SORA_GIT_TREE=${SORA_GIT_TREE}" in envs


def test_buildinfo_takes_the_commit_from_the_environment_without_git(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert _build_info(tmp_path, {}) | {"version": ""} == {"version": "", "commit": "", "tree": "unversioned"}
    assert _build_info(tmp_path, {"SORA_GIT_COMMIT": sha, "SORA_GIT_TREE": "clean"})["commit"] == sha
    assert _build_info(tmp_path, {"SORA_GIT_COMMIT": sha, "SORA_GIT_TREE": "clean"})["tree"] == "clean"
    assert _build_info(tmp_path, {"SORA_GIT_COMMIT": sha})["tree"] == "dirty"  # nobody vouched for the tree
    assert _build_info(tmp_path, {"SORA_GIT_COMMIT": "$(git rev-parse HEAD)"})["tree"] == "unversioned"
    if (ROOT / ".git").exists():  # in a checkout git is the authority, not the environment
        info = _build_info(ROOT, {"SORA_GIT_COMMIT": sha, "SORA_GIT_TREE": "clean"})
        assert info["commit"] != sha and re.fullmatch(r"[0-9a-f]{40}", info["commit"])


# ------------------------------------------------------------------------------------------ resolution

#: what pip says when the index cannot be reached at all (a skip, not a failure of the lock)
_OFFLINE = ("Could not fetch URL", "Failed to establish a new connection", "Network is unreachable",
            "Temporary failure in name resolution")


def _platforms(glibc: tuple[int, int]) -> list[str]:
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc[1], 16, -1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


@pytest.fixture(scope="module")
def lock_report(tmp_path_factory):
    """pip's report for every locked pin, for the images' Python and platform: one distribution per pin
    (wheel or sdist) and its metadata. ``--no-deps``: the pins are the resolution; the dependency closure
    is checked below from each distribution's own ``Requires-Dist``."""
    (python, release), = {_python_of(i) for f in DOCKERFILES for i in base_images(f.read_text())}
    out = tmp_path_factory.mktemp("pip")
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q",
           "--python-version", python, "--implementation", "cp", "--target", str(out / "target"),
           "--report", str(out / "report.json"), "-r", str(LOCK)]
    for tag in _platforms(DEBIAN_GLIBC[release]):
        cmd += ["--platform", tag]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if run.returncode and any(m in run.stderr for m in _OFFLINE):
        pytest.skip("the package index is not reachable from here: cannot resolve the lock")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    return python, {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}


def _closure(roots: list[str], dists: dict, env: dict) -> dict[str, str]:
    """Walk Requires-Dist from ``roots`` through the locked distributions; every requirement met by a pin."""
    pins = {name: d["metadata"]["version"] for name, d in dists.items()}
    seen: dict[str, set[str]] = {}
    todo = [(Requirement(r), None) for r in roots]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        assert name in pins, f"{parent or 'image'} needs {req}, which requirements.lock does not pin"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{parent or 'image'} needs {req}, the lock pins {name}=={pins[name]}"
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        for dep in dists[name]["metadata"].get("requires_dist", []):
            dep_req = Requirement(dep)
            if dep_req.marker is None or any(dep_req.marker.evaluate({**env, "extra": e}) for e in (seen[name] or {""})):
                todo.append((dep_req, f"{name}=={pins[name]}"))
    return {n: pins[n] for n in seen}


@pytest.mark.slow
def test_the_lock_resolves_for_every_image(lock_report):
    python, dists = lock_report
    pins = lock_pins()
    assert set(dists) == set(pins)
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
           "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}
    for name, dist in dists.items():
        assert dist["metadata"]["version"] == pins[name]
        url = dist["download_info"]["url"]
        # a wheel for this Python and platform, so nothing is compiled in the image
        assert url.endswith(".whl") or name in SDIST_ONLY, f"{name}=={pins[name]}: no wheel for CPython {python} " \
            f"on {DEBIAN_GLIBC}: {url.rsplit('/', 1)[-1]}"
        needs = dist["metadata"].get("requires_python")
        assert not needs or Version(f"{python}.0") in SpecifierSet(needs), (name, needs)
    # make venv: everything the lock holds, with pyproject.toml's dev extra
    _closure(pyproject_requirements(("dev",)), dists, env)
    # each image: its own install set, every package of it pinned by the lock
    for dockerfile in BUILT.values():
        closure = _closure(image_install_set(dockerfile.read_text()), dists, env)
        assert {"torch", "dgl", "mlflow", "kfp"} <= set(closure), dockerfile.name
        assert Version(closure["torch"]).release[:3] == (2, 2, 1)
