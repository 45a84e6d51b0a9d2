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
    from sora.gnn import GraphEncoder, TorchGraph
    from sora.model import HistoryFusion

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
