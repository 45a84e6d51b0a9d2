"""Training, part 1 of 3: preparation — everything built once before the first epoch (DESIGN.md §5.5).

:func:`prepare_training` turns a split (+ item embeddings) into a :class:`Prepared`: the (U, I)
training matrix (built once here and shared by every later stage), the graph as a
:class:`~sora.model.gnn.TorchGraph` on the training device, history tensors, the logQ popularity
correction, the item–item head and the parts of the fitted model that never change. Each stage is
timed and logged with the process's peak memory (``Prepared.stages``); none is quadratic in users
or items in memory: kNN and co-occurrence run in row blocks, the item–item head above
``graph.ease_max_items`` is the sparse neighbourhood EASE of :func:`sora.model.itemsim.ease_sparse`.

Letters: U users, I items, L history length, T text dim.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sora.config import GraphConfig, SoraConfig
from sora.data.split import Split
from sora.model.gnn import TorchGraph
from sora.model.itemsim import auto_neighbours, ease_sparse, ease_weights, interaction_matrix, topk_dense
from sora.model.text import ItemEmbeddings
from sora.training.selection import EASE_LAMBDA_START, ease_on_valid, walks_lambda

log = logging.getLogger(__name__)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StageTimer:
    """Times named stages; each record holds seconds and the process's peak RSS when the stage ended."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        rec = {"seconds": round(time.perf_counter() - start, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
        self.records[name] = rec
        log.info("prepare %-14s %8.2fs  peak RSS %8.1f MiB", name, rec["seconds"], rec["peak_rss_mb"])


@dataclass
class Prepared:
    """What the training loop and selection read; built once per training run, reusable across runs."""

    split: Split
    device: torch.device
    x_train: sp.csr_matrix  # (U, I) binary training interactions
    warm: torch.Tensor  # (I,) bool: item has a training interaction
    text: torch.Tensor | None  # (I, T) on device
    graph: TorchGraph | None  # on device; None when the model has no graph encoder
    etypes: list[tuple[str, str, str]]
    hist: torch.Tensor  # (U, L) most recent training items, newest first, on device
    hmask: torch.Tensor  # (U, L) bool
    log_q: torch.Tensor  # (I,) log sampling probability of each item as an in-batch negative
    pairs: tuple[torch.Tensor, torch.Tensor]  # (P,), (P,) unique (user, item) training pairs, CPU
    ii: sp.csr_matrix | np.ndarray | None  # (I, I) item–item head, or None when switched off
    static: dict[str, Any]  # the never-changing parts of a fitted Recommender
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    #: ``train.causal`` with the Transformer: next-item training windows, CPU (see :func:`causal_windows`):
    #: users (N,), items (N, L) oldest first, left-padded, their mask and targets (N, L) (-100 = none)
    windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    #: the item–item head's EASE λ (chosen on valid when ``graph.ease_lambda`` is null)
    ease_lambda: float | None = None
    #: ``train.head_in_loss``: the head inside causal training's logits (:mod:`sora.training.heads`)
    head_term: Any = None
    #: the head's history decay and the users' training rows weighted by it (None at decay 1)
    head_decay: float = 1.0
    head_weights: sp.csr_matrix | None = None
    #: the item–item heads at other EASE λs that the heads' selection tried (:meth:`head_at`)
    heads: dict[tuple[float, int], Any] = field(default_factory=dict)

    def head_at(self, lam: float, cfg: GraphConfig) -> sp.csr_matrix | np.ndarray:
        """The dense item–item head at EASE λ ``lam`` (kept whole or pruned to ``cfg.ease_k``), built once per
        preparation: tuning trials that share it try the same λs, and each costs an (I, I) inverse."""
        key = (lam, cfg.ease_k)
        if key not in self.heads:
            self.heads[key] = dense_head_at(self.x_train, lam, cfg)
        return self.heads[key]

    @property
    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {"text": self.text, "hist": self.hist, "hmask": self.hmask, "log_q": self.log_q}


def graph_config(cfg: SoraConfig) -> GraphConfig:
    """The graph section as the builder needs it: ``ease`` feeds the item–item head, not message passing."""
    g = copy.deepcopy(cfg.graph)
    kinds = [k for k in g.item_edges.split(",") if k.strip() in ("text", "cooccur")]
    if not cfg.model.use_item_edges:
        kinds = []
    if not cfg.model.use_text:
        kinds = [k for k in kinds if k != "text"]
    g.item_edges = ",".join(kinds) or "none"
    if not cfg.model.use_user_edges:
        g.user_edges = "none"
    return g


