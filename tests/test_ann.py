"""Approximate top-k for large catalogues (issue 15, deliverable 5): sora.model.ann and its use by the Recommender."""

import numpy as np
import pandas as pd
import pytest
import torch

from sora.config import SoraConfig
from sora.model.ann import INDEX_FILE, auto_nlist, build_index
from sora.model.recommender import ModelLoadError, Recommender
from sora.model.text import HashEncoder
from sora.serving.items import add_items
from sora.training.train import prepare, train_model
from tests.conftest import make_dataset


def clustered(n, d, clusters, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    return (centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


def test_index_recall_against_exact():
    items = clustered(20_000, 16, 200, 0)
    queries = clustered(200, 16, 200, 1)
    ann = build_index(items, nlist=0, nprobe=32)
    assert ann.size == 20_000 and ann.nlist == auto_nlist(20_000) == 512  # capped: >= 39 vectors per cell
    _, got = ann.search(queries, 10)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    recall = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
    assert recall >= 0.95, recall


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    ds = make_dataset(n_users=24, n_items=80, per_user=8)
    cfg = SoraConfig().with_overrides(["text.model=hash:8", "model.dim=8", "train.max_epochs=1",
                                       "train.batch_size=64", "model.history_len=3", "graph.item_knn_k=2",
                                       "serve.ann_min_items=50", "serve.ann_nprobe=1000"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(8), progress=False)
    out = tmp_path_factory.mktemp("ann") / "model"
    train_model(split, emb, ds.items, cfg, progress=False).recommender.save(out)
    return out


def test_index_is_built_on_save_and_matches_exact(model_dir):
    rec = Recommender.load(model_dir)
    assert (model_dir / INDEX_FILE).is_file() and rec.ann is not None and rec.ann.size == rec.num_items
    exact = Recommender.load(model_dir)
    exact.ann = None
    for user in ("u0", "u5", "u13"):
        a, b = rec.recommend(user, k=10), exact.recommend(user, k=10)
        assert [x["item_id"] for x in a] == [x["item_id"] for x in b]  # every cell probed: exact
        assert np.allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-5)
        seen = {rec.item_ids[i] for i in rec.seen[rec.user_index[user]].indices}
        assert not seen & {x["item_id"] for x in a}
    recent = ["i1", "i2"]
    assert [x["item_id"] for x in rec.recommend("u1", 5, recent_item_ids=recent)] == \
        [x["item_id"] for x in exact.recommend("u1", 5, recent_item_ids=recent)]
    a, _ = rec.recommend_from_history(["i3", "i9"], k=7)
    b, _ = exact.recommend_from_history(["i3", "i9"], k=7)
    assert [x["item_id"] for x in a] == [x["item_id"] for x in b]


def test_below_the_threshold_ranks_exactly(tmp_path, model_dir):
    rec = Recommender.load(model_dir)
    rec.ann = None
    rec.config.serve.ann_min_items = 0
    rec.save(tmp_path / "m")
    assert not (tmp_path / "m" / INDEX_FILE).exists() and Recommender.load(tmp_path / "m").ann is None


def test_a_missing_index_is_a_load_error(tmp_path, model_dir):
    import shutil

    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / INDEX_FILE).unlink()
    with pytest.raises(ModelLoadError, match="approximate index"):
        Recommender.load(tmp_path / "m")


def test_added_items_get_a_rebuilt_index(tmp_path, model_dir):
    rec = Recommender.load(model_dir)
    bigger, _ = add_items(rec, pd.DataFrame({"item_id": ["n1", "n2"], "title": ["Drama night", "Comedy day"]}),
                          HashEncoder(8))
    bigger.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.ann.size == rec.num_items + 2
    assert {"n1", "n2"} <= {x["item_id"] for x in back.recommend("u1", k=back.num_items)}
    assert torch.equal(back.item_vectors, bigger.item_vectors)
