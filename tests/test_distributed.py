"""Data-parallel training under torchrun (2 CPU processes, gloo): both ranks end with the same weights, and
those are the weights one process gets on the whole batches (one bucketed all-reduce a step, each rank's
loss weighed by its share of the batch)."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, os.environ["SORA_TESTS_ROOT"])
    from tests.conftest import make_dataset
    from sora.config import SoraConfig
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model

    from tests.test_distributed import CONFIG

    dist.init_process_group("gloo")
    ds = make_dataset(n_users=40, n_items=60)
    cfg = SoraConfig().with_overrides(CONFIG)
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    flat = torch.cat([p.detach().flatten() for p in rec.model.parameters()] + [rec.user_vectors.flatten()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        print("RANKS_AGREE" if same else "RANKS_DIFFER", float((gathered[0] - gathered[1]).abs().max()))
        torch.save(flat, os.environ["SORA_DDP_OUT"])
    dist.destroy_process_group()
''')


CONFIG = ["text.model=hash:16", "model.dim=8", "train.max_epochs=2", "train.batch_size=64", "model.history_len=4",
          "train.device=cpu", "model.dropout=0.0"]


def _single_process_weights():
    import torch

    from sora.config import SoraConfig
    from sora.model.text import HashEncoder
    from sora.training.train import prepare, train_model
    from tests.conftest import make_dataset

    ds = make_dataset(n_users=40, n_items=60)
    cfg = SoraConfig().with_overrides(CONFIG)
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    rec = train_model(split, emb, ds.items, cfg, progress=False).recommender
    return torch.cat([p.detach().flatten() for p in rec.model.parameters()] + [rec.user_vectors.flatten()])


def test_two_ranks_agree_on_final_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "SORA_TESTS_ROOT": root, "OMP_NUM_THREADS": "1", "SORA_DDP_OUT": str(tmp_path / "w.pt")}
    port = free_port()  # torchrun's static rendezvous needs a concrete port
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_addr=127.0.0.1", f"--master_port={port}",
                          str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RANKS_AGREE" in out.stdout, out.stdout[-2000:]
    import torch

    ddp, single = torch.load(tmp_path / "w.pt"), _single_process_weights()
    # summation order differs (two half batches reduced vs one batch): rounding, nothing more
    torch.testing.assert_close(ddp, single, rtol=1e-3, atol=1e-4)
