"""Splits and id maps (DESIGN.md §4), saved as one typed artifact.

``random`` follows the RecBole-GNN protocol: keep interactions with rating >= threshold, shuffle
each user's interactions with a fixed seed and cut them 8:1:1 with RecBole's rounding (a user with
n interactions gets ``int(0.1 n)`` valid and test rows, but at least one each while two or more
rows remain for training). Users with one or two positives therefore only train.
``temporal`` cuts each user's time-ordered interactions the same way (last → test).
``cold-item`` holds out ``cold_item_ratio`` of the items with every interaction they have; half
of them are valid-cold, half test-cold, and they exist for the model only through their text.
``leave-last-out`` is Protocol T (next item): each user's positives in time order, ties kept in input
row order; a user with three or more gives the last to test and the second-to-last to valid, the rest
train (fewer than three: all train). Its parts keep that sequence order row by row (user, then time,
then input row), so :func:`sora.data.protocol.sequences` reads each user's history straight from them.
``global-temporal`` is the next-item protocol for larger data: one cut in time for everyone, at the
``ratios`` quantiles of the positives' timestamps (train up to the first, valid up to the second, test
after; an event at a cut goes to the earlier part). Every valid and test event of a user with a
training event is a target (test reads the user's valid events as history); the later events of users
with no training event are dropped. Parts keep sequence order as under ``leave-last-out``.

Users and items are indexed once here: users in sorted order of the kept interactions, items in the
order of the ``items`` table (the whole catalogue is ranked, including items nobody rated).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sora.config import SEQUENTIAL_SPLIT_MODES, SPLIT_MODES, SplitConfig
from sora.data.contract import DataError, Dataset, timestamps_to_seconds

log = logging.getLogger(__name__)

MODES = SPLIT_MODES
PARTS = ("train", "valid", "test")


@dataclass
class SplitSpec:
    mode: str
    seed: int
    rating_threshold: float | None
    ratios: tuple[float, float, float]
    cold_item_ratio: float
    data_fingerprint: str


@dataclass
class Split:
    """Interactions as (user index, item index, timestamp) in three parts, plus the id maps."""

    spec: SplitSpec
    user_ids: list[str]
    item_ids: list[str]
    train: pd.DataFrame  # columns u, i, ts
    valid: pd.DataFrame
    test: pd.DataFrame
    cold_valid_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_test_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def matrix(self, *parts: str) -> sp.csr_matrix:
        """Binary (U, I) matrix of the interactions in ``parts`` (e.g. ``"train", "valid"``)."""
        from sora.model.itemsim import interaction_matrix

        df = pd.concat([self.part(p) for p in parts])
        return interaction_matrix(df["u"].to_numpy(), df["i"].to_numpy(), self.num_users, self.num_items)

    def part(self, name: str) -> pd.DataFrame:
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}")
        return getattr(self, name)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in PARTS:
            self.part(name).to_parquet(directory / f"{name}.parquet", index=False)
        (directory / "ids.json").write_text(json.dumps({"users": self.user_ids, "items": self.item_ids}))
        meta = {"spec": asdict(self.spec), "cold_valid_items": self.cold_valid_items.tolist(),
                "cold_test_items": self.cold_test_items.tolist()}
        (directory / "split.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> Split:
        directory = Path(directory)
        ids = json.loads((directory / "ids.json").read_text())
        meta = json.loads((directory / "split.json").read_text())
        spec = meta["spec"]
        spec["ratios"] = tuple(spec["ratios"])
        parts = {name: pd.read_parquet(directory / f"{name}.parquet") for name in PARTS}
        return cls(spec=SplitSpec(**spec), user_ids=ids["users"], item_ids=ids["items"], **parts,
                   cold_valid_items=np.asarray(meta["cold_valid_items"], dtype=np.int64),
                   cold_test_items=np.asarray(meta["cold_test_items"], dtype=np.int64))


def ratio_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """RecBole's ``_calcu_split_ids``: how many of a user's n rows go to train, valid, test."""
    cnt = [int(r * n) for r in ratios]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt[0], cnt[1], cnt[2]


def leave_last_out_labels(users: np.ndarray, min_positives: int = 3) -> np.ndarray:
    """Part labels (0 train, 1 valid, 2 test) for rows grouped by user in sequence order.

    A user with ``min_positives`` or more rows gives the last to test and the one before to valid.
    """
    n = len(users)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if n else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, n])
    from_end = np.repeat(starts + sizes, sizes) - 1 - np.arange(n)  # 0 = the user's last row
    long = np.repeat(sizes >= min_positives, sizes)
    labels = np.zeros(n, dtype=np.int64)
    labels[long & (from_end == 1)] = 1
    labels[long & (from_end == 0)] = 2
    return labels


def global_temporal_cuts(ts: np.ndarray, ratios: tuple[float, float, float]) -> tuple[float, float]:
    """The two cut times of ``global-temporal``: the ``ratios[0]`` and ``ratios[0] + ratios[1]`` quantiles of ``ts``."""
    t1, t2 = np.quantile(ts, [ratios[0], min(ratios[0] + ratios[1], 1.0)])  # the ratios sum to 1 within 1e-6
    return float(t1), float(t2)


def global_temporal_labels(users: np.ndarray, ts: np.ndarray, cuts: tuple[float, float]) -> np.ndarray:
    """Part labels (0 train, 1 valid, 2 test, -1 dropped) for one global time cut at ``cuts`` (t1, t2).

    An event at a cut goes to the earlier part. The valid and test events of a user with no training event
    are dropped (-1): there is no history to predict them from that the model was trained on.
    """
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    t1, t2 = cuts
    labels = np.where(ts <= t1, 0, np.where(ts <= t2, 1, 2)).astype(np.int64)
    known = np.bincount(users[labels == 0], minlength=int(users.max()) + 1) > 0
    labels[(labels > 0) & ~known[users]] = -1
    return labels


def _time_label(t: float) -> str:
    """A cut time for the log: a UTC date when ``t`` reads as epoch seconds, else the number itself."""
    try:
        return pd.Timestamp(t, unit="s").strftime("%Y-%m-%d %H:%M UTC")
    except (ValueError, OverflowError, NotImplementedError, pd.errors.OutOfBoundsDatetime):
        return f"t={t:g}"


def _positives(dataset: Dataset, threshold: float | None) -> pd.DataFrame:
    df = dataset.interactions
    keep = pd.Series(True, index=df.index)
    if threshold is not None and "rating" in df.columns:
        keep = pd.to_numeric(df["rating"], errors="coerce") >= threshold
    out = df.loc[keep, ["user_id", "item_id"]].copy()
    out["ts"] = timestamps_to_seconds(df.loc[keep, "timestamp"]).fillna(0.0).to_numpy()
    return out


def _check_size(parts: dict[str, pd.DataFrame], frame: pd.DataFrame, cfg: SplitConfig) -> None:
    """Raise :class:`DataError` naming the minimum a split misses: every part must hold a row."""
    empty = [name for name in PARTS if parts[name].empty]
    if not empty:
        return
    positives = (f"positives (rating >= {cfg.rating_threshold:g}, split.rating_threshold)"
                 if cfg.rating_threshold is not None else "interactions")
    if frame.empty:
        raise DataError(f"data too small for the {cfg.mode} split: it needs at least one of its {positives} "
                        "and there are none")
    most = int(frame.groupby("u").size().max())
    if cfg.mode == "cold-item":
        need = f"at least 3 items with {positives} (2 held out cold, 1 to train on); it has {frame['i'].nunique()}"
    elif cfg.mode == "global-temporal":
        need = (f"{positives} after the time cuts (the split.ratios quantiles of the timestamps) from users with one "
                f"before them, so the timestamps must spread past the cuts; it has {frame['ts'].nunique()} distinct "
                "timestamp(s)")
    else:
        need = f"at least one user with 3 {positives}; the most any user has is {most}"
    raise DataError(f"data too small for the {cfg.mode} split: the {' and '.join(empty)} part"
                    f"{'s are' if len(empty) > 1 else ' is'} empty; it needs {need}")


def make_split(dataset: Dataset, cfg: SplitConfig) -> Split:
    """Split ``dataset`` by ``cfg.mode``; the same seed always gives the same split."""
    if cfg.mode not in MODES:
        raise ValueError(f"split.mode must be one of {MODES}, got {cfg.mode!r}")
    pos = _positives(dataset, cfg.rating_threshold)
    item_ids = list(pd.unique(dataset.items["item_id"].astype(str)))
    item_index = {iid: k for k, iid in enumerate(item_ids)}
    pos = pos[pos["item_id"].isin(item_index)]  # unknown items were already allowed by validation
    user_ids = sorted(pos["user_id"].astype(str).unique())
    user_index = {uid: k for k, uid in enumerate(user_ids)}
    frame = pd.DataFrame({
        "u": pos["user_id"].map(user_index).to_numpy(np.int64),
        "i": pos["item_id"].map(item_index).to_numpy(np.int64),
        "ts": pos["ts"].to_numpy(float),
    })
    if cfg.mode in (*SEQUENTIAL_SPLIT_MODES, "temporal") and frame["ts"].nunique() == 1 and len(frame) > 1:
        log.warning("split %s: every timestamp is the same (a source without time, see sora.data.datasets), so the "
                    "order is the input file's; this protocol does not apply to such data", cfg.mode)
    if cfg.mode in SEQUENTIAL_SPLIT_MODES:
        # next item: time order with ties in input-file order (the row order of the interactions table).
        frame = frame.iloc[np.lexsort((np.arange(len(frame)), frame["ts"].to_numpy(), frame["u"].to_numpy()))]
    else:
        # A stable base order makes the split independent of the input row order.
        frame = frame.sort_values(["u", "ts", "i"], kind="stable")
    frame = frame.reset_index(drop=True)
    rng = np.random.default_rng(cfg.seed)
    cold_valid = cold_test = np.zeros(0, dtype=np.int64)
    if cfg.mode == "leave-last-out":
        part = leave_last_out_labels(frame["u"].to_numpy())
    elif cfg.mode == "global-temporal":
        ts = frame["ts"].to_numpy()
        cuts = global_temporal_cuts(ts, tuple(cfg.ratios)) if len(ts) else (0.0, 0.0)
        part = global_temporal_labels(frame["u"].to_numpy(), ts, cuts)
        if len(ts):
            log.info("split global-temporal: cuts at %s and %s", *map(_time_label, cuts))
        if (part == -1).any():
            log.info("split global-temporal: %d later events of users with no earlier history dropped",
                     int((part == -1).sum()))
    elif cfg.mode == "cold-item":
        rated = np.unique(frame["i"].to_numpy())
        n_cold = max(2, int(round(cfg.cold_item_ratio * len(rated))))
        cold = rng.permutation(rated)[:n_cold]
        cold_valid, cold_test = np.sort(cold[: n_cold // 2]), np.sort(cold[n_cold // 2:])
        part = np.where(frame["i"].isin(cold_valid), 1, np.where(frame["i"].isin(cold_test), 2, 0))
    else:
        part = np.zeros(len(frame), dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, frame["u"].to_numpy()[1:] != frame["u"].to_numpy()[:-1]])
        ends = np.r_[starts[1:], len(frame)]
        for s, e in zip(starts, ends, strict=True):
            n_train, n_valid, _ = ratio_counts(int(e - s), cfg.ratios)
            order = rng.permutation(e - s) if cfg.mode == "random" else np.arange(e - s)
            labels = np.zeros(e - s, dtype=np.int64)
            labels[order[n_train:n_train + n_valid]] = 1
            labels[order[n_train + n_valid:]] = 2
            part[s:e] = labels
    parts = {name: frame[part == k].reset_index(drop=True) for k, name in enumerate(PARTS)}
    _check_size(parts, frame, cfg)
    spec = SplitSpec(cfg.mode, cfg.seed, cfg.rating_threshold, tuple(cfg.ratios), cfg.cold_item_ratio,
                     dataset.fingerprint())
    split = Split(spec, user_ids, item_ids, **parts, cold_valid_items=cold_valid, cold_test_items=cold_test)
    log.info("split %s: %d users, %d items, train/valid/test = %d/%d/%d", cfg.mode, split.num_users,
             split.num_items, len(split.train), len(split.valid), len(split.test))
    return split
