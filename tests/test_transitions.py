"""The transition head (``sora.model.transitions``): built from the training order, chosen on valid, and the
same on every scoring path, after save / load and catalogue changes, and in explanations."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sora.config import SoraConfig
from sora.data.contract import Dataset
from sora.data.protocol import recency_matrix, sequences
from sora.model.recommender import ModelLoadError, Recommender
from sora.model.text import HashEncoder
from sora.model.transitions import transition_matrix
from sora.training.selection import select_transitions
from sora.training.train import prepare, train_model
from tests.conftest import make_dataset

SMALL = ["text.model=hash:16", "model.dim=16", "train.max_epochs=2", "train.batch_size=64", "model.history_len=4",
         "split.mode=leave-last-out"]


def test_matrix_counts_followers_within_the_window_and_is_cosine_normalised():
    seqs = [np.array([0, 1, 2, 3]), np.array([1, 2, 1]), np.array([4])]
    t = transition_matrix(seqs, 5, window=2, gap_decay=0.5).toarray()
    raw = np.zeros((5, 5))
    for s in seqs:
        for a in range(len(s)):
            for gap in (1, 2):
                if a + gap < len(s):
                    raw[s[a], s[a + gap]] += 0.5 ** (gap - 1)
    expected = raw / np.sqrt(raw.sum(1, keepdims=True) + 1) / np.sqrt(raw.sum(0, keepdims=True) + 1)
    assert np.allclose(t, expected, atol=1e-6)
    assert t[2, 1] > 0 and t[1, 0] == 0  # direction kept: 1 came after 2 once, 0 never after 1
    assert transition_matrix([np.array([3])], 4).nnz == 0


@pytest.fixture(scope="module")
def causal():
    ds = make_dataset(n_users=30, n_items=40, per_user=12)
    cfg = SoraConfig().with_overrides([*SMALL, "train.transition_head=false"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    assert rec.transitions is None and rec.beta == 0.0  # switched off: nothing added
    seqs = sequences(split, "train")
    rec.transitions = transition_matrix(seqs, rec.num_items)
    rec.beta, rec.transition_decay = 0.6, 0.5
    rec.transition_rows = recency_matrix(seqs, rec.num_items, 0.5)
    return rec, split, seqs


def brute_transitions(rec, history_oldest_first):
    """Σ over distinct items of decay**age(newest occurrence) · T[h]."""
    t = rec.transitions.toarray()
    out = np.zeros(rec.num_items)
    seen = set()
    for age, h in enumerate(reversed(history_oldest_first)):
        if h not in seen:
            seen.add(h)
            out += rec.transition_decay ** age * t[h]
    return rec.beta * out


def test_every_scoring_path_adds_the_same_transition_head(causal):
    rec, split, seqs = causal
    u = 3
    with_t = rec.score_users(np.array([u]))[0]
    rec.beta = 0.0
    without = rec.score_users(np.array([u]))[0]
    rec.beta = 0.6
    assert np.allclose((with_t - without).numpy(), brute_transitions(rec, seqs[u].tolist()), atol=1e-5)
    assert torch.allclose(rec.score_user_recent(u, []), with_t)
    recent = [int(split.valid["i"][split.valid["u"] == u].iloc[0]), int(seqs[u][0])]  # a repeat re-ages its item
    got = rec.score_user_recent(u, recent, alpha=0.0) - (rec.user_vectors_with(u, recent) @ rec.item_vectors.T)
    assert np.allclose(got.numpy(), brute_transitions(rec, [*seqs[u].tolist(), *recent]), atol=1e-5)
    anon = [5, 9, 5, 12]
    got = rec.score_history(anon) - rec.item_vectors @ rec.history_vector(anon)
    rec_alpha, rec.alpha = rec.alpha, 0.0
    try:
        got_no_ii = rec.score_history(anon) - rec.item_vectors @ rec.history_vector(anon)
    finally:
        rec.alpha = rec_alpha
    assert np.allclose(got_no_ii.numpy(), brute_transitions(rec, anon), atol=1e-5)
    assert not torch.allclose(got, got_no_ii) or rec.alpha == 0.0


def test_saved_and_loaded_and_damage_is_named(causal, tmp_path):
    rec, _, _ = causal
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.beta == rec.beta and back.transition_decay == rec.transition_decay
    users = np.arange(rec.num_users)
    torch.testing.assert_close(back.score_users(users), rec.score_users(users))
    back.prepare_serving()
    torch.testing.assert_close(back.score_user_recent(2, [7]), rec.score_user_recent(2, [7]), atol=1e-5, rtol=1e-5)
    from safetensors.torch import load_file, save_file

    t = load_file(str(tmp_path / "m" / "model.safetensors"))
    save_file({k: v for k, v in t.items() if not k.startswith("trans.")}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="missing trans.indices, trans.indptr, trans.values"):
        Recommender.load(tmp_path / "m")


def test_explanations_carry_the_transition_share_exactly(causal):
    from sora.model.explain import attributions

    rec, _, _ = causal
    history = [rec.item_index[i] for i in rec.item_ids[2:16]]  # longer than the window
    window = list(reversed(history))[: rec.config.model.history_len]
    targets = [20, 21]
    head = rec.head_history(None, history)
    trans = rec.transition_history(None, history)
    items, weights = attributions(rec, list(reversed(history)), head[0], targets, None, head[1], trans)
    ii = np.asarray(rec.ii.toarray() if sp.issparse(rec.ii) else rec.ii)
    t = rec.transitions.toarray()
    for h in (h for h in history if h not in window):  # outside the window: the two heads' shares only
        row = int(np.searchsorted(items, h))
        hw = head[1][np.searchsorted(head[0], h)] if head[1] is not None else 1.0
        tw = trans[1][np.searchsorted(trans[0], h)]
        assert np.allclose(weights[row], rec.alpha * hw * ii[h, targets] + rec.beta * tw * t[h, targets], atol=1e-5)
    out = rec.recommend(rec.user_ids[4], k=3, explain=True)
    assert all(it["because"] for it in out)


def test_items_added_and_removed_keep_the_head(causal):
    from sora.serving.items import add_items, remove_items

    rec, _, _ = causal
    new = pd.DataFrame({"item_id": ["n1", "n2"], "title": ["Drama movie new", "Comedy movie new"]})
    grown, _ = add_items(rec, new, HashEncoder(16), k=3)
    assert grown.transitions.shape == (42, 42) and grown.transition_rows.shape == (rec.num_users, 42)
    torch.testing.assert_close(grown.score_users(np.array([1]))[0, :40], rec.score_users(np.array([1]))[0],
                               atol=1e-5, rtol=1e-5)
    back = remove_items(grown, ["n1", "n2"])
    torch.testing.assert_close(back.score_users(np.array([1])), rec.score_users(np.array([1])), atol=1e-5, rtol=1e-5)


def cycle_dataset(n_users=60, n_items=30, per_user=14, seed=0) -> Dataset:
    """Every user walks the catalogue in one fixed order from a random start: what comes next is known."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{(start + j) % n_items}", 5.0, 880_000_000 + u * 1000 + j)
            for u in range(n_users) for start in [int(rng.integers(n_items))] for j in range(per_user)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "title": [f"movie {i}" for i in range(n_items)]})
    for frame in (inter, items):
        frame["item_id"] = frame["item_id"].astype("string")
    inter["user_id"] = inter["user_id"].astype("string")
    return Dataset(interactions=inter, items=items)


