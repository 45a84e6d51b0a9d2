import numpy as np
import pandas as pd
import pytest

from sora.config import SplitConfig
from sora.data.split import Split, make_split, ratio_counts


def _pairs(df):
    return set(zip(df["u"], df["i"], df["ts"], strict=True))


@pytest.mark.parametrize("mode", ["random", "temporal", "cold-item", "leave-last-out"])
def test_parts_are_disjoint_and_cover_positives(tiny_dataset, mode):
    split = make_split(tiny_dataset, SplitConfig(mode=mode))
    tr, va, te = (_pairs(split.part(p)) for p in ("train", "valid", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    n_pos = int((tiny_dataset.interactions["rating"] >= 3).sum())
    assert len(tr) + len(va) + len(te) == n_pos


@pytest.mark.parametrize("mode", ["random", "temporal", "cold-item", "leave-last-out", "global-temporal"])
def test_same_seed_same_split_and_row_order_does_not_matter(tiny_dataset, mode):
    if mode == "global-temporal":  # the fixture's users follow one another in time: interleave them, or the
        ts = tiny_dataset.interactions["timestamp"] - 880_000_000  # last users, with no history, leave test empty
        tiny_dataset.interactions["timestamp"] = 880_000_000 + (ts % 1000) * 1000 + ts // 1000
    a = make_split(tiny_dataset, SplitConfig(mode=mode, seed=7))
    shuffled = tiny_dataset.interactions.sample(frac=1.0, random_state=3)
    tiny_dataset.interactions = shuffled
    b = make_split(tiny_dataset, SplitConfig(mode=mode, seed=7))
    for p in ("train", "valid", "test"):
        assert _pairs(a.part(p)) == _pairs(b.part(p))


def test_different_seed_changes_random_split(tiny_dataset):
    a = make_split(tiny_dataset, SplitConfig(seed=1))
    b = make_split(tiny_dataset, SplitConfig(seed=2))
    assert _pairs(a.test) != _pairs(b.test)


def test_cold_items_absent_from_train(tiny_dataset):
    split = make_split(tiny_dataset, SplitConfig(mode="cold-item"))
    cold = set(split.cold_valid_items) | set(split.cold_test_items)
    assert cold and not (cold & set(split.train["i"]))
    assert set(split.test["i"]) <= set(split.cold_test_items)
    assert set(split.valid["i"]) <= set(split.cold_valid_items)
    assert not set(split.cold_valid_items) & set(split.cold_test_items)


def test_temporal_test_is_each_users_latest(tiny_dataset):
    split = make_split(tiny_dataset, SplitConfig(mode="temporal"))
    last_train = split.train.groupby("u")["ts"].max()
    first_test = split.test.groupby("u")["ts"].min()
    common = last_train.index.intersection(first_test.index)
    assert (last_train[common] <= first_test[common]).all()


def test_leave_last_out_holds_out_each_users_two_latest(tiny_dataset):
    # tiny_dataset has no time ties, so input order cannot matter here (tests/test_protocol_t.py covers ties)
    split = make_split(tiny_dataset, SplitConfig(mode="leave-last-out"))
    assert split.valid["u"].is_unique and split.test["u"].is_unique
    assert set(split.valid["u"]) == set(split.test["u"])
    last_train = split.train.groupby("u")["ts"].max()
    valid_ts, test_ts = split.valid.set_index("u")["ts"], split.test.set_index("u")["ts"]
    assert (last_train[valid_ts.index] <= valid_ts).all() and (valid_ts <= test_ts[valid_ts.index]).all()


def test_ratio_counts_follow_recbole_rounding():
    assert ratio_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert ratio_counts(5, (0.8, 0.1, 0.1)) == (3, 1, 1)   # 0.5 rounds up to one each while train keeps 2+
    assert ratio_counts(2, (0.8, 0.1, 0.1)) == (1, 0, 1)
    assert ratio_counts(1, (0.8, 0.1, 0.1)) == (1, 0, 0)   # a single positive only trains


def test_users_with_few_positives_only_train(tiny_dataset):
    inter = tiny_dataset.interactions
    extra = pd.DataFrame({"user_id": ["solo"], "item_id": ["i0"], "rating": [5.0], "timestamp": [1]})
    tiny_dataset.interactions = pd.concat([inter, extra], ignore_index=True)
    split = make_split(tiny_dataset, SplitConfig())
    solo = split.user_ids.index("solo")
    assert (split.train["u"] == solo).sum() == 1 and solo not in set(split.test["u"])


def test_threshold_none_keeps_everything(tiny_dataset):
    split = make_split(tiny_dataset, SplitConfig(rating_threshold=None))
    assert len(split.train) + len(split.valid) + len(split.test) == len(tiny_dataset.interactions)


def test_save_load_round_trip(tmp_path, tiny_dataset):
    split = make_split(tiny_dataset, SplitConfig(mode="cold-item"))
    split.save(tmp_path)
    again = Split.load(tmp_path)
    assert again.spec == split.spec and again.user_ids == split.user_ids and again.item_ids == split.item_ids
    for p in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(again.part(p), split.part(p))
    np.testing.assert_array_equal(again.cold_test_items, split.cold_test_items)
    assert again.spec.data_fingerprint == tiny_dataset.fingerprint()
