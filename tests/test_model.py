"""Model, training, save/load and recommendation on tiny synthetic data (hash text encoder)."""

import json

import numpy as np
import pytest
import torch

from sora.config import SoraConfig
from sora.data.split import make_split
from sora.model.network import HistoryFusion, SoraModel
from sora.model.recommender import Recommender, UnknownIdError
from sora.model.text import HashEncoder
from sora.training.train import prepare, train_model
from tests.conftest import make_dataset

FAST = ["text.model=hash:16", "model.dim=16", "train.max_epochs=6", "train.batch_size=128", "train.patience=10",
        "graph.item_knn_k=3", "model.history_len=4", "train.lr=0.01"]


def _train(ds=None, overrides=(), mode="random"):
    # 20 items per genre, so each user's favourite genre still has unseen items to recommend
    ds = ds or make_dataset(n_users=60, n_items=120, per_user=12)
    cfg = SoraConfig().with_overrides([*FAST, f"split.mode={mode}", *overrides])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    return train_model(split, emb, ds.items, cfg, ds.user_edges, progress=False), split, cfg


@pytest.fixture(scope="module")
def trained():
    return _train()


def test_shapes_and_dimension_checks():
    cfg = SoraConfig().resolved().model
    cfg.dim, cfg.history_len, cfg.transformer_heads = 8, 3, 2
    m = SoraModel(cfg, 5, 7, 4, torch.ones(7, dtype=torch.bool))
    text = torch.randn(7, 4)
    hu, hi = m.node_inputs(text)
    assert hu.shape == (5, 8) and hi.shape == (7, 8)
    assert m.item_vectors(hi, text).shape == (7, 8)
    hist, mask = torch.zeros(3, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert m.user_vectors(hu[:3], hist, mask, hi).shape == (3, 8)
    assert m.user_vectors(None, hist, mask, hi).shape == (3, 8)
    with pytest.raises(ValueError, match="divisible"):
        HistoryFusion(10, 3, 1, 3, 0.0)
    with pytest.raises(ValueError, match="warm_items"):
        SoraModel(cfg, 5, 7, 4, torch.ones(6))
    cfg.dim = 0
    with pytest.raises(ValueError, match="dim"):
        SoraModel(cfg, 5, 7, 4, torch.ones(7))


@pytest.mark.parametrize("std", [0.1, 1.0])
def test_position_embeddings_start_at_model_position_std(std):
    torch.manual_seed(0)
    cfg = SoraConfig().with_overrides(["model.dim=64", f"model.position_std={std}"]).resolved()
    m = SoraModel(cfg.model, 5, 7, 4, torch.ones(7))
    assert m.fusion.position.weight.std().item() == pytest.approx(std, rel=0.15)


def test_training_lowers_the_loss_and_keeps_history(trained):
    result, _, _ = trained
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert all("valid_ndcg@10" in h for h in result.history)
    assert 1 <= result.best_epoch <= len(result.history)


def test_learns_the_synthetic_preference(trained):
    result, split, _ = trained
    rec = result.recommender
    # users prefer items of genre (u % 6); most of the top-5 should be of that genre
    hits = []
    for uid in rec.user_ids[:12]:
        fav = int(uid[1:]) % 6
        top = rec.recommend(uid, k=5)
        hits += [int(r["item_id"][1:]) % 6 == fav for r in top]
    assert np.mean(hits) > 0.5


def test_save_load_round_trip_identical_scores(tmp_path, trained):
    rec = trained[0].recommender
    rec.save(tmp_path / "m")
    again = Recommender.load(tmp_path / "m")
    users = np.arange(rec.num_users)
    torch.testing.assert_close(again.score_users(users), rec.score_users(users))
    torch.testing.assert_close(again.score_history([1, 2, 3]), rec.score_history([1, 2, 3]))
    assert again.recommend("u3") == rec.recommend("u3")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["dim"] == 16


def test_save_replaces_atomically(tmp_path, trained):
    rec = trained[0].recommender
    target = tmp_path / "m"
    rec.save(target)
    rec.save(target)  # replacing an existing model leaves exactly one good copy
    assert Recommender.load(target).num_items == rec.num_items
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_deterministic_for_a_seed():
    a, _, _ = _train(overrides=["train.max_epochs=2"])
    b, _, _ = _train(overrides=["train.max_epochs=2"])
    users = np.arange(a.recommender.num_users)
    torch.testing.assert_close(a.recommender.score_users(users), b.recommender.score_users(users))


_RUN_ONCE = """
import hashlib, sys
import numpy as np
from sora.config import SoraConfig
from sora.model.text import HashEncoder
from sora.training.train import prepare, train_model
from tests.conftest import make_dataset
ds = make_dataset(n_users=60, n_items=80)
cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=8", "train.max_epochs=3", "train.num_threads=2",
                                   *sys.argv[1:]])
split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
print(hashlib.sha256(rec.score_users(np.arange(rec.num_users)).numpy().tobytes()).hexdigest())
"""


@pytest.mark.parametrize("mode", ["random", "leave-last-out"])
def test_same_seed_same_model_across_processes(mode):
    """Two processes (2 torch threads, other hash seeds) train bit-identical models: torch's deterministic
    algorithms are on during CPU training (before, thread-order accumulation made them drift apart)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    digests = {subprocess.run([sys.executable, "-c", _RUN_ONCE, f"split.mode={mode}"], cwd=root, check=True,
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": str(k)},
                              ).stdout.split()[-1] for k in (1, 2)}
    assert len(digests) == 1
    assert not torch.are_deterministic_algorithms_enabled()  # training restores the process's setting


@pytest.mark.parametrize("flag,check", [
    ("model.use_text=false", lambda r: r.model.text_in is None and r.meta["text_dim"] == 0),
    ("model.use_transformer=false", lambda r: r.model.fusion is None),
    ("model.use_item_item_score=false", lambda r: r.ii is None and r.alpha == 0.0),
])
def test_ablation_switches(flag, check):
    result, _, _ = _train(overrides=[flag, "train.max_epochs=1"])
    assert check(result.recommender)


def test_ablation_of_item_and_user_edges():
    from sora.config import SoraConfig as C
    from sora.training.train import _graph_config

    cfg = C().with_overrides(["model.use_item_edges=false", "model.use_user_edges=false"])
    g = _graph_config(cfg)
    assert g.item_edges == "none" and g.user_edges == "none"
    assert _graph_config(C()).item_edges == "text"  # ease feeds the item–item head, not message passing


def test_cold_items_get_text_driven_scores():
    result, split, _ = _train(mode="cold-item", overrides=["train.max_epochs=4"])
    rec = result.recommender
    cold = np.r_[split.cold_valid_items, split.cold_test_items]
    assert len(cold) and not set(cold) & set(split.train["i"])
    vecs = rec.item_vectors[torch.as_tensor(cold)]
    assert torch.all(vecs.norm(dim=1) > 1e-3)  # non-trivial vectors from text + item↔item edges
    scores = rec.score_users(np.arange(rec.num_users))[:, torch.as_tensor(cold)]
    assert scores.std() > 1e-4


def test_recommendation_api(trained):
    rec = trained[0].recommender
    seen = set(rec.seen[rec.user_index["u0"]].indices)
    top = rec.recommend("u0", k=5)
    assert len(top) == 5 and not {rec.item_index[r["item_id"]] for r in top} & seen
    assert top == sorted(top, key=lambda r: -r["score"]) and top[0]["title"]
    with_seen = rec.recommend("u0", k=rec.num_items, exclude_seen=False)
    assert len(with_seen) == rec.num_items
    items, ignored = rec.recommend_from_history(["i1", "i7", "nope"], k=4)
    assert ignored == ["nope"] and len(items) == 4 and not {"i1", "i7"} & {r["item_id"] for r in items}
    sim = rec.similar_items("i0", k=3)
    assert len(sim) == 3 and "i0" not in {r["item_id"] for r in sim}
    scored = rec.score("u0", ["i2", "i1"])
    assert [r["item_id"] for r in scored] == ["i2", "i1"]
    assert scored[0]["score"] == pytest.approx(float(rec.score_users(np.array([0]))[0, rec.item_index["i2"]]))
    with pytest.raises(UnknownIdError):
        rec.recommend("nobody")
    with pytest.raises(UnknownIdError):
        rec.recommend_from_history(["nope"])


def test_split_is_rebuilt_identically(trained, tmp_path):
    from sora.data.contract import DataError, load_dataset
    from sora.evaluation.evaluate import rebuild_split

    ds = make_dataset()
    ds.save(tmp_path / "d")
    ds = load_dataset(tmp_path / "d")
    cfg = SoraConfig().with_overrides(FAST)
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    again = rebuild_split(rec, ds)
    assert again.test.equals(split.test)
    other = make_dataset(seed=5)
    other.source = "other"
    with pytest.raises(DataError, match="data hash"):
        rebuild_split(rec, other)
    assert make_split(ds, cfg.split).spec.data_fingerprint == rec.meta["data_fingerprint"]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_numpy_fast_path_equals_the_torch_fusion(layers, causal):
    from sora.model.fastpath import NumpyFusion

    torch.manual_seed(layers)
    fusion = HistoryFusion(dim=16, history_len=6, layers=layers, heads=2, dropout=0.3, causal=causal).eval()
    with torch.no_grad():
        fusion.anonymous.normal_()
        fast = NumpyFusion(fusion)
        items = torch.randn(4, 16)
        for token in (None, torch.randn(16)):
            want = fusion(None if token is None else token[None], items[None], torch.ones(1, 4, dtype=torch.bool))[0]
            got = fast(None if token is None else token.numpy(), items.numpy())
            assert np.allclose(got, want.numpy(), atol=1e-5)


def test_causal_fusion_training_pass_is_the_inference_pass():
    """The causal layout: a window's last output is the user vector of that history; a hole is a shorter history."""
    torch.manual_seed(0)
    fusion = HistoryFusion(dim=8, history_len=5, layers=2, heads=2, dropout=0.0, causal=True)
    with torch.no_grad():
        fusion.anonymous.normal_()
    items = torch.randn(3, 5, 8)  # oldest first, left-padded
    mask = torch.tensor([[True] * 5, [False, False, True, True, True], [False] * 4 + [True]])
    seq = fusion.sequence(items, mask)  # training: every position
    fusion.eval()
    with torch.no_grad():
        served = fusion(None, items.flip(1), mask.flip(1))  # inference reads newest first
        torch.testing.assert_close(seq[:, -1], served)
        # position t sees nothing after t: changing the newest item leaves earlier outputs alone
        other = items.clone()
        other[:, -1] = torch.randn(3, 8)
        torch.testing.assert_close(fusion.sequence(other, mask)[:, :-1], seq[:, :-1].detach())
        assert not torch.allclose(fusion.sequence(other, mask)[0, -1], seq[0, -1])
        # a masked-out item is removed, not a gap: the same vector as the history without it
        holed = mask.flip(1).clone()
        holed[0, 2] = False
        shorter = items.flip(1)[0:1, [0, 1, 3, 4]]
        torch.testing.assert_close(fusion(None, items.flip(1), holed)[0],
                                   fusion(None, shorter, torch.ones(1, 4, dtype=torch.bool))[0])
        assert torch.isfinite(fusion(None, items, torch.zeros(3, 5, dtype=torch.bool))).all()  # empty history
