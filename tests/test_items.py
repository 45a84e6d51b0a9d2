"""New items without retraining (issue 15, deliverable 3): `sora items add` and :mod:`sora.serving.items`."""

import numpy as np
import pandas as pd
import pytest
import torch

from sora import registry
from sora.cli import main
from sora.model.recommender import Recommender
from sora.model.text import HashEncoder
from sora.serving.core import ModelHolder, handle
from sora.serving.items import ItemsError, add_items, remove_items, validate_new_items
from sora.serving.requests import Limits
from tests.conftest import train_tiny_model

LIMITS = Limits()


class CountingEncoder(HashEncoder):
    def __init__(self, dim):
        super().__init__(dim)
        self.calls = 0

    def encode(self, texts):
        self.calls += len(texts)
        return super().encode(texts)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("items") / "model", n_users=30, n_items=42, text_dim=16, epochs=2, knn_k=3)


@pytest.fixture(scope="module")
def rec(model_dir):
    return Recommender.load(model_dir)


def new_items(rec) -> pd.DataFrame:
    twin = rec.items[rec.items.item_id == "i5"].iloc[0]
    return pd.DataFrame({"item_id": ["n1", "n2", "n3"],
                         "title": [twin["title"], "Horror movie about a haunted lighthouse", "Romance in Paris"],
                         "categories": [twin["categories"], "Horror", "Romance"]})


def test_added_items_are_served_everywhere(rec, tmp_path):
    bigger, report = add_items(rec, new_items(rec), HashEncoder(16))
    assert report["added"] == 3 and bigger.num_items == rec.num_items + 3 and rec.num_items == 42
    bigger.save(tmp_path / "m")
    holder = ModelHolder(str(tmp_path / "m"))
    assert holder.refresh()
    top = handle(holder, "recommend", {"user_id": "u1", "k": bigger.num_items}, LIMITS)
    assert {"n1", "n2", "n3"} <= {i["item_id"] for i in top["items"]}
    sim = handle(holder, "similar_items", {"item_id": "n2", "k": 3}, LIMITS)
    assert len(sim["items"]) == 3
    scored = handle(holder, "score", {"user_id": "u1", "item_ids": ["n1", "i5", "n3"]}, LIMITS)
    assert [i["item_id"] for i in scored["items"]] == ["n1", "i5", "n3"]
    assert all(np.isfinite(i["score"]) for i in scored["items"])
    assert scored["items"][0]["title"] == rec.titles["i5"]


def test_existing_items_keep_their_scores(rec):
    bigger, _ = add_items(rec, new_items(rec), HashEncoder(16))
    u = np.arange(rec.num_users)
    assert torch.allclose(bigger.score_users(u)[:, :rec.num_items], rec.score_users(u), atol=1e-5)


def test_a_text_twin_lands_among_the_originals_neighbours(rec):
    bigger, report = add_items(rec, new_items(rec), HashEncoder(16))
    assert report["neighbours"]["n1"][0] == "i5"
    assert "n1" in [i["item_id"] for i in bigger.similar_items("i5", k=5)]
    assert "i5" in [i["item_id"] for i in bigger.similar_items("n1", k=5)]


def test_second_addition_does_not_re_embed_the_catalogue(rec, tmp_path):
    enc = CountingEncoder(16)
    once, _ = add_items(rec, new_items(rec), enc)
    assert enc.calls == rec.num_items + 3  # no item text in a trained model: the catalogue once
    once.save(tmp_path / "once")
    once = Recommender.load(tmp_path / "once")
    assert once.item_text is not None and once.item_text.shape == (rec.num_items + 3, 16)
    enc.calls = 0
    twice, _ = add_items(once, pd.DataFrame({"item_id": ["n9"], "title": ["Sci-Fi saga"]}), enc)
    assert enc.calls == 1 and twice.num_items == rec.num_items + 4


def test_remove_then_add_restores_the_catalogue(rec):
    with pytest.raises(ValueError, match="without training interactions"):
        remove_items(rec, ["i3", "i4"])  # warm items: their interactions would dangle
    bigger, _ = add_items(rec, pd.DataFrame({"item_id": ["c1", "c2"], "title": ["Drama one", "Drama two"]}),
                          HashEncoder(16))
    smaller = remove_items(bigger, ["c1"])
    assert smaller.item_ids == [*rec.item_ids, "c2"]
    assert torch.equal(smaller.item_vectors[-1], bigger.item_vectors[-1])


