"""Checkpoint and resume (``train.checkpoint_every``): a killed training run goes on where it stopped and
ends with the model an uninterrupted run gives; a kill -9 of a real ``sora train`` process is the slow tier."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sora import stages
from sora.config import SoraConfig
from sora.model.text import HashEncoder
from sora.training.checkpoint import Checkpointer, checkpoint_uri
from sora.training.train import prepare, train_model
from tests.conftest import make_dataset

SMALL = ["text.model=hash:16", "model.dim=16", "train.max_epochs=6", "train.batch_size=128", "graph.item_knn_k=3",
         "model.history_len=4", "train.device=cpu", "train.warmup_epochs=1", "train.min_epochs=1"]


class Killed(Exception):
    """Stands in for a preemption right after a checkpoint was written."""


def _train(cfg, ds, checkpoint=None):
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    return train_model(split, emb, ds.items, cfg, progress=False, checkpoint=checkpoint)


def _scores(result):
    rec = result.recommender
    return rec.score_users(np.arange(rec.num_users), alpha=0.0)


@pytest.mark.parametrize("kill_after", [2, 7])  # mid trial 1; after trial 1 ended (trial 2's first epoch)
def test_a_killed_run_resumes_and_ends_with_the_uninterrupted_model(tmp_path, monkeypatch, caplog, kill_after):
    ds = make_dataset(n_users=50, n_items=80)
    cfg = SoraConfig().with_overrides(SMALL)  # two tuning trials (the temperature grid)
    straight = _train(cfg, ds)

    saves = []
    real_save = Checkpointer.save

    def save_then_die(self, epoch, state):
        real_save(self, epoch, state)
        saves.append((self.tag, epoch))
        if len(saves) == kill_after:
            raise Killed

    ckpt = Checkpointer(str(tmp_path / "model.checkpoint"), "", every=1)
    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Killed):
        _train(cfg, ds, ckpt)
    monkeypatch.setattr(Checkpointer, "save", real_save)
    assert list((tmp_path / "model.checkpoint").iterdir()), "the killed run left its checkpoint"

    with caplog.at_level(logging.WARNING, logger="sora.training.loop"):
        resumed = _train(cfg, ds, ckpt)
    tag, epoch = saves[-1]
    assert f"resumed from epoch {epoch}" in caplog.text
    # deterministic on the CPU: the resumed run is the uninterrupted one, epoch for epoch
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert resumed.best_epoch == straight.best_epoch
    assert abs(resumed.valid["ndcg@10"] - straight.valid["ndcg@10"]) <= 1e-4
    torch.testing.assert_close(_scores(resumed), _scores(straight), rtol=0, atol=1e-5)


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, caplog):
    ds = make_dataset(n_users=40, n_items=60)
    cfg = SoraConfig().with_overrides([*SMALL, "tune.grid=[]", "train.temperature=1.0", "train.max_epochs=3"])
    ckpt = Checkpointer(str(tmp_path / "ck"), "", every=1)
    _train(cfg, ds, ckpt)  # leaves the last epoch's checkpoint (nothing cleared it)
    other = cfg.with_overrides(["train.lr=0.005"])
    with caplog.at_level(logging.INFO):
        _train(other, ds, ckpt)
    assert "resumed from epoch" not in caplog.text
    assert "another config or data" in caplog.text


def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ck"), "fp", every=1)
    ckpt.save(1, {"history": [1]})
    (tmp_path / "ck" / "trial-1-epoch-00002.pt").write_bytes(b"half a file")  # a torn write from elsewhere
    state = ckpt.latest()
    assert state is not None and state["epoch"] == 1 and state["history"] == [1]


def test_stage_train_removes_the_checkpoint_once_the_model_is_written(tmp_path):
    ds = make_dataset(n_users=40, n_items=60)
    data = tmp_path / "data"
    ds.save(data, fmt="csv")
    cfg = SoraConfig().with_overrides([*SMALL, "tune.grid=[]", "train.temperature=1.0", "train.max_epochs=2"])
    prepared = stages.prepare(str(data), cfg, str(tmp_path / "prepared"))
    emb = tmp_path / "emb.parquet"
    stages.embed(prepared, cfg, str(emb), encoder=HashEncoder(16))
    out = tmp_path / "model"
    stages.train(stages.Prepared.load(tmp_path / "prepared"), str(emb), cfg, str(out), progress=False)
    assert (out / "config.json").exists()
    assert not Path(checkpoint_uri(str(out))).exists()


# ------------------------------------------------------------------------------------------ kill -9, real process

def _sora(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "sora.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_kill_9_of_sora_train_mid_epoch_then_the_same_command_resumes(tmp_path):
    ds = make_dataset(n_users=120, n_items=150, per_user=20)
    data = tmp_path / "data"
    ds.save(data, fmt="csv")
    sets = [f"--set={s}" for s in ["text.model=hash:16", "model.dim=16", "train.max_epochs=12", "train.batch_size=64",
                                   "graph.item_knn_k=3", "model.history_len=4", "train.device=cpu", "tune.grid=[]",
                                   "train.temperature=1.0", "train.warmup_epochs=1", "train.min_epochs=12"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def train(out):
        return _sora("train", "--data", str(data), "--out", str(out), *sets, env=env)

    straight = train(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stdout.read()[-3000:]

    out, ck = tmp_path / "model", Path(checkpoint_uri(str(tmp_path / "model")))
    proc = train(out)
    deadline = time.monotonic() + 300
    # kill -9 once a few epochs are checkpointed, in the middle of the next one
    while time.monotonic() < deadline and proc.poll() is None:
        done = sorted(ck.glob("trial-1-epoch-*.pt")) if ck.exists() else []
        if done and int(done[-1].stem.rsplit("-", 1)[1]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(sorted(ck.glob("trial-1-epoch-*.pt"))[-1].stem.rsplit("-", 1)[1])
    assert not out.exists(), "a killed run left a model at --out"

    again = train(out)
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log[-3000:]
    assert f"resumed from epoch {killed_at}" in log
    assert (out / "config.json").exists() and not ck.exists()
    from sora.model.recommender import Recommender

    a, b = Recommender.load(tmp_path / "straight"), Recommender.load(out)
    assert abs(a.meta["valid"]["ndcg@10"] - b.meta["valid"]["ndcg@10"]) <= 1e-4, (a.meta["valid"], b.meta["valid"])
    assert a.meta["best_epoch"] == b.meta["best_epoch"]
    torch.testing.assert_close(b.user_vectors, a.user_vectors, rtol=0, atol=1e-5)
