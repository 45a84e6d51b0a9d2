"""Training (DESIGN.md §5.5): prepare → embed → graph → train → fitted :class:`~sora.recommender.Recommender`.

Loss: sampled softmax over in-batch negatives (``train.loss=softmax``) or BPR with uniform negatives
(``bpr``); optional contrastive regulariser between two edge-dropped graph views
(``train.contrastive_weight``). AdamW, early stopping on valid NDCG@10, best epoch kept.
Deterministic on CPU for a seed (torch, numpy and DGL seeded). The graph moves to the device in
one place (:func:`_to_device`).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sora.config import GraphConfig, SoraConfig
from sora.data import Dataset
from sora.itemsim import ease_weights, interaction_matrix, topk_dense
from sora.metrics import evaluate_scores
from sora.model import SoraModel
from sora.recommender import Recommender
from sora.split import Split, make_split
from sora.text import EmbeddingCache, ItemEmbeddings, TextEncoder, embed_items, load_encoder

log = logging.getLogger(__name__)

ALPHA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class TrainResult:
    recommender: Recommender
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    valid: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    from sora.graph import import_dgl

    torch.manual_seed(seed)
    np.random.seed(seed)
    import_dgl().seed(seed)


def _to_device(graph, tensors: dict[str, torch.Tensor | None], device: torch.device):
    """The one place where the graph and the dense inputs move to the training device."""
    moved = {k: (v.to(device) if v is not None else None) for k, v in tensors.items()}
    return graph.to(device), moved


def prepare(dataset: Dataset, cfg: SoraConfig, encoder: TextEncoder | None = None,
            cache: EmbeddingCache | None = None, progress: bool = True) -> tuple[Split, ItemEmbeddings | None]:
    """Split the data and embed item text (through the cache); what `sora train --data` runs first."""
    split = make_split(dataset, cfg.split)
    emb = None
    if cfg.model.use_text:
        encoder = encoder or load_encoder(cfg.text)
        emb, stats = embed_items(dataset.items, cfg.data.item_text_template, encoder, cache,
                                 cfg.text.batch_size, progress)
        log.info("embeddings: %d encoded, %d cached", stats.encoded, stats.cached)
    return split, emb


def recent_history(train: pd.DataFrame, num_users: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, L) most recent training items per user (newest first), padded with 0, and the (U, L) mask."""
    hist = torch.zeros(num_users, length, dtype=torch.long)
    mask = torch.zeros(num_users, length, dtype=torch.bool)
    ordered = train.sort_values(["u", "ts", "i"], ascending=[True, False, True], kind="stable")
    for u, grp in ordered.groupby("u", sort=False):
        items = grp["i"].to_numpy()[:length]
        hist[u, : len(items)] = torch.from_numpy(items.copy())
        mask[u, : len(items)] = True
    return hist, mask


def item_item_head(x_train: sp.csr_matrix, cfg: GraphConfig) -> sp.csr_matrix | np.ndarray | None:
    """EASE coefficients on training data: dense (I, I) when ``graph.ease_k <= 0``, else top ``ease_k`` per item."""
    n = x_train.shape[1]
    if n > cfg.ease_max_items:
        log.warning("item-item head skipped: %d items > graph.ease_max_items=%d", n, cfg.ease_max_items)
        return None
    b = ease_weights(x_train, cfg.ease_lambda)
    if cfg.ease_k <= 0 or cfg.ease_k >= n - 1:
        return b
    src, dst, w = topk_dense(b, cfg.ease_k)
    return sp.csr_matrix((w, (src, dst)), shape=(n, n))


def _graph_config(cfg: SoraConfig) -> GraphConfig:
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


