"""GPU tier: training and scoring on CUDA. Skipped with a reason where CUDA is absent."""

import numpy as np
import pytest
import torch

from sora.config import SoraConfig
from sora.text import HashEncoder
from sora.train import prepare, resolve_device, train_model
from tests.conftest import make_dataset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="CUDA is not available on this machine")]


def test_train_on_cuda_matches_cpu_quality():
    assert resolve_device("auto").type == "cuda"
    ds = make_dataset(n_users=60, n_items=120)
    results = {}
    for device in ("cpu", "cuda"):
        cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=4",
                                           "train.batch_size=128", f"train.device={device}"])
        split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
        results[device] = train_model(split, emb, ds.items, cfg, progress=False)
    rec = results["cuda"].recommender
    assert rec.user_vectors.device.type == "cpu"  # fitted vectors come back to the CPU for serving
    assert np.isfinite(rec.score_users(np.arange(rec.num_users)).numpy()).all()
    assert abs(results["cuda"].valid["ndcg@10"] - results["cpu"].valid["ndcg@10"]) < 0.15
