"""New catalogue items without retraining (DESIGN.md §7): same weights, a larger catalogue.

:func:`add_items` embeds the new items' text with the model's own encoder (the encoder id saved in
``meta.json`` must match), projects it with the model's text projections, and links each new item to
its ``k`` nearest existing items by text (cosine). Training would have propagated the new item over
those item↔item text edges; here that propagation is approximated in closed form:

    g_new = (1 / (L + 1)) · text_in(t) + (L / (L + 1)) · Σ_j w_j g_j      (graph embedding, item token)
    v_new = g_new + text_out(t)                                          (item vector, as for any item)

where ``L`` = ``model.num_layers`` (LightGCN averages layer 0, the item's own input, with ``L``
propagated layers), ``g_j`` are the neighbours' fitted graph embeddings and ``w_j`` their text
similarities, clipped at 0 and normalised to sum to 1. New items have no interactions, so their
column of the item–item head is zero and nobody has "seen" them. The Transformer, projections and
every existing vector are unchanged, so scores of existing items do not move.

:func:`remove_items` is the inverse (used to measure added items against the cold-item protocol).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sora.data.contract import DataError

if TYPE_CHECKING:
    from sora.model.recommender import Recommender
    from sora.model.text import EmbeddingCache, TextEncoder

log = logging.getLogger(__name__)


class ItemsError(DataError):
    """An items file that fails validation; the message names every failed check with examples."""


def validate_new_items(rec: Recommender, items: pd.DataFrame, source: str = "items") -> pd.DataFrame:
    """The new items, ids as strings, or :class:`ItemsError` listing every failure (column, count, examples)."""
    from sora.data.contract import item_texts

    missing = [c for c in ("item_id", "title") if c not in items.columns]
    if missing:
        raise ItemsError(f"{source}: missing required column(s) {', '.join(missing)} "
                         f"(found {', '.join(map(str, items.columns)) or 'none'})", source, missing[0])
    if len(items) == 0:
        raise ItemsError(f"{source}: no rows", source)
    items = items.copy()
    ids = items["item_id"]
    null = ids.isna() | (ids.astype(str).str.strip() == "")
    items["item_id"] = ids.astype(str).str.strip()
    failures: list[tuple[str, str, int, list[str]]] = []
    if null.any():
        failures.append(("item_id", "empty id", int(null.sum()), [f"row {r}" for r in np.flatnonzero(null)[:5]]))
    dup = items["item_id"].duplicated(keep=False) & ~null
    if dup.any():
        failures.append(("item_id", "duplicate id in the file", int(dup.sum()),
                         sorted(set(items.loc[dup, "item_id"]))[:5]))
    known = items["item_id"].isin(rec.item_index) & ~null
    if known.any():
        failures.append(("item_id", "already in the model's catalogue", int(known.sum()),
                         list(items.loc[known, "item_id"])[:5]))
    title = items["title"]
    no_title = title.isna() | (title.astype(str).str.strip() == "")
    if no_title.any():
        failures.append(("title", "empty title", int(no_title.sum()), list(items.loc[no_title, "item_id"])[:5]))
    else:
        texts = item_texts(items, rec.config.data.item_text_template)
        empty = texts.astype(str).str.strip() == ""
        if empty.any():
            failures.append(("title", "empty item text", int(empty.sum()), list(items.loc[empty, "item_id"])[:5]))
    if failures:
        lines = "; ".join(f"{col}: {rule}: {n} row(s), e.g. {ex}" for col, rule, n, ex in failures)
        raise ItemsError(f"{source}: {len(failures)} check(s) failed: {lines}", source, failures[0][0])
    return items


def _text_matrix(rec: Recommender, items: pd.DataFrame, encoder: TextEncoder, cache: EmbeddingCache | None,
                 progress: bool) -> np.ndarray:
    from sora.model.text import embed_items

    emb, _ = embed_items(items, rec.config.data.item_text_template, encoder, cache, rec.config.text.batch_size,
                         progress)
    return emb.vectors


def check_encoder(rec: Recommender, encoder: TextEncoder) -> None:
    """The encoder must be the one the model was trained with (same id: name, weights hash, length, norm)."""
    if rec.model.text_in is None or rec.model.text_out is None:
        raise ValueError("the model was trained without text (model.use_text=false): new items have nothing to "
                         "be placed by; retrain to add items")
    want = rec.meta.get("encoder_id")
    if want and want != encoder.encoder_id:
        raise ValueError(f"text encoder mismatch: the model was trained with {want!r}, the encoder loaded from "
                         f"text.model={rec.config.text.model!r} is {encoder.encoder_id!r}")
    text_dim = int(rec.meta.get("text_dim", 0))
    if text_dim and encoder.dim != text_dim:
        raise ValueError(f"text encoder gives {encoder.dim}-d vectors, the model's projections take {text_dim}-d")


@torch.no_grad()
def place_items(rec: Recommender, text_old: torch.Tensor, text_new: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, T) new text embeddings → (N, D) graph embeddings, (N, D) item vectors, (N, k) neighbour indices.

    The closed-form stand-in for propagation described in the module docstring.
    """
    k = max(1, min(k, text_old.shape[0]))
    a = torch.nn.functional.normalize(text_new.float(), dim=1)
    b = torch.nn.functional.normalize(text_old.float(), dim=1)
    sims, nbrs = torch.topk(a @ b.T, k, dim=1)  # (N, k)
    w = sims.clamp(min=0)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))  # all dissimilar: a plain mean
    w = w / w.sum(1, keepdim=True)
    layers = rec.config.model.num_layers
    g = (rec.model.text_in(text_new.float()) + layers * (w[..., None] * rec.item_tokens[nbrs]).sum(1)) / (layers + 1)
    return g, rec.model.item_vectors(g, text_new.float()), nbrs


