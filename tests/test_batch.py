"""Offline batch scoring (issue 15, deliverable 4): `sora batch-recommend` and :func:`sora.serving.batch.batch_recommend`."""

import numpy as np
import pandas as pd
import pytest

from sora.cli import main
from sora.model.recommender import Recommender
from sora.serving.batch import UnknownUsersError, batch_recommend
from tests.conftest import train_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("batch") / "model", n_users=25, n_items=30)


@pytest.fixture(scope="module")
def rec(model_dir):
    return Recommender.load(model_dir)


def test_every_user_matches_recommend(rec, tmp_path):
    out = tmp_path / "deep" / "top.parquet"
    stats = batch_recommend(rec, "all", 5, str(out), batch_size=7, progress=False)
    df = pd.read_parquet(out)
    assert list(df.columns) == ["user_id", "rank", "item_id", "score"]
    assert str(df["rank"].dtype) == "int32" and str(df["score"].dtype) == "float32"
    assert stats.users == rec.num_users and stats.rows == len(df) == 5 * rec.num_users
    assert stats.users_per_s > 0 and stats.batch_size == 7
    for user in ("u0", "u7", "u24"):
        got = df[df.user_id == user].sort_values("rank")
        want = rec.recommend(user, k=5)
        assert list(got["item_id"]) == [w["item_id"] for w in want]
        assert np.allclose(got["score"], [w["score"] for w in want], atol=1e-5)
        assert list(got["rank"]) == [1, 2, 3, 4, 5]


def test_batch_size_does_not_change_the_answer(rec, tmp_path):
    batch_recommend(rec, "all", 4, str(tmp_path / "a.parquet"), batch_size=1, progress=False)
    batch_recommend(rec, "all", 4, str(tmp_path / "b.parquet"), batch_size=1000, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet"))


def test_k_larger_than_unseen_items_gives_fewer_rows(rec, tmp_path):
    stats = batch_recommend(rec, ["u1"], 1000, str(tmp_path / "t.parquet"), progress=False)
    df = pd.read_parquet(tmp_path / "t.parquet")
    assert len(df) == stats.rows == rec.num_items - rec.seen[rec.user_index["u1"]].nnz
    assert not set(df["item_id"]) & {rec.item_ids[i] for i in rec.seen[rec.user_index["u1"]].indices}


def test_unknown_users_are_reported_not_dropped(rec, tmp_path):
    with pytest.raises(UnknownUsersError) as err:
        batch_recommend(rec, ["u1", "ghost", "u2", "phantom"], 3, str(tmp_path / "x.parquet"), progress=False)
    assert err.value.unknown == ["ghost", "phantom"] and "2 of 4" in str(err.value)
    assert not (tmp_path / "x.parquet").exists()
    stats = batch_recommend(rec, ["u1", "ghost"], 3, str(tmp_path / "x.parquet"), skip_unknown=True, progress=False)
    assert stats.users == 1 and stats.skipped_unknown == ["ghost"]
    assert set(pd.read_parquet(tmp_path / "x.parquet")["user_id"]) == {"u1"}


def test_cli(model_dir, tmp_path, capsys):
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu3\nu4\n")
    out = tmp_path / "cli.parquet"
    assert main(["batch-recommend", "--model", str(model_dir), "--users", str(users), "-k", "3", "--out", str(out),
                 "--no-progress"]) == 0
    assert "users/s" in capsys.readouterr().out
    assert len(pd.read_parquet(out)) == 6
    lines = tmp_path / "users.txt"
    lines.write_text("u3\nnobody\n")
    assert main(["batch-recommend", "--model", str(model_dir), "--users", str(lines), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "users: 1 of 2 user ids are unknown" in err and "'nobody'" in err
    assert main(["batch-recommend", "--model", str(model_dir), "--users", str(lines), "--out", str(out),
                 "--skip-unknown", "--no-progress", "--json"]) == 0
    assert '"skipped_unknown_count": 1' in capsys.readouterr().out
    assert main(["batch-recommend", "--model", str(model_dir), "-k", "0", "--out", str(out)]) == 2
