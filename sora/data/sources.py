"""Where a public data set's files come from: a local mirror (a directory, searched recursively, or an
archive / file as distributed: zip, tar, ``.gz``) or a URL downloaded once into a cache.

:class:`Files` finds a file by base name, case-insensitively, with or without ``.gz``; the parsers of
:mod:`sora.data.datasets` read through it (``files(name) -> bytes``), so each format is testable on tiny inputs.
"""

from __future__ import annotations

import fnmatch
import gzip
import logging
import re
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from sora.data.contract import DataError

log = logging.getLogger(__name__)

FileReader = Callable[[str], bytes]


class MissingFile(DataError):
    """A file the parser needs is not in the source."""


class Files:
    """The files of one source by base name: directories (recursively), zip / tar archives, single files.

    ``files("ratings.csv")`` also finds ``ratings.csv.gz`` (decompressed) and accepts glob patterns. Archives
    inside a directory are opened too, so a folder of downloads works as it is.
    """

    def __init__(self, locations: list[Path], label: str):
        self.label = label
        self._found: dict[str, tuple[str, Callable[[], bytes]]] = {}  # lower-case base name → (where, read)
        for loc in locations:
            if not loc.exists():
                raise DataError(f"{label}: no such file or directory", path=loc)
            for path in sorted(loc.rglob("*")) if loc.is_dir() else [loc]:
                if path.is_file():
                    self._add_file(path)

    def _add(self, name: str, where: str, read: Callable[[], bytes]) -> None:
        base = name.rsplit("/", 1)[-1].lower()
        self._found.setdefault(base, (where, read))
        if base.endswith(".gz"):
            self._found.setdefault(base[:-3], (where, lambda: gzip.decompress(read())))

    def _add_file(self, path: Path) -> None:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if not member.endswith("/"):
                        self._add(member, f"{path}:{member}", lambda m=member: _zip_member(path, m))
        elif path.suffix in (".tar", ".tgz") or path.name.endswith((".tar.gz", ".tar.bz2", ".tar.xz")):
            with tarfile.open(path) as tf:
                for member in tf.getmembers():
                    if member.isfile():
                        self._add(member.name, f"{path}:{member.name}",
                                  lambda m=member.name: _tar_member(path, m))
        self._add(path.name, str(path), path.read_bytes)

    def where(self, name: str) -> str:
        """Where ``name`` is read from (``archive:member`` or a path); the name itself when absent."""
        return self._match(name)[0] if self._match(name) else name

    def _match(self, name: str) -> tuple[str, Callable[[], bytes]] | None:
        key = name.lower()
        if key in self._found:
            return self._found[key]
        hits = sorted(k for k in self._found if fnmatch.fnmatch(k, key))
        return self._found[hits[0]] if hits else None

    def __call__(self, name: str) -> bytes:
        found = self._match(name)
        if found is None:
            have = ", ".join(sorted(self._found)[:8]) or "no files"
            raise MissingFile(f"{self.label}: no file {name} (found: {have})")
        where, read = found
        try:
            return read()
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise DataError(f"{self.label}: cannot read {where} ({type(exc).__name__}: {exc})") from exc


def _zip_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(member)


def _tar_member(path: Path, member: str) -> bytes:
    with tarfile.open(path) as tf:
        return tf.extractfile(member).read()


def parse_file(files: FileReader, name: str, parse: Callable[[bytes], pd.DataFrame]) -> pd.DataFrame:
    """``parse(files(name))``; any failure is one :class:`DataError` naming the source and the file."""
    data = files(name)
    try:
        return parse(data)
    except Exception as exc:  # noqa: BLE001 - a malformed file, whatever the parser's complaint
        where = files.where(name) if isinstance(files, Files) else name
        label = f"{files.label}: " if isinstance(files, Files) else ""
        detail = " ".join(str(exc).split())[:300]
        raise DataError(f"{label}cannot parse {where} ({type(exc).__name__}: {detail})") from exc


def optional_file(files: FileReader, name: str, parse: Callable[[bytes], pd.DataFrame]) -> pd.DataFrame | None:
    """:func:`parse_file`, or None when the source lacks ``name``."""
    try:
        return parse_file(files, name, parse)
    except MissingFile:
        return None


def first_file(files: FileReader, names: tuple[str, ...], parse: Callable[[bytes], pd.DataFrame]) -> pd.DataFrame:
    """:func:`parse_file` on the first of ``names`` present (sources renamed across mirrors)."""
    for name in names[:-1]:
        found = optional_file(files, name, parse)
        if found is not None:
            return found
    return parse_file(files, names[-1], parse)


def download(url: str, cache_dir: Path, timeout: float) -> Path:
    """``cache_dir / <last part of url>``, downloaded first (through a ``.part`` file) when absent."""
    target = cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
    if not target.exists():
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the user's or a fixed URL
                payload = resp.read()
        except Exception as exc:  # noqa: BLE001 - no network, a moved file: one line either way
            raise DataError(f"could not download {url} ({type(exc).__name__}: {exc})") from exc
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(payload)
        tmp.replace(target)
    return target


def open_source(sources: list[str], cache_dir: Path, timeout: float = 60.0) -> Files:
    """:class:`Files` over local paths and URLs (downloaded into ``cache_dir`` once)."""
    paths = [download(s, cache_dir, timeout) if re.match(r"^[a-z]+://", s) else Path(s).expanduser() for s in sources]
    return Files(paths, " + ".join(sources))
