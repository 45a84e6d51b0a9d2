"""Damaged model directories fail with a ModelLoadError naming the file; saving never leaves half a model."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from sora.config import SoraConfig
from sora.model.recommender import ModelLoadError, Recommender
from sora.model.text import HashEncoder
from sora.training.train import prepare, train_model
from tests.conftest import make_dataset


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny trained model saved once; each test damages its own copy."""
    ds = make_dataset(n_users=24, n_items=36, per_user=10)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=2",
                                       "train.batch_size=128", "graph.item_knn_k=3", "model.history_len=4"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    rec = train_model(split, emb, ds.items, cfg, ds.user_edges, progress=False).recommender
    d = tmp_path_factory.mktemp("model") / "m"
    rec.save(d)
    return d


@pytest.fixture
def model_dir(saved, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    return d


def _edit_json(path, edit):
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def _edit_tensors(path, edit):
    t = load_file(str(path))
    edit(t)
    save_file(t, str(path))


def test_good_directory_loads_strictly_and_round_trips(model_dir, tmp_path):
    rec = Recommender.load(model_dir)
    rec.save(tmp_path / "again")
    again = Recommender.load(tmp_path / "again")
    users = np.arange(rec.num_users)
    torch.testing.assert_close(again.score_users(users), rec.score_users(users))


@pytest.mark.parametrize("damage,file", [
    (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
     "model.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "model.safetensors"),
    (lambda d: (d / "config.json").write_text('{"model": {"dim": 16'), "config.json"),
    (lambda d: (d / "config.json").write_text(""), "config.json"),
    (lambda d: (d / "meta.json").write_text("[1, 2"), "meta.json"),
    (lambda d: _edit_json(d / "meta.json", lambda m: m.pop("item_ids")), "meta.json"),
    (lambda d: (d / "items.parquet").write_bytes(b"PAR1 half"), "items.parquet"),
    (lambda d: (d / "items.parquet").unlink(), "items.parquet"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
])
def test_damaged_files_are_named(model_dir, damage, file):
    damage(model_dir)
    with pytest.raises(ModelLoadError) as err:
        Recommender.load(model_dir)
    assert file in str(err.value) and str(model_dir) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_invalid_config_value_names_file_and_key(model_dir):
    _edit_json(model_dir / "config.json", lambda c: c["train"].update(batch_size=0))
    with pytest.raises(ModelLoadError, match=r"config\.json.*train\.batch_size"):
        Recommender.load(model_dir)


def test_config_not_matching_weights_names_the_tensors(model_dir):
    _edit_json(model_dir / "config.json", lambda c: c["model"].update(dim=32))
    with pytest.raises(ModelLoadError) as err:
        Recommender.load(model_dir)
    msg = str(err.value)
    assert "model.safetensors" in msg and "model.user_emb.weight" in msg and "shape" in msg


def test_config_without_transformer_finds_unexpected_tensors(model_dir):
    _edit_json(model_dir / "config.json", lambda c: c["model"].update(use_transformer=False))
    with pytest.raises(ModelLoadError, match=r"unexpected .*model\.fusion\."):
        Recommender.load(model_dir)


def test_missing_and_unexpected_tensors_are_named(model_dir):
    _edit_tensors(model_dir / "model.safetensors", lambda t: (t.pop("item_tokens"), t.update(extra=torch.ones(2))))
    with pytest.raises(ModelLoadError) as err:
        Recommender.load(model_dir)
    assert "missing item_tokens" in str(err.value) and "unexpected extra" in str(err.value)


def test_inconsistent_interaction_matrix_is_caught(model_dir):
    def corrupt(t):
        t["seen.indices"] = t["seen.indices"] + 10_000  # item indices beyond the catalogue
    _edit_tensors(model_dir / "model.safetensors", corrupt)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        Recommender.load(model_dir)


@pytest.mark.parametrize("decay", [0, 1.5, "x", True])
def test_bad_head_decay_names_meta_json(model_dir, decay):
    _edit_json(model_dir / "meta.json", lambda m: m.update(head_decay=decay))
    with pytest.raises(ModelLoadError, match="meta.json: 'head_decay'"):
        Recommender.load(model_dir)


def test_decayed_head_without_its_tensors_is_named(model_dir):
    _edit_json(model_dir / "meta.json", lambda m: m.update(head_decay=0.9))
    _edit_tensors(model_dir / "model.safetensors",
                  lambda t: [t.pop(k) for k in ("head.indptr", "head.indices", "head.values") if k in t])
    with pytest.raises(ModelLoadError, match="missing head.indices, head.indptr, head.values"):
        Recommender.load(model_dir)


def test_missing_directory_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Recommender.load(tmp_path / "nope")


def test_failed_save_keeps_the_good_model(model_dir, monkeypatch):
    rec = Recommender.load(model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)  # fails after the weights were written
    with pytest.raises(OSError, match="disk full"):
        rec.save(model_dir)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert [p.name for p in model_dir.parent.iterdir()] == ["m"]  # no temporary directories left behind
    assert Recommender.load(model_dir).num_items == rec.num_items


def test_save_over_an_existing_model_leaves_one_copy(model_dir):
    rec = Recommender.load(model_dir)
    rec.save(model_dir)
    assert [p.name for p in model_dir.parent.iterdir()] == ["m"]
    assert Recommender.load(model_dir).num_users == rec.num_users
