"""The data contract (DESIGN.md §2): a dataset directory read into typed tables.

A dataset directory holds ``interactions``, ``items`` and optionally ``users`` and ``user_edges``,
each as ``<table>.csv`` or ``<table>.parquet``. Ids are strings on the way in. Reading does no
validation beyond the table and column presence needed to build the frames; the rules live in
:mod:`sora.data.validation`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

TABLES: dict[str, tuple[list[str], bool]] = {
    # table: (required columns, required table)
    "interactions": (["user_id", "item_id", "timestamp"], True),
    "items": (["item_id", "title"], True),
    "users": (["user_id"], False),
    "user_edges": (["src_user_id", "dst_user_id"], False),
}
ID_COLUMNS = {"user_id", "item_id", "src_user_id", "dst_user_id"}
EXTENSIONS = (".parquet", ".csv")


class DataError(Exception):
    """A table is missing, unreadable or malformed. The message names the file and column."""

    def __init__(self, message: str, path: str | Path | None = None, column: str | None = None):
        super().__init__(message)
        self.path = str(path) if path is not None else None
        self.column = column


@dataclass
class Dataset:
    """The four tables of the data contract, ids as strings."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    user_edges: pd.DataFrame | None = None
    source: str = ""

    def tables(self) -> dict[str, pd.DataFrame]:
        out = {"interactions": self.interactions, "items": self.items}
        if self.users is not None:
            out["users"] = self.users
        if self.user_edges is not None:
            out["user_edges"] = self.user_edges
        return out

    def fingerprint(self) -> str:
        """Content hash of every table; stored with a model so evaluation can refuse other data."""
        h = hashlib.sha256()
        for name, df in sorted(self.tables().items()):
            h.update(name.encode())
            h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
            h.update(",".join(map(str, df.columns)).encode())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path, fmt: str = "parquet") -> None:
        """Write every table as ``<table>.<fmt>`` (files written whole, then renamed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, df in self.tables().items():
            target = directory / f"{name}.{fmt}"
            tmp = target.with_name(f".{target.name}.tmp")
            if fmt == "parquet":
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)
            tmp.replace(target)


def find_table(directory: Path, name: str) -> Path | None:
    """The file holding table ``name`` in ``directory``, or None.

    Raises :class:`DataError` naming both files when ``<name>.csv`` and ``<name>.parquet`` are both
    present: silently picking one would train on whichever the extension order favours.
    """
    found = [directory / f"{name}{ext}" for ext in EXTENSIONS if (directory / f"{name}{ext}").exists()]
    if len(found) > 1:
        raise DataError(f"{directory}: table {name!r} is present twice ({' and '.join(p.name for p in found)}); "
                        f"keep exactly one of them", path=found[0])
    return found[0] if found else None


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV or Parquet file, with ids as strings. Raises :class:`DataError` naming the file."""
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={c: "string" for c in ID_COLUMNS}, keep_default_na=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a data error naming the file
        raise DataError(f"{path}: cannot read table ({type(exc).__name__}: {exc})", path=path) from exc
    for col in ID_COLUMNS & set(df.columns):
        df[col] = _as_id_strings(df[col])
    return df


def _as_id_strings(col: pd.Series) -> pd.Series:
    # Parquet may hold ints; ids are compared as strings everywhere else.
    if pd.api.types.is_float_dtype(col):
        col = col.astype("Int64")
    out = col.astype("string")
    return out.str.strip()


