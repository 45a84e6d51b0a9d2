"""Offline batch scoring: every user's top-k as one Parquet table (DESIGN.md §7 "Freshness … and trust").

:func:`batch_recommend` scores users ``batch_size`` at a time (one (B, I) score matrix in memory at
once, never (U, I)), writes each batch as a Parquet row group, and reports users/s. The table has one
row per user and rank: ``user_id`` (string), ``rank`` (int32, 1 = best), ``item_id`` (string),
``score`` (float32). Items the user already interacted with are excluded, as in ``/recommend``.
A local path is written through a temporary name; an object-store URI gets the finished file in one PUT.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from sora.model.recommender import Recommender

log = logging.getLogger(__name__)

SCHEMA_FIELDS = ("user_id", "rank", "item_id", "score")


class UnknownUsersError(KeyError):
    """A batch user list names users the model does not know (listed, never silently dropped)."""

    def __init__(self, unknown: list[str], total: int):
        self.unknown = unknown
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" …" if len(unknown) > 5 else "")
        super().__init__(f"users: {len(unknown)} of {total} user ids are unknown to the model: {shown} "
                         "(pass --skip-unknown to score the others and list these in the stats)")


@dataclass
class BatchStats:
    users: int
    rows: int
    k: int
    batch_size: int
    seconds: float
    users_per_s: float
    skipped_unknown: list[str]
    out: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped_unknown_count"] = len(self.skipped_unknown)
        d["skipped_unknown"] = self.skipped_unknown[:100]
        return d


def read_user_ids(table: pd.DataFrame) -> list[str]:
    """The ``user_id`` column of a users file (CSV / Parquet / one id per line), as strings, order kept."""
    if "user_id" not in table.columns:
        raise ValueError(f"users file: needs a user_id column, found {list(table.columns)}")
    ids = table["user_id"]
    if ids.isna().any():
        raise ValueError(f"users file: user_id: {int(ids.isna().sum())} empty value(s)")
    return [str(u) for u in ids]


def resolve_users(rec: Recommender, users: str | Sequence[str], skip_unknown: bool = False) -> tuple[np.ndarray, list[str]]:
    """``"all"`` or a list of user ids → (user indices, unknown ids skipped). Unknown ids raise unless skipped."""
    if isinstance(users, str):
        if users != "all":
            raise ValueError(f"users: expected 'all' or a list of user ids, got {users!r}")
        return np.arange(rec.num_users, dtype=np.int64), []
    ids = list(dict.fromkeys(str(u) for u in users))  # duplicates scored once, first order kept
    unknown = [u for u in ids if u not in rec.user_index]
    if unknown and not skip_unknown:
        raise UnknownUsersError(unknown, len(ids))
    return np.array([rec.user_index[u] for u in ids if u in rec.user_index], dtype=np.int64), unknown


def batch_recommend(rec: Recommender, users: str | Sequence[str], k: int, out_uri: str, batch_size: int = 1024,
                    exclude_seen: bool = True, skip_unknown: bool = False, progress: bool = True) -> BatchStats:
    """Write the top-``k`` of ``users`` (``"all"`` or ids) to ``out_uri`` (Parquet); returns the run's stats.

    Memory is bounded by ``batch_size`` × items scores plus one row group of output. Unknown users raise
    :class:`UnknownUsersError` listing them, unless ``skip_unknown`` (then they are in ``stats.skipped_unknown``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from sora.data import storage

    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    index, skipped = resolve_users(rec, users, skip_unknown)
    if skipped:
        log.warning("batch-recommend: skipping %d unknown user id(s), e.g. %s", len(skipped), skipped[:5])
    k_eff = min(k, rec.num_items)
    schema = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                        ("score", pa.float32())])
    item_ids = np.asarray(rec.item_ids, dtype=object)
    user_ids = np.asarray(rec.user_ids, dtype=object)
    start = time.perf_counter()
    rows = 0
    local = None if storage.is_remote(out_uri) else storage.local_path(out_uri)
    if local is not None:
        if local.is_dir():
            raise ValueError(f"out: {out_uri} is a directory; give a .parquet file name")
        local.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".sora-batch-", dir=str(local.parent) if local else None) as tmp:
        tmp_file = Path(tmp) / "topk.parquet"
        bar = tqdm(total=len(index), desc="batch-recommend", unit="user", disable=not progress)
        with pq.ParquetWriter(tmp_file, schema) as writer:
            for s in range(0, len(index), batch_size):
                users_b = index[s:s + batch_size]
                scores, top = rec.top_k_users(users_b, k_eff, exclude_seen)  # (B, k)
                scores, top = scores.numpy(), top.numpy()
                keep = np.isfinite(scores)  # a user who has seen almost everything gets fewer than k rows
                b = len(users_b)
                ranks = np.broadcast_to(np.arange(1, k_eff + 1, dtype=np.int32), (b, k_eff))
                table = pa.table({"user_id": pa.array(np.repeat(user_ids[users_b], k_eff)[keep.ravel()], pa.string()),
                                  "rank": pa.array(ranks[keep], pa.int32()),
                                  "item_id": pa.array(item_ids[top[keep]], pa.string()),
                                  "score": pa.array(scores[keep].astype(np.float32), pa.float32())}, schema=schema)
                writer.write_table(table)
                rows += table.num_rows
                bar.update(b)
        bar.close()
        seconds = time.perf_counter() - start
        if local is not None:
            tmp_file.replace(local)  # same directory: an atomic rename
        else:
            storage.write_bytes(out_uri, tmp_file.read_bytes())
    stats = BatchStats(users=len(index), rows=rows, k=k_eff, batch_size=batch_size, seconds=round(seconds, 3),
                       users_per_s=round(len(index) / seconds, 1) if seconds > 0 else float("nan"),
                       skipped_unknown=skipped, out=str(out_uri))
    log.info("batch-recommend: %d users, %d rows in %.1fs (%.0f users/s) -> %s", stats.users, rows, seconds,
             stats.users_per_s, out_uri)
    return stats
