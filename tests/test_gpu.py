"""GPU tier: propagation, training and scoring on CUDA, checked against the CPU. Skipped with a reason without CUDA.

Run it on a GPU machine with ``python -m pytest -m gpu -rs tests/test_gpu.py`` (README, "GPU tier").
"""

import numpy as np
import pytest
import torch

from sora.config import SoraConfig
from sora.model.gnn import GraphEncoder, TorchGraph
from sora.model.text import HashEncoder
from sora.training.device import cuda_problem
from sora.training.train import prepare, resolve_device, train_model
from tests.conftest import make_dataset
from tests.test_gnn import _inputs, _random_graph, _run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="CUDA is not available on this machine")]

# dropout 0: CPU and CUDA then consume the same random streams (all sampling uses one CPU generator)
SMALL = ["text.model=hash:16", "model.dim=16", "train.max_epochs=3", "train.batch_size=128", "model.dropout=0.0",
         "graph.item_knn_k=3", "model.history_len=4"]


def test_auto_picks_cuda_when_the_training_path_works():
    assert cuda_problem() is None
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"


def test_propagation_on_cuda_equals_dgl_on_cpu():
    g = _random_graph(seed=7)
    enc = GraphEncoder(g.canonical_etypes, 3, 0.4)
    hu, hi = _inputs(g.num_nodes("user"), g.num_nodes("item"))
    ref = _run(enc, g, hu, hi)
    tg = TorchGraph.from_dgl(g).to("cuda")
    hu_c = hu.detach().cuda().requires_grad_()
    hi_c = hi.detach().cuda().requires_grad_()
    out_u, out_i = enc(tg, hu_c, hi_c)
    ((out_u ** 2).sum() + (out_i * torch.arange(out_i.shape[1], device="cuda")).sum()).backward()
    for a, b in zip(ref, (out_u, out_i, hu_c.grad, hi_c.grad), strict=True):
        assert float((a - b.detach().cpu()).abs().max()) <= 1e-5


def test_train_on_cuda_gives_the_cpu_scores():
    ds = make_dataset(n_users=60, n_items=120)
    results = {}
    for device in ("cpu", "cuda"):
        cfg = SoraConfig().with_overrides([*SMALL, f"train.device={device}"])
        split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
        results[device] = train_model(split, emb, ds.items, cfg, progress=False)
    cpu, cuda = results["cpu"].recommender, results["cuda"].recommender
    assert cuda.user_vectors.device.type == "cpu"  # fitted vectors come back to the CPU for serving
    info = cuda.meta["device"]
    assert info["type"] == "cuda" and info["name"] and info["memory_gb"] > 0 and info["peak_memory_gb"] > 0
    users = np.arange(cpu.num_users)
    s_cpu, s_cuda = cpu.score_users(users, alpha=0.0), cuda.score_users(users, alpha=0.0)
    assert np.isfinite(s_cuda.numpy()).all()
    # Same seeds and random streams (every draw comes from one CPU generator): only the summation order
    # differs between the devices. Before the item vectors' bias and the attention keys' bias were held at
    # zero, AdamW walked them on rounding noise (their gradient is exactly zero in exact arithmetic) and every
    # score of a user moved by up to 0.39; rankings were unaffected, but this comparison failed.
    assert cuda.meta.get("tuning") is None or [t["overrides"] for t in cuda.meta["tuning"]] == \
        [t["overrides"] for t in cpu.meta["tuning"]]
    torch.testing.assert_close(s_cuda, s_cpu, rtol=1e-3, atol=1e-3)
    assert abs(results["cuda"].valid["ndcg@10"] - results["cpu"].valid["ndcg@10"]) < 0.02


def test_pair_user_vectors_on_cuda_equal_the_cpu_shared_pass():
    """On CUDA every (user, target) pair gets its own Transformer pass (no host sync); the CPU shares one pass
    per user whose target is outside its history. Both are the same vectors."""
    from sora.config import ModelConfig
    from sora.model.network import SoraModel
    from sora.training.losses import batch_user_vectors

    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, history_len=4, dropout=0.0, anonymous_prob=0.0, use_text=False,
                      transformer_layers=1)
    model = SoraModel(cfg, 30, 40, 0, torch.ones(40, dtype=torch.bool)).eval()
    g_user, g_item = torch.randn(30, 16), torch.randn(40, 16)
    hist = torch.randint(0, 40, (30, 4))
    hmask = torch.rand(30, 4) > 0.3
    u = torch.randint(0, 30, (200,))
    i = torch.where(torch.rand(200) < 0.5, hist[u, 0], torch.randint(0, 40, (200,)))  # half inside their history
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cpu = batch_user_vectors(model, g_user, g_item, hist, hmask, u, i, gen)
        dev = [t.cuda() for t in (g_user, g_item, hist, hmask, u, i)]
        cuda = batch_user_vectors(model.cuda(), *dev, torch.Generator().manual_seed(1))
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-5)


def test_valid_ranking_on_cuda_equals_the_host_ranking():
    import scipy.sparse as sp

    from sora.evaluation.metrics import DeviceRanker, evaluate_scores

    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.standard_normal((300, 500)).astype(np.float32))
    eu, ei = rng.integers(0, 300, 900), rng.integers(0, 500, 900)
    ex = sp.random(300, 500, density=0.05, random_state=2, format="csr")
    ref = evaluate_scores(lambda b: scores[torch.as_tensor(b)], eu, ei, 500, (10, 20), exclude=ex)
    gpu_scores = scores.cuda()
    got = DeviceRanker(eu, ei, 500, (10, 20), torch.device("cuda"), exclude=ex).evaluate(lambda b: gpu_scores[b])
    assert got == ref



@pytest.mark.parametrize("rows_per_chunk", [None, 64])  # the accelerator's one chunk, and several
def test_fused_softmax_on_cuda_equals_the_cpu_and_holds_float32_under_autocast(monkeypatch, rows_per_chunk):
    """The fused full softmax (sora.training.softmax) on CUDA: the CPU's loss and gradients, and float32
    inside a bf16 autocast region (train.amp)."""
    from sora.training import softmax
    from sora.training.softmax import IGNORE, softmax_cross_entropy

    gen = torch.Generator().manual_seed(3)
    b, d, n = 300, 16, 5000
    h, w = torch.randn(b, d, generator=gen), torch.randn(n, d, generator=gen)
    target = torch.randint(0, n, (b,), generator=gen)
    target[::5] = IGNORE
    allowed = torch.rand(n, generator=gen) > 0.2
    allowed[target.clamp(min=0)] = True

    def run(device, amp=False):
        hh, ww = (t.to(device).requires_grad_() for t in (h, w))
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = softmax_cross_entropy(hh, ww, target.to(device), allowed.to(device))
        loss.backward()
        return loss.detach().cpu(), hh.grad.cpu(), ww.grad.cpu(), loss.dtype

    cpu = run("cpu")
    if rows_per_chunk is not None:
        monkeypatch.setattr(softmax, "chunk_rows", lambda num_items, device: rows_per_chunk)
    for amp in (False, True):
        *got, dtype = run("cuda", amp)
        assert dtype == torch.float32
        for c, g in zip(cpu[:3], got, strict=True):
            torch.testing.assert_close(g, c, rtol=1e-4, atol=1e-5)
