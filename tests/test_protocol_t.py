"""Protocol T (leave-last-out, next item) on hand-made data: ties, short users, prefixes, history scoring."""

import numpy as np
import pandas as pd
import pytest
import torch

from sora.config import SoraConfig, SplitConfig
from sora.data.contract import DataError, Dataset
from sora.data.protocol import history_of, recency_ease_scores, recency_matrix, sequences
from sora.data.split import (
    Split,
    global_temporal_cuts,
    global_temporal_labels,
    leave_last_out_labels,
    make_split,
)
from sora.evaluation.evaluate import (
    SEQUENCE_BASELINES,
    evaluate_history,
    evaluate_split,
    model_scores,
    run_baselines,
)
from sora.model.itemsim import ease_score_fn, ease_weights

LLO = SplitConfig(mode="leave-last-out")


def hand_dataset() -> Dataset:
    """a: 4 positives, the last two tied in time (file order i2, i1); b: 2 positives; c: 3 rows, one negative."""
    rows = [
        ("a", "i5", 5.0, 10), ("b", "i0", 4.0, 5), ("a", "i3", 4.0, 15),
        ("a", "i2", 5.0, 20), ("c", "i1", 5.0, 1), ("a", "i1", 4.0, 20),  # a's tie: i2 then i1 in the file
        ("b", "i4", 5.0, 6), ("c", "i2", 1.0, 2), ("c", "i3", 5.0, 3),
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(6)], "title": [f"t{k}" for k in range(6)]})
    return Dataset(inter, items)


def _items(split: Split, part: str, user: str) -> list[str]:
    df = split.part(part)
    return [split.item_ids[i] for i in df.loc[df["u"] == split.user_ids.index(user), "i"]]


def test_last_is_test_second_to_last_valid_ties_in_file_order():
    split = make_split(hand_dataset(), LLO)
    assert _items(split, "train", "a") == ["i5", "i3"]
    assert _items(split, "valid", "a") == ["i2"]  # tie at ts 20: i2 comes first in the file...
    assert _items(split, "test", "a") == ["i1"]   # ...so i1 is the last item, whatever the item ids say


def test_users_with_fewer_than_three_positives_only_train():
    split = make_split(hand_dataset(), LLO)
    assert _items(split, "train", "b") == ["i0", "i4"]
    assert _items(split, "train", "c") == ["i1", "i3"]  # the rating-1 row is not a positive
    for user in ("b", "c"):
        assert not _items(split, "valid", user) and not _items(split, "test", user)
    assert len(split.valid) == len(split.test) == 1


def test_labels_vectorised():
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert leave_last_out_labels(users).tolist() == [0, 1, 2, 0, 0, 0, 0, 1, 2]
    assert leave_last_out_labels(np.zeros(0, dtype=np.int64)).tolist() == []


def test_prefixes_are_train_then_valid_in_order_and_survive_save_load(tmp_path):
    split = make_split(hand_dataset(), LLO)
    split.save(tmp_path)
    for s in (split, Split.load(tmp_path)):
        a = s.user_ids.index("a")
        valid_hist, test_hist = history_of(s, "valid"), history_of(s, "test")
        assert [s.item_ids[i] for i in valid_hist[a]] == ["i5", "i3"]
        assert [s.item_ids[i] for i in test_hist[a]] == ["i5", "i3", "i2"]
        assert [s.item_ids[i] for i in sequences(s, "train", "valid", "test")[a]] == ["i5", "i3", "i2", "i1"]


def test_other_modes_unchanged_by_the_new_mode():
    ds = hand_dataset()
    temporal = make_split(ds, SplitConfig(mode="temporal"))
    # temporal still breaks time ties by item index (its historical order), unlike leave-last-out
    assert _items(temporal, "train", "a") == ["i5", "i3"]
    assert _items(temporal, "valid", "a") == ["i1"] and _items(temporal, "test", "a") == ["i2"]
    assert {p: len(temporal.part(p)) for p in ("train", "valid", "test")} == {"train": 4, "valid": 1, "test": 3}


def test_recency_matrix_weights_newest_highest_and_repeats_keep_newest():
    x = recency_matrix([np.array([3, 1, 3, 2]), np.array([], dtype=np.int64)], 5, 0.5).toarray()
    assert x[0].tolist() == pytest.approx([0, 0.25, 1.0, 0.5, 0])  # 3 seen at ages 3 and 1 → 0.5**1
    assert not x[1].any()
    assert recency_matrix([np.array([4, 0])], 5, 1.0).toarray()[0].tolist() == [1, 0, 0, 0, 1]