def _pad_csr(m: sp.csr_matrix, rows: int, cols: int) -> sp.csr_matrix:
    indptr = np.r_[m.indptr, np.full(rows - m.shape[0], m.indptr[-1], dtype=m.indptr.dtype)]
    return sp.csr_matrix((m.data, m.indices, indptr), shape=(rows, cols))


def add_items(rec: Recommender, new_items: pd.DataFrame, encoder: TextEncoder,
              cache: EmbeddingCache | None = None, k: int | None = None,
              progress: bool = False) -> tuple[Recommender, dict[str, Any]]:
    """A new Recommender: ``rec``'s weights and vectors plus ``new_items`` placed through their text.

    ``new_items`` is validated first (:class:`ItemsError`); ``k`` defaults to ``graph.item_knn_k``.
    ``rec`` itself is not modified. Returns (new recommender, report).
    """
    from sora.model.recommender import Recommender

    start = time.perf_counter()
    check_encoder(rec, encoder)
    new_items = validate_new_items(rec, new_items)
    k = k or rec.config.graph.item_knn_k
    if rec.item_text is not None:
        text_old = rec.item_text.float()
    else:  # models from training carry no text: embed the catalogue once (through the cache); kept from now on
        log.info("embedding the existing %d items' text (the model directory does not carry it yet)", rec.num_items)
        text_old = torch.from_numpy(_text_matrix(rec, rec.items, encoder, cache, progress))
    text_new = torch.from_numpy(_text_matrix(rec, new_items, encoder, cache, progress))
    g, v, nbrs = place_items(rec, text_old, text_new, k)
    n_old, n_new = rec.num_items, len(new_items)
    ni = n_old + n_new
    model = copy.deepcopy(rec.model)
    emb = model.item_emb.weight.data
    model.item_emb = torch.nn.Embedding(ni, emb.shape[1])
    model.item_emb.weight.data = torch.cat([emb, torch.zeros(n_new, emb.shape[1])])  # cold: no id embedding
    model.warm = torch.cat([model.warm, torch.zeros(n_new, 1)])
    columns = list(rec.items.columns)
    extra = new_items[[c for c in columns if c in new_items.columns]]
    items = pd.concat([rec.items, extra], ignore_index=True)[columns]
    if isinstance(rec.ii, np.ndarray):
        ii: Any = np.zeros((ni, ni), dtype=rec.ii.dtype)
        ii[:n_old, :n_old] = rec.ii
    elif rec.ii is not None:
        ii = _pad_csr(rec.ii.tocsr(), ni, ni)
    else:
        ii = None
    added = {"items": n_new, "at": pd.Timestamp.now("UTC").isoformat(timespec="seconds"), "knn_k": int(k)}
    meta = {**copy.deepcopy(rec.meta), "catalogue_additions": [*rec.meta.get("catalogue_additions", []), added]}
    out = Recommender(
        config=rec.config, model=model, user_ids=list(rec.user_ids), item_ids=[*rec.item_ids, *new_items["item_id"]],
        items=items, user_vectors=rec.user_vectors, item_vectors=torch.cat([rec.item_vectors, v]),
        item_tokens=torch.cat([rec.item_tokens, g]), history=rec.history, history_mask=rec.history_mask,
        train=_pad_csr(rec.train, rec.num_users, ni), seen=_pad_csr(rec.seen, rec.num_users, ni), ii=ii,
        alpha=rec.alpha, meta=meta, user_tokens=rec.user_tokens, item_text=torch.cat([text_old, text_new]),
        head_decay=rec.head_decay,
        head_weights=_pad_csr(rec.head_weights, rec.num_users, ni) if rec.head_weights is not None else None,
        transitions=_pad_csr(rec.transitions, ni, ni) if rec.transitions is not None else None, beta=rec.beta,
        transition_decay=rec.transition_decay,
        transition_rows=_pad_csr(rec.transition_rows, rec.num_users, ni) if rec.transitions is not None else None,
        network_weight=rec.network_weight)
    if not rec.network_weight:  # the heads alone: a new item has no training interaction for them to reach
        log.warning("this model serves its item-item head alone (valid chose it): the %d new items score 0 until "
                    "they have interactions and the model is retrained", n_new)
    report = {"added": n_new, "items_before": n_old, "items_after": ni, "knn_k": int(k),
              "seconds": round(time.perf_counter() - start, 3),
              "neighbours": {iid: [rec.item_ids[j] for j in row] for iid, row in
                             zip(new_items["item_id"][:20], nbrs[:20].tolist(), strict=False)}}
    log.info("added %d items (%d → %d) in %.1fs", n_new, n_old, ni, report["seconds"])
    return out, report