def train_model(split: Split, embeddings: ItemEmbeddings | None, items: pd.DataFrame, cfg: SoraConfig,
                user_edges_df: pd.DataFrame | None = None, progress: bool = True) -> TrainResult:
    """Train Sora on ``split`` and return the fitted recommender with its per-epoch history."""
    from sora.gnn import GraphEncoder
    from sora.graph import build_graph, map_user_edges

    start = time.perf_counter()
    tc, mc = cfg.train, cfg.model
    seed_everything(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    nu, ni = split.num_users, split.num_items
    text = None
    if mc.use_text:
        if embeddings is None:
            raise ValueError("model.use_text=true needs item embeddings")
        text = torch.from_numpy(embeddings.aligned(split.item_ids))
    tu, ti = split.train["u"].to_numpy(), split.train["i"].to_numpy()
    x_train = interaction_matrix(tu, ti, nu, ni)
    warm = torch.from_numpy(np.asarray(x_train.sum(0)).ravel() > 0)
    user_index = {u: k for k, u in enumerate(split.user_ids)}
    graph = build_graph(tu, ti, nu, ni, text.numpy() if text is not None else None, _graph_config(cfg),
                        map_user_edges(user_edges_df, user_index))
    encoder = GraphEncoder(graph.canonical_etypes, mc.num_layers, mc.side_weight)
    model = SoraModel(mc, nu, ni, text.shape[1] if text is not None else 0, warm, encoder).to(device)
    hist, hmask = recent_history(split.train, nu, mc.history_len)
    log_q = torch.log(torch.from_numpy(np.asarray(x_train.sum(0)).ravel().astype(np.float32)).clamp(min=1.0) / x_train.nnz)
    graph, dev = _to_device(graph, {"text": text, "hist": hist, "hmask": hmask, "log_q": log_q}, device)
    pairs = x_train.tocoo()
    pu, pi = torch.from_numpy(pairs.row.astype(np.int64)), torch.from_numpy(pairs.col.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)

    rank, world = _distributed()
    valid_candidates = split.cold_valid_items if split.spec.mode == "cold-item" else None
    static = _static_parts(split, items, cfg, x_train, text, embeddings)
    history: list[dict[str, Any]] = []
    best = (-1.0, 0, None)
    bar = tqdm(range(1, tc.max_epochs + 1), desc="training", unit="epoch", disable=not progress or rank > 0)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(pu), generator=gen)
        total, steps = 0.0, 0
        for s in range(0, len(order) - world + 1, tc.batch_size):
            idx = order[s:s + tc.batch_size][rank::world]  # data parallel: each rank its share of the batch
            u, i = pu[idx].to(device), pi[idx].to(device)
            loss = _step_loss(model, graph, dev, u, i, ni, tc, gen)
            opt.zero_grad()
            loss.backward()
            if world > 1:
                _average_gradients(model, world)
            opt.step()
            total += float(loss)
            steps += 1
        record = {"epoch": epoch, "loss": total / max(steps, 1), "epoch_seconds": time.perf_counter() - t0}
        if epoch % tc.eval_every == 0 or epoch == tc.max_epochs:
            rec = _fit(model, graph, dev, static, None)
            metrics = evaluate_scores(partial(rec.score_users, alpha=0.0), split.valid["u"].to_numpy(),
                                      split.valid["i"].to_numpy(), ni, (10, 20), exclude=x_train,
                                      candidates=valid_candidates, batch_size=cfg.eval.batch_size)
            record.update({f"valid_{k}": v for k, v in metrics.items() if k in ("ndcg@10", "recall@10", "recall@20")})
            selectable = epoch >= min(tc.warmup_epochs, tc.max_epochs)
            if selectable and metrics["ndcg@10"] > best[0]:
                best = (metrics["ndcg@10"], epoch, copy.deepcopy(model.state_dict()))
            bar.set_postfix(loss=f"{record['loss']:.4f}", ndcg10=f"{metrics['ndcg@10']:.4f}")
        history.append(record)
        log.debug("epoch %s", record)
        if epoch >= max(tc.min_epochs, tc.warmup_epochs) and epoch - best[1] >= tc.patience:
            log.info("early stop at epoch %d (best %d, valid ndcg@10 %.4f)", epoch, best[1], best[0])
            break
    bar.close()
    if best[2] is not None:
        model.load_state_dict(best[2])
    ii = item_item_head(x_train, cfg.graph) if mc.use_item_item_score else None
    rec = _fit(model, graph, dev, static, ii)
    rec.meta.update({"best_epoch": best[1], "epochs_run": len(history), "history": history})
    valid = _select_alpha(rec, split, cfg, x_train, valid_candidates)
    result = TrainResult(rec, history, best[1], time.perf_counter() - start, valid)
    rec.meta["train_seconds"] = result.seconds
    rec.meta["valid"] = valid
    return result