def test_a_model_of_the_heads_alone_stays_one_through_additions_and_removals(model_dir, caplog):
    heads = Recommender.load(model_dir)
    if not heads.alpha:
        heads.alpha = 1.0
    heads.network_weight = 0.0
    u = np.arange(heads.num_users)
    bigger, _ = add_items(heads, new_items(heads), HashEncoder(16))
    assert bigger.network_weight == 0.0 and "score 0 until they have interactions" in caplog.text
    torch.testing.assert_close(bigger.score_users(u)[:, :heads.num_items], heads.score_users(u))
    smaller = remove_items(bigger, ["n2"])
    assert smaller.network_weight == 0.0
    torch.testing.assert_close(smaller.score_users(u)[:, :heads.num_items], heads.score_users(u))


@pytest.mark.parametrize("frame,column,fragment", [
    (pd.DataFrame({"item_id": ["x1"]}), "title", "missing required column(s) title"),
    (pd.DataFrame({"item_id": ["x1", "x1"], "title": ["a", "b"]}), "item_id", "duplicate id in the file"),
    (pd.DataFrame({"item_id": ["i1", "x2"], "title": ["a", "b"]}), "item_id", "already in the model's catalogue"),
    (pd.DataFrame({"item_id": ["x1", None], "title": ["a", "b"]}), "item_id", "empty id"),
    (pd.DataFrame({"item_id": ["x1", "x2"], "title": ["a", " "]}), "title", "empty title"),
    (pd.DataFrame({"item_id": [], "title": []}), None, "no rows"),
])
def test_bad_items_are_refused_naming_the_column(rec, frame, column, fragment):
    with pytest.raises(ItemsError) as err:
        validate_new_items(rec, frame, "new.csv")
    assert fragment in str(err.value) and str(err.value).startswith("new.csv")
    assert err.value.column == column


def test_encoder_must_match_the_models(rec):
    with pytest.raises(ValueError, match="text encoder mismatch"):
        add_items(rec, new_items(rec), HashEncoder(8))


def test_cli_model_dir(model_dir, tmp_path, capsys):
    items = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["n7"], "title": ["Action hero returns"], "categories": ["Action"]}).to_csv(items, index=False)
    out = tmp_path / "bigger"
    cache = tmp_path / "cache"
    assert main(["items", "add", "--model", str(model_dir), "--items", str(items), "--out", str(out),
                 "--cache", str(cache), "--no-progress"]) == 0
    assert "added 1 items (42 → 43)" in capsys.readouterr().out
    assert Recommender.load(out).item_ids[-1] == "n7"
    assert main(["items", "add", "--model", str(model_dir), "--items", str(items)]) == 2  # --out missing
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title\ni1,dup of a known id\n")
    assert main(["items", "add", "--model", str(model_dir), "--items", str(bad), "--out", str(out),
                 "--cache", str(cache)]) == 1
    err = capsys.readouterr().err
    assert "item_id: already in the model's catalogue" in err and "i1" in err


def test_cli_registry_moves_the_alias_and_the_holder_swaps(model_dir, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v1 = registry.log_and_register(uri, "sora", model_dir, {"valid": {}, "test": {}}).version
    registry.promote(uri, "sora", v1)
    holder = ModelHolder("models:/sora@champion", uri, poll_interval_s=0)
    assert holder.refresh() and holder.current.version == v1
    items = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["n8"], "title": ["Comedy of errors"]}).to_csv(items, index=False)
    assert main(["items", "add", "--model-uri", "models:/sora@champion", "--tracking-uri", uri, "--items", str(items),
                 "--cache", str(tmp_path / "cache"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "registered sora v2 (from v1)" in out and "champion: sora v2 (was v1)" in out
    assert holder.refresh() and holder.current.version == "2"  # what every replica's poll does
    assert handle(holder, "similar_items", {"item_id": "n8", "k": 2}, LIMITS)["model"]["version"] == "2"
    assert registry.rollback(uri, "sora") == ("2", "1")