def test_recency_ease_with_decay_one_is_ease_on_the_prefix():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(6, 6))
    hist = [np.array([1, 4, 2])]
    x = np.zeros((1, 6))
    x[0, [1, 4, 2]] = 1
    got = recency_ease_scores(b, 1.0)(np.array([0]), hist)
    np.testing.assert_allclose(got.numpy(), (x @ b).astype(np.float32), rtol=1e-5)


def _next_item_dataset(n_users: int = 12, n_items: int = 10, length: int = 6) -> Dataset:
    """Each user walks items k, k+1, ... (mod I): the next item always follows the newest one."""
    rows = [(f"u{u}", f"i{(u + t) % n_items}", 5.0, 100 + t) for u in range(n_users) for t in range(length)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(n_items)], "title": "x"})
    return Dataset(inter, items)


def _follow_newest(split: Split):
    """A history model that puts the item after the newest history item first."""
    def score(users, hists):
        out = torch.zeros(len(users), split.num_items)
        for r, h in enumerate(hists):
            nxt = (int(split.item_ids[h[-1]][1:]) + 1) % split.num_items
            out[r, split.item_ids.index(f"i{nxt}")] = 1.0
        return out
    return score


def test_scoring_test_reads_the_valid_item_as_history():
    split = make_split(_next_item_dataset(), LLO)
    fn = _follow_newest(split)
    assert evaluate_history(fn, split, "valid", (1,))["hit@1"] == 1.0
    assert evaluate_history(fn, split, "test", (1,))["hit@1"] == 1.0  # only true if valid is in the prefix
    stale = lambda users: fn(users, [history_of(split, "valid")[u] for u in users])  # noqa: E731
    assert evaluate_split(stale, split, "test", (1,))["hit@1"] < 0.5  # its top item is the excluded valid one


class FakeRec:
    """Duck-typed Recommender: records what model_scores asks for."""

    def __init__(self, split):
        self.split, self.calls = split, []

    def score_users(self, users, alpha=None):
        return torch.zeros(len(users), self.split.num_items)

    def score_user_recent(self, u, recent, alpha=None):
        self.calls.append((u, recent, alpha))
        return torch.zeros(self.split.num_items)


def test_model_scores_folds_the_valid_item_in_for_test_only():
    split = make_split(_next_item_dataset(), LLO)
    rec = FakeRec(split)
    model_scores(rec, split, "valid")(np.arange(3))
    assert rec.calls == []
    model_scores(rec, split, "test", alpha=0.0)(np.array([2]))
    assert rec.calls == [(2, [int(split.valid.loc[split.valid["u"] == 2, "i"].iloc[0])], 0.0)]
    other = make_split(_next_item_dataset(), SplitConfig(mode="temporal"))
    model_scores(rec, other, "test")(np.array([1]))
    assert len(rec.calls) == 1  # other modes keep the fitted user vectors


def test_baselines_on_leave_last_out():
    split = make_split(_next_item_dataset(n_users=20, length=8), LLO)
    cfg = SoraConfig().with_overrides(["split.mode=leave-last-out", "graph.ease_lambda=1"])
    out = run_baselines(split, cfg, ("mostpop", "ease", "recency_ease"))
    assert set(out) == {"mostpop", "ease", "recency_ease"}
    assert out["recency_ease"]["decay"] < 1.0  # on a pure next-item walk, recency must help on valid
    assert out["recency_ease"]["ndcg@10"] >= out["ease"]["ndcg@10"]
    for m in out.values():
        assert 0.0 <= m["ndcg@10"] <= 1.0 and m["fit_seconds"] >= 0


def test_sequence_baselines_skip_other_modes(tiny_dataset):
    split = make_split(tiny_dataset, SplitConfig(mode="random"))
    assert run_baselines(split, SoraConfig(), SEQUENCE_BASELINES) == {}


def test_default_mode_baselines_unchanged(tiny_dataset):
    split = make_split(tiny_dataset, SplitConfig())
    cfg = SoraConfig()
    out = run_baselines(split, cfg, ("mostpop", "ease"))
    x = split.matrix("train")
    fn = ease_score_fn(x, ease_weights(x, out["ease"]["lambda"]))
    assert out["ease"]["ndcg@10"] == evaluate_split(fn, split, "test", cfg.eval.ks)["ndcg@10"]
    assert out["ease"]["valid_ndcg@10"] == evaluate_split(fn, split, "valid", (10,))["ndcg@10"]  # where λ was chosen