def load_dataset(directory: str | Path) -> Dataset:
    """Read a dataset directory (DESIGN.md §2). Missing tables or columns raise :class:`DataError`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: dataset directory does not exist", path=directory)
    frames: dict[str, pd.DataFrame | None] = {}
    for name, (required, must_exist) in TABLES.items():
        path = find_table(directory, name)
        if path is None:
            if must_exist:
                raise DataError(
                    f"{directory}: table {name!r} is missing (expected {name}.csv or {name}.parquet)",
                    path=directory / f"{name}.csv",
                )
            frames[name] = None
            continue
        df = read_table(path)
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise DataError(
                f"{path}: missing required column(s) {missing}; expected {required}, found {list(df.columns)}",
                path=path,
                column=missing[0],
            )
        frames[name] = df
    return Dataset(
        interactions=frames["interactions"],
        items=frames["items"],
        users=frames["users"],
        user_edges=frames["user_edges"],
        source=str(directory),
    )


def item_texts(items: pd.DataFrame, template: str) -> pd.Series:
    """Render each item's encoder text from ``template`` (``{title}. {categories}. {text}`` by default).

    List or pipe-separated categories are joined with ", "; missing fields render as empty and the
    leftover separators are tidied so an item with only a title reads as just its title.
    """
    cols = [c for c in items.columns]

    def render(row: pd.Series) -> str:
        values = {}
        for c in cols:
            v = row[c]
            if isinstance(v, (list, tuple)) or hasattr(v, "tolist") and not isinstance(v, str):
                v = ", ".join(map(str, list(v)))
            elif v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
                v = ""
            elif c == "categories":
                v = ", ".join(p.strip() for p in str(v).split("|") if p.strip())
            values[c] = str(v).strip()
        text = template.format_map(_Blank(values))
        parts = [p.strip() for p in text.split(". ")]
        return ". ".join(p for p in parts if p and p != ".").strip()

    return items.apply(render, axis=1).astype(str)


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` through a uniquely named temporary file beside ``path`` and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; reports are read by other tools
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def timestamps_to_seconds(col: pd.Series) -> pd.Series:
    """Unix seconds (numbers) or ISO-8601 strings → float seconds; unparseable → NaN."""
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().sum() == col.notna().sum():
        return numeric.astype(float)
    parsed = pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
    secs = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    return numeric.where(numeric.notna(), secs).astype(float)


# ------------------------------------------------------------------ building and reducing a Dataset

def to_contract(inter: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame | None) -> Dataset:
    """Typed tables in the contract's column order: string ids, float ratings, integer timestamps."""
    inter = inter[["user_id", "item_id", "rating", "timestamp"]].copy()
    inter["user_id"] = inter["user_id"].astype("string")
    inter["item_id"] = inter["item_id"].astype("string")
    inter["rating"] = inter["rating"].astype(float)
    inter["timestamp"] = inter["timestamp"].astype("int64")
    if users is not None:
        users = users.copy()
        users["user_id"] = users["user_id"].astype("string")
    return Dataset(interactions=inter.reset_index(drop=True), items=items, users=users)


def has_time_order(interactions: pd.DataFrame) -> bool:
    """Whether the timestamps order anything: False for a source without time (all rows at :data:`NO_TIME`)."""
    return timestamps_to_seconds(interactions["timestamp"]).nunique() > 1


def sample_users(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """The interactions of ``n`` users drawn at random (seeded); items and users tables restricted to them."""
    ids = np.sort(dataset.interactions["user_id"].unique().astype(str))
    if n >= len(ids):
        return dataset
    keep = set(np.random.default_rng(seed).choice(ids, n, replace=False))
    x = dataset.interactions[dataset.interactions["user_id"].isin(keep)]
    return _restricted(dataset, x)


def _restricted(dataset: Dataset, x: pd.DataFrame) -> Dataset:
    items = dataset.items[dataset.items["item_id"].isin(set(x["item_id"]))].reset_index(drop=True)
    users = dataset.users
    if users is not None:
        users = users[users["user_id"].isin(set(x["user_id"]))].reset_index(drop=True)
    return Dataset(x.reset_index(drop=True), items, users, dataset.user_edges)


def k_core(dataset: Dataset, k: int) -> Dataset:
    """Users and items with at least ``k`` interactions (repeated until stable); items nobody rated dropped."""
    x = dataset.interactions
    while True:
        keep = (x.groupby("user_id")["item_id"].transform("size") >= k) & \
               (x.groupby("item_id")["user_id"].transform("size") >= k)
        if keep.all():
            break
        x = x[keep]
    return _restricted(dataset, x)