def causal_windows(train: pd.DataFrame, length: int) -> tuple[torch.Tensor, ...]:
    """Each user's training sequence as next-item windows: users (N,), items (N, L), mask (N, L), targets (N, L).

    Rows are taken in sequence order (user, time; ties keep the split's row order, which is the input
    order under leave-last-out). A sequence s gives inputs s[:-1] and targets s[1:], cut into windows of
    ``length`` from its end, so every item after a user's first is a target exactly once, seen only
    through the items before it. Items run oldest first, left-padded (item 0, mask False, target -100).
    """
    from sora.model.sasrec import training_windows

    order = np.lexsort((np.arange(len(train)), train["ts"].to_numpy(), train["u"].to_numpy()))
    u, i = train["u"].to_numpy(np.int64)[order], train["i"].to_numpy(np.int64)[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, dtype=np.int64)
    inputs, targets = training_windows(np.split(i, starts[1:]) if len(u) else [], length)
    sizes = np.diff(np.r_[starts, len(u)])
    users = np.repeat(u[starts], np.maximum(0, -(-(sizes - 1) // length)))  # windows per sequence, in order
    inputs = torch.from_numpy(inputs).reshape(-1, length)
    mask = inputs > 0
    return (torch.from_numpy(users), (inputs - 1).clamp(min=0), mask,
            torch.from_numpy(targets).reshape(-1, length))


def recent_history(train: pd.DataFrame, num_users: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, L) most recent training items per user (newest first), padded with 0, and the (U, L) mask.

    Vectorised (one sort, no per-user loop): 200k users take a second, not minutes.
    """
    hist = torch.zeros(num_users, length, dtype=torch.long)
    mask = torch.zeros(num_users, length, dtype=torch.bool)
    # newest first: time descending, and among equal timestamps the later row (input order under
    # leave-last-out, the order causal_windows and Protocol T's sequences use), never the item id
    rows = np.arange(len(train))
    order = np.lexsort((-rows, -train["ts"].to_numpy(np.float64), train["u"].to_numpy(np.int64)))
    u, i = train["u"].to_numpy(np.int64)[order], train["i"].to_numpy(np.int64)[order]
    if len(u) == 0:
        return hist, mask
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    rank = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
    keep = rank < length
    uu, rr = torch.from_numpy(u[keep]), torch.from_numpy(rank[keep])
    hist[uu, rr] = torch.from_numpy(i[keep])
    mask[uu, rr] = True
    return hist, mask


def dense_head_bytes(num_items: int) -> int:
    """Peak bytes of the dense EASE head: Gram, its inverse and B in float64, plus the float32 result."""
    return num_items * num_items * (3 * 8 + 4)


def available_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional: fall back to free pages
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None


def check_item_item_head(num_items: int, cfg: GraphConfig) -> str:
    """'dense' or 'sparse'; ValueError naming ``graph.ease_max_items`` when the dense head cannot fit in memory."""
    if num_items > cfg.ease_max_items:
        return "sparse"
    need, avail = dense_head_bytes(num_items), available_memory_bytes()
    if avail is not None and need > avail:
        raise ValueError(f"graph.ease_max_items={cfg.ease_max_items}: the dense item–item head for {num_items} items "
                         f"needs ~{need / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB available; lower "
                         f"graph.ease_max_items below {num_items} to use the sparse head")
    return "dense"


def item_item_head(x_train: sp.csr_matrix, cfg: GraphConfig, split: Split | None = None,
                   decays: tuple[float, ...] = (1.0,), batch_size: int = 1024, decay_for_fixed_lambda: bool = False
                   ) -> tuple[sp.csr_matrix | np.ndarray, float, float]:
    """(EASE coefficients on training data, their λ, the history decay chosen with them): dense (I, I) up
    to ``graph.ease_max_items`` items (top ``ease_k`` per item when ``ease_k > 0``), above it the sparse
    neighbourhood EASE. Never silently absent.

    ``graph.ease_lambda`` null: the dense head's λ is chosen on ``split``'s valid part with the best of
    the head's history ``decays`` (:func:`~sora.training.selection.ease_on_valid`); the sparse head, and a call
    without a split, take 300. A fixed λ chooses no decay (1.0: the head's weight and decay are chosen
    after training) unless ``decay_for_fixed_lambda`` (the head trained in needs its decay before).
    """
    n = x_train.shape[1]
    lam = cfg.ease_lambda
    fixed = EASE_LAMBDA_START if lam is None else lam  # where λ is not chosen on valid
    if check_item_item_head(n, cfg) == "sparse":
        lam = fixed
        k = cfg.ease_neighbours or auto_neighbours(n)
        log.info("item-item head: sparse neighbourhood EASE (%d items > graph.ease_max_items=%d, %d neighbours, "
                 "λ %g)", n, cfg.ease_max_items, k, lam)
        return ease_sparse(x_train, lam, k), lam, 1.0
    decay = 1.0
    if split is None:
        lam = fixed
        b = ease_weights(x_train, lam)
    else:
        choice = ease_on_valid(x_train, split, lam, decays if lam is None or decay_for_fixed_lambda else (1.0,),
                               batch_size, cfg.ease_lambda_search_max_items)
        b, lam, decay = choice.weights, choice.lam, choice.decay
    return _pruned(b, cfg), lam, decay


def _pruned(b: np.ndarray, cfg: GraphConfig) -> sp.csr_matrix | np.ndarray:
    """Dense EASE weights as the head keeps them: whole, or the top ``graph.ease_k`` per item."""
    n = b.shape[0]
    if cfg.ease_k <= 0 or cfg.ease_k >= n - 1:
        return b
    src, dst, w = topk_dense(b, cfg.ease_k)
    return sp.csr_matrix((w, (src, dst)), shape=(n, n))


def dense_head_at(x_train: sp.csr_matrix, lam: float, cfg: GraphConfig) -> sp.csr_matrix | np.ndarray:
    """The dense item–item head at EASE λ ``lam`` (what :func:`item_item_head` builds at a fixed λ)."""
    return _pruned(ease_weights(x_train, lam), cfg)


#: the factors on the λ EASE alone chose that the head's weight selection also tries (see head_lambdas)
HEAD_LAMBDA_FACTORS = (0.5, 2.0)


def head_lambdas(split: Split, cfg: SoraConfig, chosen: float | None) -> tuple[float, ...]:
    """The EASE λs :func:`~sora.training.selection.select_heads` tries for the head, ``chosen`` first.

    Where λ was chosen on valid for the dense head (``graph.ease_lambda`` null), the network's dot product
    sits beside the head and may prefer a neighbouring λ: the walk's next steps either side
    (:data:`HEAD_LAMBDA_FACTORS`) are tried too. Otherwise only ``chosen`` (nothing is searched).
    """
    n, g = split.num_items, cfg.graph
    searched = (chosen is not None and walks_lambda(split, g.ease_lambda, n, g.ease_lambda_search_max_items)
                and check_item_item_head(n, g) == "dense")
    return (chosen, *(chosen * f for f in HEAD_LAMBDA_FACTORS)) if searched else ()


def prepare_training(split: Split, embeddings: ItemEmbeddings | None, items: pd.DataFrame, cfg: SoraConfig,
                     device: torch.device, user_edges_df: pd.DataFrame | None = None,
                     with_graph: bool = True) -> Prepared:
    """Build every input of the training loop once (see the module docstring); ValueErrors come before heavy work."""
    from sora.model.graph import build_graph, map_user_edges

    cfg = cfg.resolved()
    mc = cfg.model
    nu, ni = split.num_users, split.num_items
    if len(split.train) == 0:
        raise ValueError("the train split is empty: no positive interactions to learn from")
    if len(split.valid) == 0:
        hint = ("; global-temporal's valid part is the events after the split.ratios[0] quantile of the timestamps "
                "of users with an event before it, so the timestamps must spread past the cut"
                if split.spec.mode == "global-temporal" else "")
        raise ValueError(f"the valid split is empty: split.mode={split.spec.mode} left no interaction for validation "
                         f"({len(split.train)} train rows, {nu} users); early stopping and the item–item weight are "
                         f"chosen on valid, so give users more interactions or use another split{hint}")
    if mc.use_text and embeddings is None:
        raise ValueError("model.use_text=true needs item embeddings")
    if mc.use_item_item_score:
        check_item_item_head(ni, cfg.graph)  # fail before the expensive stages, naming the key
    stage = StageTimer()
    with stage("matrix"):
        tu, ti = split.train["u"].to_numpy(), split.train["i"].to_numpy()
        x_train = interaction_matrix(tu, ti, nu, ni)
        counts = np.asarray(x_train.sum(0)).ravel()
        warm = torch.from_numpy(counts > 0)
        # logQ correction for in-batch negatives: an item is sampled in proportion to its training pairs
        log_q = torch.log(torch.from_numpy(counts.astype(np.float32)).clamp(min=1.0) / max(x_train.nnz, 1))
        coo = x_train.tocoo()
        pairs = (torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64)))
        del coo
    text = torch.from_numpy(np.ascontiguousarray(embeddings.aligned(split.item_ids))) if mc.use_text else None
    graph, etypes = None, []
    if with_graph:
        user_index = {u: k for k, u in enumerate(split.user_ids)}
        dgl_graph = build_graph(tu, ti, nu, ni, text.numpy() if text is not None else None, graph_config(cfg),
                                map_user_edges(user_edges_df, user_index), x=x_train, stage=stage)
        with stage("torch_graph"):
            etypes = list(dgl_graph.canonical_etypes)
            graph = TorchGraph.from_dgl(dgl_graph).to(device)
            del dgl_graph  # the torch adjacency is all training needs
    with stage("history"):
        hist, hmask = recent_history(split.train, nu, mc.history_len)
        windows = (causal_windows(split.train, mc.history_len) if cfg.causal_training and mc.use_transformer
                   else None)
    ii, ease_lambda, ease_decay = None, cfg.graph.ease_lambda, 1.0
    head_term, head_weights = None, None
    if mc.use_item_item_score:
        with stage("item_item_head"):
            ii, ease_lambda, ease_decay = item_item_head(x_train, cfg.graph, split, tuple(cfg.train.head_decays),
                                                         cfg.eval.batch_size, cfg.train.head_in_loss)
        if cfg.graph.ease_lambda is None:  # the saved config holds the λ chosen on valid
            cfg = copy.deepcopy(cfg)
            cfg.graph.ease_lambda = ease_lambda
        if cfg.train.head_in_loss:
            why_not = head_in_loss_unavailable(cfg, windows is not None, isinstance(ii, np.ndarray), ni)
            if why_not:
                log.warning("train.head_in_loss: off, %s; the head is mixed in after training", why_not)
            else:
                from sora.data.protocol import recency_matrix, sequences
                from sora.training.heads import head_term as make_head_term

                with stage("head_in_loss"):
                    head_term = make_head_term(x_train, ease_lambda, ease_decay, windows, cfg.train.head_folds,
                                               cfg.train.seed, device)
                    if head_term is not None and ease_decay < 1.0:
                        head_weights = recency_matrix(sequences(split, "train"), ni, ease_decay)
    with stage("static"):
        static = static_parts(split, items, cfg, x_train, text, embeddings)
    prep = Prepared(split=split, device=device, x_train=x_train, warm=warm,
                    text=text.to(device) if text is not None else None, graph=graph, etypes=etypes,
                    hist=hist.to(device), hmask=hmask.to(device), log_q=log_q.to(device), pairs=pairs, ii=ii,
                    static=static, stages=stage.records, windows=windows, ease_lambda=ease_lambda,
                    head_term=head_term, head_decay=ease_decay if head_term is not None else 1.0,
                    head_weights=head_weights)
    return prep


def head_in_loss_unavailable(cfg: SoraConfig, causal: bool, dense_head: bool, num_items: int) -> str:
    """Why ``train.head_in_loss`` cannot apply to this run ('' when it can)."""
    if not causal:
        return "it needs causal training with the Transformer (a next-item split.mode or train.causal=true)"
    if not dense_head:
        return "it needs the dense item–item head (graph.ease_max_items, graph.ease_k=0)"
    if cfg.train.loss != "softmax" or num_items > cfg.train.full_softmax_max_items:
        return "it needs the full softmax (train.loss=softmax, at most train.full_softmax_max_items items)"
    return ""


def static_parts(split: Split, items: pd.DataFrame, cfg: SoraConfig, x_train: sp.csr_matrix,
                 text: torch.Tensor | None, embeddings: ItemEmbeddings | None) -> dict[str, Any]:
    """The parts of a fitted Recommender that do not change between epochs."""
    item_meta = items.copy()
    item_meta["item_id"] = item_meta["item_id"].astype(str)
    item_meta = item_meta.set_index("item_id").reindex(split.item_ids).reset_index()
    meta = {"text_dim": 0 if text is None else int(text.shape[1]),
            "encoder_id": embeddings.encoder_id if embeddings is not None else None,
            "split": split.spec.__dict__, "data_fingerprint": split.spec.data_fingerprint}
    return {"config": cfg, "user_ids": split.user_ids, "item_ids": split.item_ids, "items": item_meta,
            "train": x_train, "seen": split.matrix("train", "valid", "test"), "meta": meta}