def test_valid_chooses_the_head_where_order_predicts_the_next_item():
    ds = cycle_dataset()
    # transition_head null: on with causal training. A binary head at a fixed λ: a recency-weighted EASE
    # head alone already ranks every valid target first here, leaving the transition head nothing to add.
    cfg = SoraConfig().with_overrides([*SMALL, "graph.ease_lambda=300", "train.head_decays=[1.0]"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    res = train_model(split, emb, ds.items, cfg, progress=False)
    rec = res.recommender
    grid = rec.meta["transition_grid"]
    assert rec.beta > 0 and rec.transitions is not None
    assert res.valid["ndcg@10"] > grid["without"] and res.valid["ndcg@10"] == pytest.approx(max(grid.values()))


def test_nothing_is_kept_when_valid_does_not_prefer_it(causal):
    rec, split, seqs = causal
    saved = (rec.transitions, rec.beta, rec.transition_decay, rec.transition_rows, rec.alpha)
    try:
        rec.transitions, rec.transition_rows, rec.beta = None, None, 0.0
        alpha = rec.alpha
        base = {"ndcg@10": 1.0}  # nothing can beat a perfect ranking
        out = select_transitions(rec, split.valid["u"].to_numpy(), split.valid["i"].to_numpy(), rec.config,
                                 rec.train, seqs, base)
        assert out is base and rec.transitions is None and rec.transition_rows is None
        assert rec.beta == 0.0 and rec.alpha == alpha and rec.transition_decay == 1.0
    finally:
        rec.transitions, rec.beta, rec.transition_decay, rec.transition_rows, rec.alpha = saved