def _distributed() -> tuple[int, int]:
    """(rank, world size) when launched under torchrun with a process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """All-reduce and average gradients, so every rank takes the same optimiser step.

    This is what DistributedDataParallel does after backward; Sora's forward is several calls around
    one full-graph propagation, so the reduction is done explicitly rather than through DDP's hooks.
    A parameter a rank did not use this step contributes zeros, keeping every rank in the collective.
    """
    import torch.distributed as dist

    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def _step_loss(model: SoraModel, graph, dev, u, i, num_items: int, tc, gen) -> torch.Tensor:
    g_user, g_item = model.propagate(graph, dev["text"])
    item_vecs = model.item_vectors(g_item, dev["text"])
    uv = _batch_user_vectors(model, g_user, g_item, dev["hist"], dev["hmask"], u, i, gen)  # (B, D)
    if tc.loss == "softmax":
        # (B, B): in-batch negatives, with the logQ correction for their popularity-biased sampling
        logits = uv @ item_vecs[i].T / tc.temperature - dev["log_q"][i][None, :]
        same = i[:, None] == i[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(i), dtype=torch.bool, device=i.device), -torch.inf)
        loss = F.cross_entropy(logits, torch.arange(len(i), device=i.device))
    elif tc.loss == "bpr":
        neg = torch.randint(0, num_items, (len(i),), generator=gen).to(i.device)
        loss = -F.logsigmoid((uv * item_vecs[i]).sum(1) - (uv * item_vecs[neg]).sum(1)).mean()
    else:
        raise ValueError(f"train.loss must be softmax or bpr, got {tc.loss!r}")
    if tc.contrastive_weight > 0 and model.graph_encoder is not None:
        loss = loss + tc.contrastive_weight * _contrastive(model, graph, dev, u, i, tc, gen)
    return loss


def _batch_user_vectors(model: SoraModel, g_user, g_item, hist, hmask, u, i, gen) -> torch.Tensor:
    """User vectors for the batch's (user, target) pairs; the target is never among its own history tokens.

    Pairs whose target lies outside the user's history window share one Transformer pass per distinct
    user (far fewer than pairs); pairs whose target is inside it get their own pass with that token masked.
    """
    if model.fusion is None:
        return g_user[u]
    anonymous = model.cfg.anonymous_prob > 0 and bool(torch.rand((), generator=gen) < model.cfg.anonymous_prob)
    inside = ((hist[u] == i[:, None]) & hmask[u]).any(1)
    out = torch.zeros(len(u), g_user.shape[1], device=g_user.device)
    rest = torch.nonzero(~inside).squeeze(1)
    if len(rest):
        users, back = torch.unique(u[rest], return_inverse=True)
        shared = model.user_vectors(None if anonymous else g_user[users], hist[users], hmask[users], g_item)
        out = out.index_copy(0, rest, shared[back])
    own = torch.nonzero(inside).squeeze(1)
    if len(own):
        uo, io = u[own], i[own]
        mask = hmask[uo] & (hist[uo] != io[:, None])
        out = out.index_copy(0, own, model.user_vectors(None if anonymous else g_user[uo], hist[uo], mask, g_item))
    return out


def _contrastive(model, graph, dev, u, i, tc, gen) -> torch.Tensor:
    """InfoNCE between two edge-dropped views (SGL-style) on the batch's users and items."""
    views = []
    for _ in range(2):
        keep = {et: (torch.rand(graph.num_edges(et), generator=gen) >= tc.edge_dropout).float().to(u.device)
                / (1 - tc.edge_dropout) for et in graph.canonical_etypes}
        views.append(model.propagate(graph, dev["text"], edge_keep=keep))

    def nce(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return F.cross_entropy(a @ b.T / tc.temperature, torch.arange(len(a), device=a.device))

    uu, ii = torch.unique(u), torch.unique(i)
    return nce(views[0][0][uu], views[1][0][uu]) + nce(views[0][1][ii], views[1][1][ii])


def _static_parts(split: Split, items: pd.DataFrame, cfg: SoraConfig, x_train: sp.csr_matrix,
                  text: torch.Tensor | None, embeddings: ItemEmbeddings | None) -> dict[str, Any]:
    """The parts of a fitted Recommender that do not change between epochs (built once per training)."""
    item_meta = items.copy()
    item_meta["item_id"] = item_meta["item_id"].astype(str)
    item_meta = item_meta.set_index("item_id").reindex(split.item_ids).reset_index()
    meta = {"text_dim": 0 if text is None else int(text.shape[1]),
            "encoder_id": embeddings.encoder_id if embeddings is not None else None,
            "split": split.spec.__dict__, "data_fingerprint": split.spec.data_fingerprint}
    return {"config": cfg, "user_ids": split.user_ids, "item_ids": split.item_ids, "items": item_meta,
            "train": x_train, "seen": split.matrix("train", "valid", "test"), "meta": meta}


@torch.no_grad()
def _fit(model: SoraModel, graph, dev, static: dict[str, Any], ii: sp.csr_matrix | np.ndarray | None) -> Recommender:
    """Freeze the current weights into fitted vectors (what serving uses)."""
    model.eval()
    g_user, g_item = model.propagate(graph, dev["text"])
    item_vecs = model.item_vectors(g_item, dev["text"])
    num_users = len(static["user_ids"])
    users = []
    for s in range(0, num_users, 4096):
        b = torch.arange(s, min(s + 4096, num_users), device=g_user.device)
        users.append(model.user_vectors(g_user[b], dev["hist"][b], dev["hmask"][b], g_item))
    cpu_model = copy.deepcopy(model).cpu()
    cpu_model.graph_encoder = None
    return Recommender(**{**static, "meta": dict(static["meta"])}, model=cpu_model,
                       user_vectors=torch.cat(users).cpu(), item_vectors=item_vecs.cpu(), item_tokens=g_item.cpu(),
                       history=dev["hist"].cpu(), history_mask=dev["hmask"].cpu(), ii=ii, alpha=0.0)


def _select_alpha(rec: Recommender, split: Split, cfg: SoraConfig, x_train: sp.csr_matrix,
                  candidates: np.ndarray | None) -> dict[str, float]:
    """Pick the item–item head's weight on valid NDCG@10 (like early stopping, valid data only)."""
    vu, vi = split.valid["u"].to_numpy(), split.valid["i"].to_numpy()

    def run(alpha: float) -> dict[str, float]:
        return evaluate_scores(lambda b: rec.score_users(b, alpha=alpha), vu, vi, rec.num_items, cfg.eval.ks,
                               exclude=x_train, candidates=candidates, batch_size=cfg.eval.batch_size)

    if rec.ii is None or len(vu) == 0:
        return run(0.0)
    # Put both terms on one scale first: alpha multiplies the ratio of their spreads on valid users.
    sample = np.unique(vu)[:512]
    dot = rec.score_users(sample, alpha=0.0)
    ii = rec._ii_scores(rec.train[sample])
    scale = float(dot.std() / ii.std().clamp(min=1e-12))
    scored = [(run(a * scale), a * scale) for a in ALPHA_GRID]
    metrics, alpha = max(scored, key=lambda t: t[0]["ndcg@10"])
    rec.alpha = alpha
    rec.meta["alpha_grid"] = {f"{a:.4g}": m["ndcg@10"] for m, a in scored}
    log.info("item-item weight %.4g selected on valid (ndcg@10 %.4f)", alpha, metrics["ndcg@10"])
    return metrics
