"""The item–item head trained into causal training's logits (``train.head_in_loss``, sora.training.heads)."""

import numpy as np
import pandas as pd
import pytest
import torch

from sora.config import ConfigError, SoraConfig
from sora.model.itemsim import ease_weights, interaction_matrix
from sora.training.heads import HeadTerm, out_of_fold_ease, window_carries
from sora.training.prep import causal_windows


def _sequences(n_users: int = 9, n_items: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(u, int(rng.integers(n_items)), float(t)) for u in range(n_users) for t in range(int(rng.integers(1, 19)))]
    return pd.DataFrame(rows, columns=["u", "i", "ts"])


@pytest.mark.parametrize("decay", [1.0, 0.8])
def test_every_target_reads_its_whole_prefix_decayed_by_age(decay):
    """Window by window, each target's head is Σ decay**age · B_fold(user)[item] over every item before it."""
    train, n_items, length = _sequences(), 12, 4
    windows = causal_windows(train, length)
    rng = np.random.default_rng(1)
    folds = rng.normal(size=(3, n_items, n_items)).astype(np.float32)
    user_fold = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    term = HeadTerm(torch.from_numpy(folds.reshape(-1, n_items)), torch.from_numpy(user_fold),
                    torch.from_numpy(window_carries(windows, folds, user_fold, decay)), decay, 1.0)
    users, items, mask, targets = windows
    got = term.window_scores(torch.arange(len(users)), users, items, mask)
    checked = 0
    for u in range(9):
        seq = train.loc[train["u"] == u, "i"].to_numpy()  # rows are in time order already
        rows = np.flatnonzero(users.numpy() == u)[::-1]  # the user's windows, oldest first
        want_targets = [(r, t) for r in rows for t in range(length) if targets[r, t] >= 0]
        assert [int(targets[r, t]) for r, t in want_targets] == seq[1:].tolist()
        for j, (r, t) in enumerate(want_targets, start=1):  # target seq[j] reads seq[:j]
            want = sum(decay ** (j - 1 - m) * folds[user_fold[u], seq[m]] for m in range(j))
            np.testing.assert_allclose(got[r, t].numpy(), want, rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked == len(train) - 9


def test_out_of_fold_ease_never_sees_its_users_rows():
    x = interaction_matrix(*(np.random.default_rng(2).integers(0, n, 300) for n in (20, 15)), 20, 15)
    b, fold = out_of_fold_ease(x, 10.0, 4, seed=0)
    assert b.shape == (4, 15, 15) and set(fold.tolist()) == {0, 1, 2, 3}
    for f in range(4):
        keep = fold != f
        np.testing.assert_allclose(b[f], ease_weights(x[keep], 10.0), rtol=1e-4, atol=1e-5)
    # a user's own row does not move the weights that score it
    u = 0
    changed = x.tolil()
    changed[u] = 0
    changed[u, :5] = 1
    b2, _ = out_of_fold_ease(changed.tocsr(), 10.0, 4, seed=0)
    np.testing.assert_allclose(b2[fold[u]], b[fold[u]], rtol=1e-5, atol=1e-6)
    assert not np.allclose(b2[(fold[u] + 1) % 4], b[(fold[u] + 1) % 4])


def test_head_folds_below_two_is_a_config_error():
    with pytest.raises(ConfigError, match="train.head_folds must be >= 2"):
        SoraConfig().with_overrides(["train.head_folds=1"])


@pytest.mark.parametrize("ease_lambda", ["null", "10"])  # chosen on valid, or fixed: the decay is chosen either way
def test_causal_training_learns_the_head_weight_and_serves_it(tmp_path, ease_lambda):
    from sora.data.protocol import history_of, recency_ease_scores
    from sora.evaluation.evaluate import model_scores
    from sora.model.recommender import Recommender
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model
    from tests.conftest import make_dataset

    ds = make_dataset(n_users=30, n_items=40, per_user=10)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=3", "train.batch_size=64",
                                       "model.history_len=4", "split.mode=leave-last-out", "train.head_decays=[0.7]",
                                       "train.head_in_loss=true", "train.warmup_epochs=1", "train.head_folds=3",
                                       f"graph.ease_lambda={ease_lambda}"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    res = train_model(split, emb, ds.items, cfg, progress=False)
    rec = res.recommender
    learned = [r["head_weight"] for r in res.history if "head_weight" in r]
    assert len(learned) == len(res.history) and len(set(learned)) > 1  # the weight moves during training
    best = next(r for r in res.history if r["epoch"] == res.best_epoch)
    assert rec.alpha == pytest.approx(best["head_weight"]) and rec.alpha > 0
    assert rec.head_decay == 0.7  # the decay training used, not one chosen afterwards
    assert res.valid["ndcg@10"] == pytest.approx(rec.meta["valid"]["ndcg@10"])
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.alpha == pytest.approx(rec.alpha) and back.head_decay == 0.7
    assert back.config.train.head_in_loss
    users = split.test["u"].to_numpy()[:6]
    # served scores are the network plus the learned weight times recency-EASE on the prefix (full EASE)
    net = model_scores(back, split, "test", 0.0)(users)
    head = recency_ease_scores(np.asarray(back.ii, dtype=np.float32), 0.7)(users, [history_of(split, "test")[u]
                                                                                   for u in users])
    torch.testing.assert_close(model_scores(back, split, "test")(users), net + back.alpha * head, atol=1e-4, rtol=1e-4)



def test_set_training_keeps_the_head_mixed_in_afterwards(caplog):
    """train.head_in_loss is causal only: a random-split training says so and chooses the head's weight on valid."""
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model
    from tests.conftest import make_dataset

    ds = make_dataset(n_users=30, n_items=40, per_user=10)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=2", "train.batch_size=64",
                                       "model.history_len=4", "train.head_in_loss=true", "tune.grid=[]"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    res = train_model(split, emb, ds.items, cfg, progress=False)
    assert "alpha_grid" in res.recommender.meta and all("head_weight" not in r for r in res.history)
    assert "train.head_in_loss: off, it needs causal training" in caplog.text