def test_causal_windows_see_only_earlier_items():
    from sora.training.prep import causal_windows

    train = pd.DataFrame({"u": [0, 0, 0, 1, 1, 2], "i": [5, 3, 4, 2, 1, 7], "ts": [1.0, 2.0, 2.0, 1.0, 0.0, 0.0]})
    users, items, mask, targets = causal_windows(train, 2)
    # user 0's sequence is 5, 3, 4 (time order, ties in row order); user 1's is 1, 2; user 2 has no target
    assert users.tolist() == [0, 1]
    assert items.tolist() == [[5, 3], [0, 1]] and mask.tolist() == [[True, True], [False, True]]
    assert targets.tolist() == [[3, 4], [-100, 2]]  # each item predicted from the ones before it
    users, items, mask, targets = causal_windows(train, 1)  # longer sequences are cut from the end
    assert users.tolist() == [0, 0, 1] and items.tolist() == [[3], [5], [1]] and targets.tolist() == [[4], [3], [2]]


@pytest.mark.parametrize("mode", ["leave-last-out", "global-temporal"])
def test_causal_training_gives_a_history_only_model(tmp_path, mode):
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model
    from tests.conftest import make_dataset

    ds = make_dataset(n_users=30, n_items=40, per_user=10)
    if mode == "global-temporal":  # users active side by side: each one's j-th event in the same period j
        rank = ds.interactions.groupby("user_id").cumcount().to_numpy()
        ds.interactions["timestamp"] = 880_000_000 + rank * 100 + np.arange(len(rank)) % 100
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=2", "train.batch_size=64",
                                       "model.history_len=4", f"split.mode={mode}"])
    assert cfg.causal_training  # both next-item protocols train causally by default
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    assert split.test["u"].nunique() > 1 and split.valid["u"].nunique() > 1
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    assert rec.user_tokens is None  # the user is read only through its history
    valid_item = int(split.valid["i"].iloc[0])
    u = int(split.valid["u"].iloc[0])
    hist = rec.history[u][rec.history_mask[u]].tolist()[::-1]  # oldest first
    rec.alpha = rec.beta = 0.0  # compare the Transformer paths alone (no item–item or transition head)
    # a known user with a recent event is exactly an anonymous history (no user token to shift)
    torch.testing.assert_close(rec.score_user_recent(u, [valid_item]), rec.score_history([*hist, valid_item]))
    assert torch.isfinite(model_scores(rec, split, "test")(np.array([u]))).all()
    # saved and loaded, the Transformer is the causal one again, and serving's NumPy path agrees with it
    from sora.model.recommender import Recommender

    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert back.model.fusion.causal
    back.alpha = back.beta = 0.0
    torch.testing.assert_close(back.score_history([*hist, valid_item]), rec.score_history([*hist, valid_item]))
    back.prepare_serving()
    torch.testing.assert_close(back.score_history([*hist, valid_item]), rec.score_history([*hist, valid_item]),
                               atol=1e-4, rtol=1e-4)


def test_decayed_head_is_recency_ease_on_the_prefix_and_survives_save_load(tmp_path):
    """With a recency decay chosen, the head of a known user reads train (+ valid for test) weighted by age."""
    from sora.model.recommender import Recommender
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model
    from tests.conftest import make_dataset

    ds = make_dataset(n_users=30, n_items=40, per_user=10)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=2", "train.batch_size=64",
                                       "model.history_len=4", "split.mode=leave-last-out", "train.head_decays=[0.7]"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    assert rec.head_decay == 0.7 and rec.head_weights is not None
    rec.save(tmp_path / "m")
    rec = Recommender.load(tmp_path / "m")
    assert rec.head_decay == 0.7
    ii = np.asarray(rec.ii, dtype=np.float32)
    users = split.test["u"].to_numpy()[:8]
    for part in ("valid", "test"):
        head = model_scores(rec, split, part, 1.0)(users) - model_scores(rec, split, part, 0.0)(users)
        want = recency_ease_scores(ii, 0.7)(users, [history_of(split, part)[u] for u in users])
        torch.testing.assert_close(head, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ global-temporal: one time cut for everyone

GT = SplitConfig(mode="global-temporal", ratios=(0.5, 0.25, 0.25))


def _timed_dataset() -> Dataset:
    """Timestamps 1..8 spread over users: a has history before every cut, b joins in valid, c only in test."""
    rows = [("a", "i0", 5.0, 1), ("a", "i1", 5.0, 2), ("b", "i2", 5.0, 3), ("a", "i3", 5.0, 4),
            ("a", "i4", 5.0, 5), ("b", "i5", 5.0, 6), ("a", "i2", 5.0, 7), ("b", "i1", 5.0, 8),
            ("c", "i0", 5.0, 8), ("c", "i1", 1.0, 1)]  # c's early row is a negative: c has no earlier history
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(6)], "title": [f"t{k}" for k in range(6)]})
    return Dataset(inter, items)