def remove_items(rec: Recommender, item_ids: list[str]) -> Recommender:
    """A Recommender without ``item_ids`` (which must have no training interactions: cold items)."""
    from sora.model.recommender import Recommender

    drop = np.array(sorted(rec.item_index[str(i)] for i in item_ids), dtype=np.int64)
    if len(drop) and rec.train[:, drop].nnz:
        raise ValueError("remove_items: only items without training interactions can be removed")
    keep = np.setdiff1d(np.arange(rec.num_items), drop)
    remap = torch.full((rec.num_items,), -1, dtype=torch.long)
    remap[torch.from_numpy(keep)] = torch.arange(len(keep))
    hist = remap[rec.history]
    mask = rec.history_mask & (hist >= 0)
    model = copy.deepcopy(rec.model)
    keep_t = torch.from_numpy(keep)
    model.item_emb = torch.nn.Embedding.from_pretrained(rec.model.item_emb.weight.data[keep_t].clone(), freeze=False)
    model.warm = rec.model.warm[keep_t]
    ii = rec.ii[np.ix_(keep, keep)] if isinstance(rec.ii, np.ndarray) else (
        rec.ii.tocsr()[keep][:, keep] if rec.ii is not None else None)
    return Recommender(
        config=rec.config, model=model, user_ids=list(rec.user_ids), item_ids=[rec.item_ids[i] for i in keep],
        items=rec.items.iloc[keep].reset_index(drop=True), user_vectors=rec.user_vectors,
        item_vectors=rec.item_vectors[keep_t], item_tokens=rec.item_tokens[keep_t], history=hist.clamp(min=0),
        history_mask=mask, train=rec.train[:, keep].tocsr(), seen=rec.seen[:, keep].tocsr(), ii=ii, alpha=rec.alpha,
        meta=copy.deepcopy(rec.meta), user_tokens=rec.user_tokens,
        item_text=rec.item_text[keep_t] if rec.item_text is not None else None, head_decay=rec.head_decay,
        head_weights=rec.head_weights[:, keep].tocsr() if rec.head_weights is not None else None,
        transitions=rec.transitions[keep][:, keep].tocsr() if rec.transitions is not None else None, beta=rec.beta,
        transition_decay=rec.transition_decay,
        transition_rows=rec.transition_rows[:, keep].tocsr() if rec.transitions is not None else None,
        network_weight=rec.network_weight)
