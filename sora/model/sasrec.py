"""SASRec (Kang & McAuley 2018): an ids-only causal Transformer over a user's item sequence, the
Protocol T baseline (DESIGN.md §4). Pure torch, no DGL.

Trained as in "gSASRec"/"SASRec with cross-entropy" (Petrov & Macdonald 2023; Klenitskiy & Vasilev
2023): at every position of every training sequence the next item is the target of a full softmax over
the catalogue (not BCE with one sampled negative), which is what lifts SASRec above EASE. The output
layer shares the item embedding. Items are indices shifted by one inside the model; 0 is padding, on the
left, so the newest item always sits at the last position. Early stopping reads a validation callback
(valid NDCG@10 in :func:`sora.evaluation.evaluate.run_baselines`).

Letters: B batch of sequences, L max_len, D dim, I items, N real (non-padding) positions.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class SASRecConfig:
    #: Newest items read per sequence; longer training sequences are cut into windows (every target kept).
    max_len: int = 50
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    #: Small batches: ML-100K gives ~2k windows, and more steps per epoch converge in fewer epochs on CPU.
    batch_size: int = 32
    max_epochs: int = 100
    #: Validations without improvement before stopping (one validation every ``eval_every`` epochs).
    patience: int = 10
    eval_every: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_len", "dim", "blocks", "heads", "batch_size", "max_epochs", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"SASRecConfig.dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SASRecConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("SASRecConfig.lr must be > 0 and weight_decay >= 0")


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: causal self-attention, then a position-wise feed-forward layer."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """x (B, L, D); blocked (B·heads, L, L) True where a query may not attend to a key."""
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=blocked, need_weights=False)[0])
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(nn.Module):
    def __init__(self, num_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.cfg, self.num_items = cfg, num_items
        self.item_emb = nn.Embedding(num_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.item_emb.weight, std=cfg.dim ** -0.5)
        nn.init.normal_(self.pos_emb.weight, std=cfg.dim ** -0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.blocks))
        self.ln = nn.LayerNorm(cfg.dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, L) item indices + 1, left-padded with 0 → hidden states (B, L, D); position t sees items ≤ t."""
        B, L = seq.shape
        real = seq > 0
        x = self.item_emb(seq) + self.pos_emb.weight[-L:][None]  # newest item always at the last position
        x = self.drop(x) * real[..., None]
        idx = torch.arange(L, device=seq.device)
        future = idx[None, :] > idx[:, None]  # (L, L) key after query
        # a padding key is blocked, except on the diagonal so that padding queries keep one key (no NaN)
        blocked = future[None] | (~real[:, None, :] & ~torch.eye(L, dtype=torch.bool, device=seq.device)[None])
        blocked = blocked.repeat_interleave(self.cfg.heads, dim=0)  # (B·heads, L, L)
        for block in self.blocks:
            x = block(x, blocked) * real[..., None]
        return self.ln(x)

    def item_weights(self) -> torch.Tensor:
        """(I, D) output weights: the item embeddings (shared with the input)."""
        return self.item_emb.weight[1:]

    @torch.no_grad()
    def score(self, histories: list[np.ndarray]) -> torch.Tensor:
        """(B, I) next-item scores for B histories (item indices, oldest first; the newest max_len are read)."""
        self.eval()
        seq = pad_left([np.asarray(h)[-self.cfg.max_len:] + 1 for h in histories], self.cfg.max_len)
        device = self.item_emb.weight.device
        h = self(torch.from_numpy(seq).to(device))[:, -1]  # (B, D)
        return (h @ self.item_weights().T).cpu()


def pad_left(rows: list[np.ndarray], length: int, value: int = 0) -> np.ndarray:
    """(B, length) int64, each row's values right-aligned (the newest at the end)."""
    out = np.full((len(rows), length), value, dtype=np.int64)
    for r, row in enumerate(rows):
        if len(row):
            out[r, length - len(row):] = row
    return out


def training_windows(sequences: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, L) (item + 1, 0 = pad) and targets (N, L) (item, -100 = none) of next-item training.

    A sequence s gives inputs s[:-1] and targets s[1:]; longer than ``max_len`` it is cut into windows from
    the end, so every next item is a target exactly once.
    """
    inputs, targets = [], []
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        for end in range(len(s) - 1, 0, -max_len):
            start = max(0, end - max_len)
            inputs.append(s[start:end] + 1)
            targets.append(s[start + 1:end + 1])
    return pad_left(inputs, max_len), pad_left(targets, max_len, value=-100)


@dataclass
class SASRecResult:
    model: SASRec
    best_epoch: int
    best_valid: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def fit_sasrec(sequences: list[np.ndarray], num_items: int, cfg: SASRecConfig,
               validate: Callable[[SASRec], float], device: str = "cpu") -> SASRecResult:
    """Train on the training ``sequences`` (one per user, oldest first), keep the epoch with the best ``validate``.

    ``validate(model)`` returns the selection metric (higher is better, e.g. valid NDCG@10).
    """
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    inputs, targets = (torch.from_numpy(a) for a in training_windows(sequences, cfg.max_len))
    if len(inputs) == 0:
        raise ValueError("SASRec needs at least one training sequence with two or more items")
    model = SASRec(num_items, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_metric, best_epoch, best_state, bad = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = torch.randperm(len(inputs), generator=gen)
        total, count = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            inp, tgt = inputs[idx].to(device), targets[idx].to(device)
            keep = tgt >= 0  # (B, L)
            h = model(inp)[keep]  # (N, D)
            loss = F.cross_entropy(h @ model.item_weights().T, tgt[keep])  # full softmax over I items
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss) * int(keep.sum())
            count += int(keep.sum())
        record = {"epoch": epoch, "loss": total / max(count, 1)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            metric = validate(model)
            record["valid"] = metric
            if metric > best_metric:
                best_metric, best_epoch, best_state, bad = metric, epoch, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
            log.info("sasrec epoch %d loss %.4f valid %.4f (best %.4f @ %d)", epoch, record["loss"], metric,
                     best_metric, best_epoch)
        history.append(record)
        if bad >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return SASRecResult(model, best_epoch, best_metric, time.perf_counter() - start, history)
