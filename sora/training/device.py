"""Which device trains (DESIGN.md §5.5): ``train.device`` = auto | cpu | cuda.

``auto`` picks CUDA only when the whole training path works there (a tiny propagation, Transformer
step and backward pass are tried once), so a machine whose CUDA stack is broken trains on the CPU
with a warning instead of crashing. ``cuda`` without CUDA is a usage error raised before any work.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``train.device`` → a torch device; ValueError (CLI exit 2) naming the key when it cannot be had."""
    if name not in DEVICES:
        raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device=cuda but CUDA is not available on this machine (torch {torch.__version__}, "
                             f"built for CUDA {torch.version.cuda or 'none'}); use train.device=auto or cpu")
        return torch.device("cuda")
    if torch.cuda.is_available():
        problem = cuda_problem()
        if problem is None:
            return torch.device("cuda")
        log.warning("train.device=auto: CUDA is present but the training path fails there (%s); training on CPU",
                    problem)
    return torch.device("cpu")


@functools.lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """None when a tiny Sora training step (sparse propagation, Transformer, backward) runs on CUDA, else why not."""
    from sora.model.gnn import GraphEncoder, TorchGraph
    from sora.model.network import HistoryFusion

    try:
        dev = torch.device("cuda")
        ui = ("user", "interacts", "item")
        graph = TorchGraph.from_edges(2, 3, {ui: (torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]),
                                                 torch.ones(3))}).to(dev)
        h_user = torch.randn(2, 8, device=dev, requires_grad=True)
        h_item = torch.randn(3, 8, device=dev)
        g_user, g_item = GraphEncoder([ui], 2)(graph, h_user, h_item)
        fusion = HistoryFusion(8, 2, 1, 2, 0.0).to(dev)
        out = fusion(g_user, g_item[torch.tensor([[0, 1], [2, 0]], device=dev)],
                     torch.ones(2, 2, dtype=torch.bool, device=dev))
        out.sum().backward()
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # any failure means "not usable for training", whatever raised it
        return f"{type(exc).__name__}: {exc}"


def device_info(device: torch.device) -> dict[str, Any]:
    """What trained the model, for the log and ``rec.meta["device"]``."""
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 2), cuda=torch.version.cuda,
                    capability=f"{props.major}.{props.minor}")
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def peak_device_memory_gb(device: torch.device) -> float | None:
    """Peak memory torch allocated on a CUDA device during this process (None on CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On the CPU, torch's deterministic algorithms for the duration (the previous setting comes back after).

    Without them the backward of indexed gathers accumulates in thread order, so two runs of one seed
    with 2 threads drift apart by float rounding and can stop at another epoch; with them they agree
    bit for bit, at no measured cost (ML-100K epochs, 2 cores). CUDA keeps torch's default: its
    deterministic kernels need ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts, and cost speed.
    """
    if device.type != "cpu":
        yield
        return
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def training_memory_parts(num_users: int, num_items: int, num_pairs: int, cfg) -> dict[str, int]:
    """Bytes the training device holds at its peak, by part (an upper-side estimate; ``cfg`` resolved).

    Letters: U users, I items, P training pairs, D dim, T text dim (384), B batch, L history length.
    """
    mc, tc, gc = cfg.model, cfg.train, cfg.graph
    d, b, n_hist = mc.dim, tc.batch_size, mc.history_len
    nodes = num_users + num_items
    # user–item edges both ways, item↔item neighbours both ways (text kNN, co-occurrence), user↔user
    edges = 2 * num_pairs + 2 * num_items * (gc.item_knn_k + gc.cooccur_k) + 2 * num_users * gc.user_knn_k
    layers = max(mc.num_layers, 0)
    logits_cols = num_items if tc.loss == "softmax" and num_items <= tc.full_softmax_max_items else b
    parts = {
        "graph (A and Aᵀ, CSR, per-edge slots)": edges * (2 * 12 + 2 * 8 + 4) + 2 * 8 * (nodes + 1),
        "id embeddings + AdamW state (U+I)·D·4·4": nodes * d * 4 * 4,
        "text (I·T) and its projections": num_items * 384 * 4 + 4 * 384 * d * 4,
        "propagation activations (U+I)·D·(layers+2)·2": nodes * d * 4 * (layers + 2) * 2,
        f"logits B·{'I' if logits_cols == num_items else 'B'} (forward, softmax, grad)": b * logits_cols * 4 * 3,
        "Transformer activations B·(L+1)·D·~24 per layer": b * (n_hist + 1) * d * 4 * 24 * max(mc.transformer_layers or 1, 1),
        "pairs and histories": num_pairs * 16 + num_users * n_hist * 9,
        "valid ranking batch": min(num_users, max(1, 250_000_000 // max(num_items, 1))) * num_items * 4 * 2,
    }
    return parts


def check_training_memory(device: torch.device, parts: dict[str, int]) -> None:
    """ValueError (exit 2) before any work when ``parts`` cannot fit the device, naming the largest parts.

    Enforced on CUDA (free memory as the driver reports it); on the CPU the estimate is only logged, since
    the operating system's accounting (swap, overcommit) makes a refusal there a guess.
    """
    need = sum(parts.values())
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    detail = ", ".join(f"{name} {size / 2**30:.2f} GiB" for name, size in top)
    if device.type != "cuda":
        log.info("training memory estimate %.2f GiB (%s)", need / 2**30, detail)
        return
    free, total = torch.cuda.mem_get_info(device)
    if need > free:
        raise ValueError(f"training needs ~{need / 2**30:.1f} GiB on {device} but {free / 2**30:.1f} of "
                         f"{total / 2**30:.1f} GiB are free; largest parts: {detail}. Lower model.dim or "
                         f"train.batch_size, train.full_softmax_max_items (sampled softmax), or train on more GPUs")