def test_global_temporal_cuts_everyone_at_the_same_time():
    split = make_split(_timed_dataset(), GT)
    # the positives' timestamps 1, 2, ..., 8, 8: the 0.5 and 0.75 quantiles cut at 5 and 7 (a tie: earlier part)
    assert split.train["ts"].max() == 5 and split.valid["ts"].between(6, 7).all() and (split.test["ts"] > 7).all()
    assert _items(split, "train", "a") == ["i0", "i1", "i3", "i4"] and _items(split, "train", "b") == ["i2"]
    assert _items(split, "valid", "a") == ["i2"] and _items(split, "valid", "b") == ["i5"]
    assert not _items(split, "test", "a") and _items(split, "test", "b") == ["i1"]
    assert not _items(split, "test", "c")  # c's only positive comes after the cut, with no training event
    b = split.user_ids.index("b")
    assert [split.item_ids[i] for i in history_of(split, "test")[b]] == ["i2", "i5"]  # train, then valid


def test_global_temporal_labels_need_a_training_event():
    users = np.array([0, 0, 1, 1, 2, 2])
    ts = np.array([1.0, 9.0, 5.0, 6.0, 8.0, 9.0])
    # the 0.5 / 0.75 quantiles cut at 7 and 8.75; user 2 has no event before the first cut: both dropped
    assert global_temporal_cuts(ts, (0.5, 0.25, 0.25)) == (7.0, 8.75)
    assert global_temporal_labels(users, ts, global_temporal_cuts(ts, (0.5, 0.25, 0.25))).tolist() == [0, 2, 0, 0, -1, -1]
    assert global_temporal_labels(np.zeros(0, np.int64), np.zeros(0), (0.0, 0.0)).tolist() == []


def test_global_temporal_is_a_next_item_protocol():
    ds = _next_item_dataset(n_users=20, length=8)  # every user at timestamps 100..107
    cfg = SoraConfig().with_overrides(["split.mode=global-temporal", "split.ratios=[0.6,0.2,0.2]",
                                       "graph.ease_lambda=1"])
    assert cfg.causal_training
    split = make_split(ds, cfg.split)
    assert len(split.valid) and len(split.test)
    out = run_baselines(split, cfg, ("ease", "recency_ease"))
    assert set(out) == {"ease", "recency_ease"} and "valid_ndcg@10" in out["ease"]  # read through the prefix
    # a model that follows the newest item ranks every test target first only if test reads the valid items
    got = evaluate_history(_follow_newest(split), split, "test", (10,))
    assert got["ndcg@10"] == pytest.approx(1.0)


def test_global_temporal_reads_any_epoch_unit():
    ds = _timed_dataset()
    ds.interactions["timestamp"] = ds.interactions["timestamp"] * 1000 + 1_430_000_000_000  # milliseconds
    split = make_split(ds, GT)
    ref = make_split(_timed_dataset(), GT)
    for part in ("train", "valid", "test"):
        assert split.part(part)[["u", "i"]].equals(ref.part(part)[["u", "i"]])


def test_global_temporal_without_spread_in_time_names_the_cut():
    from sora.training.prep import prepare_training

    ds = _timed_dataset()
    ds.interactions["timestamp"] = 5  # every event at one time: nothing lies after the first cut
    with pytest.raises(DataError, match="valid and test parts are empty.*timestamps must spread past the cuts.*1 "):
        make_split(ds, GT)
    split = make_split(_timed_dataset(), GT)
    split.valid = split.valid.iloc[:0]  # a split saved before that check: training still refuses it
    with pytest.raises(ValueError, match="valid split is empty.*timestamps must spread past the cut"):
        prepare_training(split, None, ds.items, SoraConfig().with_overrides(["split.mode=global-temporal"]),
                         torch.device("cpu"))
