"""The saved Sora model and everything inference needs, without DGL (DESIGN.md §10 "Model and serving").

A model directory holds:

- ``config.json``        the full :class:`~sora.config.SoraConfig` it was trained with
- ``model.safetensors``  learned weights (``model.*``) and fitted tensors: user / item vectors,
                         history tokens, the item–item head (CSR), train and seen interactions (CSR)
- ``meta.json``          id maps, split spec, data fingerprint, encoder id, item–item weight, history
- ``items.parquet``      item metadata (id, title, …) for responses
- ``ann.faiss``          only for catalogues of ``serve.ann_min_items`` or more: the approximate top-k
                         index (:mod:`sora.model.ann`), built by ``save``

Optional tensors, each announced in ``meta.json`` (``has_user_tokens``, ``has_item_text``) and then
required: ``user_tokens`` (U, D), the users' graph embeddings, which let recent events re-run the
Transformer exactly; ``item_text`` (I, T), the catalogue's text embeddings, written by ``sora items add``.

``Recommender.load(dir)`` is the only loader; the CLI, pipeline components, MLflow pyfunc and the
BentoML service all use it. It loads strictly: a missing, truncated or inconsistent file (weights that
do not match the config, tensors missing or unexpected) raises :class:`ModelLoadError` naming the
directory, the file and the tensors, never a bare traceback from inside safetensors or torch.
``save`` writes a temporary directory and renames it into place, so a failed save leaves the previous
model whole. Scores are ``user · item`` plus ``alpha`` times the item–item head (the user's training
items propagated over EASE-weighted item↔item edges). The head weighs each history item by
``head_decay ** age`` (age 0 = the newest; ``head_decay`` chosen on valid, 1 = every item alike); with a
decay below 1 the weighted training rows are saved as ``head.*`` tensors. Models of next-item protocols
may add ``beta`` times the transition head (:mod:`sora.model.transitions`: which items followed the user's newest
ones), saved as ``trans.*`` (the (I, I) matrix) and ``trans_rows.*`` (the users' histories weighted by
``transition_decay ** age``) tensors. ``network_weight`` is 1, or 0 when valid preferred the heads alone
(:func:`sora.training.selection.select_alpha`): the ``user · item`` term then drops out of every score.

Why one module of about 650 lines: a saved model is one class whose scoring paths (known users, recent
events, anonymous histories, the approximate index, explanations) and its strict save / load share the
same fitted fields and the invariants ``__post_init__`` and ``load`` check together.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from sora.config import ConfigError, SoraConfig
from sora.model.network import SoraModel

log = logging.getLogger(__name__)


class UnknownIdError(KeyError):
    """A user or item id the model does not know."""


class ModelLoadError(ValueError):
    """A model directory is incomplete, damaged or inconsistent; the message names the directory and file."""


MODEL_FILES = ("config.json", "meta.json", "model.safetensors", "items.parquet")
#: meta.json keys written by :meth:`Recommender.save` itself (not part of ``Recommender.meta``)
_OWN_META = ("user_ids", "item_ids", "alpha", "head_decay", "beta", "transition_decay", "network_weight",
             "has_transitions", "has_ii", "has_user_tokens", "has_item_text", "has_ann")


def _csr_tensors(prefix: str, m: sp.csr_matrix, values: bool = False) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.indptr": torch.from_numpy(m.indptr.astype(np.int64)),
           f"{prefix}.indices": torch.from_numpy(m.indices.astype(np.int64))}
    if values:
        out[f"{prefix}.values"] = torch.from_numpy(m.data.astype(np.float32))
    return out


def _csr_from(t: dict[str, torch.Tensor], prefix: str, shape: tuple[int, int]) -> sp.csr_matrix:
    indptr, indices = t[f"{prefix}.indptr"].numpy(), t[f"{prefix}.indices"].numpy()
    data = t[f"{prefix}.values"].numpy() if f"{prefix}.values" in t else np.ones(len(indices), np.float32)
    m = sp.csr_matrix((data, indices, indptr), shape=shape)
    m.check_format(full_check=True)  # a damaged file must fail here, not as a wrong score later
    return m


@dataclass
class Recommender:
    config: SoraConfig
    model: SoraModel
    user_ids: list[str]
    item_ids: list[str]
    items: pd.DataFrame
    user_vectors: torch.Tensor  # (U, D)
    item_vectors: torch.Tensor  # (I, D)
    item_tokens: torch.Tensor  # (I, D) graph embeddings used as history tokens
    history: torch.Tensor  # (U, L) most recent training items, padded with 0
    history_mask: torch.Tensor  # (U, L) True where real
    train: sp.csr_matrix  # (U, I) training interactions: the item–item head's input
    seen: sp.csr_matrix  # (U, I) every known positive interaction: excluded when serving
    ii: sp.csr_matrix | np.ndarray | None  # (I, I) item–item head weights (row j: items reached from j)
    alpha: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    #: (U, D) graph embeddings of the users (the Transformer's user token); optional. With them, recent
    #: events re-run the Transformer exactly; without, :meth:`user_vectors_with` shifts the fitted vector.
    user_tokens: torch.Tensor | None = None
    #: (I, T) the items' text embeddings (written by ``sora items add``, so later additions need not re-embed).
    item_text: torch.Tensor | None = None
    #: approximate top-k index (:class:`sora.model.ann.AnnIndex`) for catalogues of ``serve.ann_min_items`` or more;
    #: built by :meth:`save`, used by :meth:`recommend` and :meth:`recommend_from_history`
    ann: Any = None
    #: the item–item head's history weighting: item h of a history weighs ``head_decay ** age`` (age 0 =
    #: newest); 1.0 = binary (every history item weighs 1)
    head_decay: float = 1.0
    #: (U, I) each user's training history weighted that way (None when ``head_decay`` is 1: ``train``)
    head_weights: sp.csr_matrix | None = None
    #: (I, I) the transition head (:mod:`sora.model.transitions`), its weight and history decay, and (U, I) the
    #: users' training histories weighted by ``transition_decay ** age``; None / 0 when the model has none
    transitions: sp.csr_matrix | None = None
    beta: float = 0.0
    transition_decay: float = 1.0
    transition_rows: sp.csr_matrix | None = None
    #: the network's (``user · item``) weight in the score: 1, or 0 when valid preferred the heads alone
    network_weight: float = 1.0

    def __post_init__(self) -> None:
        self.user_index = {u: k for k, u in enumerate(self.user_ids)}
        self.item_index = {i: k for k, i in enumerate(self.item_ids)}
        self.titles = (self.items.set_index("item_id")["title"].astype(str).to_dict()
                       if "title" in self.items else {})
        if not 0 < self.head_decay <= 1 or (self.head_decay != 1.0) != (self.head_weights is not None):
            raise ValueError(f"head_decay {self.head_decay} needs head_weights exactly when it is below 1")
        if (self.transitions is None) != (self.transition_rows is None):
            raise ValueError("a transition head needs both its matrix and the users' weighted rows")
        if self.network_weight not in (0.0, 1.0) or (not self.network_weight and not (self.alpha or self.beta)):
            raise ValueError(f"network_weight {self.network_weight} must be 1, or 0 with a head weighted in")
        self.model.eval()
        pop = np.asarray(self.seen.sum(0)).ravel()
        self.popularity = torch.from_numpy(pop.astype(np.float32))
        self._scores: torch.Tensor | None = None  # (U, I) known users' score rows, see prepare_serving
        self._unit_items: torch.Tensor | None = None
        self._ii_dense: torch.Tensor | None = None
        self._fusion_np = None  # sora.model.fastpath.NumpyFusion, see prepare_serving

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    # ------------------------------------------------------------------ scoring (indices)

    def _ii_scores(self, x: sp.csr_matrix) -> torch.Tensor:
        """(B, I) item–item head for history rows x (B, I)."""
        if self.ii is None:
            return torch.zeros(x.shape[0], self.num_items)
        out = x @ self.ii
        return torch.from_numpy(np.asarray(out.todense() if sp.issparse(out) else out, dtype=np.float32))

    def _row(self, m: sp.csr_matrix, u: int) -> np.ndarray:
        """Column indices of row ``u`` of a CSR matrix, without building a sparse row."""
        return m.indices[m.indptr[u]:m.indptr[u + 1]]

    def _head_rows(self, users: np.ndarray) -> sp.csr_matrix:
        """(B, I) the item–item head's input rows of known users: their weighted training histories."""
        return (self.train if self.head_decay == 1.0 else self.head_weights)[users]

    def head_history(self, u: int | None, recent: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """The item–item head's input for user ``u`` (None: anonymous) plus ``recent`` item indices (oldest
        first, after the training history): (distinct items, their weights; None = all 1).

        With ``head_decay`` d < 1 the n recent items weigh d**(n-1) … d**0 and the training items' weights
        age by d**n; an item seen twice keeps its newer (larger) weight.
        """
        if self.head_decay == 1.0:
            known = np.zeros(0, np.int64) if u is None else self._row(self.train, u).astype(np.int64)
            return np.union1d(known, np.asarray(recent, dtype=np.int64)), None
        return self._weighted_history(u, recent, self.head_decay, self.head_weights)

    def transition_history(self, u: int | None, recent: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The transition head's input, as :meth:`head_history` with ``transition_decay``."""
        return self._weighted_history(u, recent, self.transition_decay, self.transition_rows)

    def _weighted_history(self, u: int | None, recent: list[int], decay: float,
                          rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        rec = np.asarray(recent, dtype=np.int64)
        n = len(rec)
        w_known = np.zeros(0, np.float32) if u is None else rows.data[rows.indptr[u]:rows.indptr[u + 1]] * decay ** n
        items = np.r_[self._row(rows, u).astype(np.int64) if u is not None else np.zeros(0, np.int64), rec]
        weights = np.r_[w_known, decay ** np.arange(n - 1, -1, -1, dtype=np.float64)].astype(np.float32)
        order = np.lexsort((-weights, items))
        first = np.r_[True, items[order][1:] != items[order][:-1]] if len(items) else np.zeros(0, bool)
        return items[order][first], weights[order][first]

    def _ii_history(self, items: np.ndarray, weights: np.ndarray | None = None) -> torch.Tensor:
        """(I,) the item–item head for one history: distinct item indices and their weights (None = 1)."""
        if self._ii_dense is not None:
            rows = self._ii_dense[torch.as_tensor(items, dtype=torch.long)]
            return rows.sum(0) if weights is None else torch.from_numpy(np.asarray(weights, np.float32)) @ rows
        data = np.ones(len(items), np.float32) if weights is None else np.asarray(weights, np.float32)
        x = sp.csr_matrix((data, (np.zeros(len(items)), items)), shape=(1, self.num_items))
        return self._ii_scores(x)[0]

    def _transition_scores(self, x: sp.csr_matrix) -> torch.Tensor:
        """(B, I) the transition head for weighted history rows x (B, I)."""
        return torch.from_numpy(np.asarray((x @ self.transitions).todense(), dtype=np.float32))

    def _heads(self, u: int | None, recent: list[int], alpha: float | None = None) -> torch.Tensor | None:
        """(I,) ``alpha`` × the item–item head plus ``beta`` × the transition head for user ``u`` (None:
        anonymous) with ``recent`` items; None when neither applies."""
        alpha = self.alpha if alpha is None else alpha
        out = None
        if alpha and self.ii is not None:
            out = alpha * self._ii_history(*self.head_history(u, recent))
        if self.beta and self.transitions is not None:
            items, w = self.transition_history(u, recent)
            x = sp.csr_matrix((w, (np.zeros(len(items)), items)), shape=(1, self.num_items))
            t = self.beta * self._transition_scores(x)[0]
            out = t if out is None else out + t
        return out

    def prepare_serving(self, max_scores: int = 20_000_000) -> Recommender:
        """Precompute what does not change between requests (the service calls this once per load).

        Unit-norm item vectors (``similar_items``), a dense item–item head as a tensor (a history's head
        scores are then a row sum), and, when there is no approximate index and users × items ≤
        ``max_scores``, every known user's score row: ``/recommend`` and ``/score`` then read a row
        instead of recomputing it; and the Transformer for one history in NumPy (:mod:`sora.model.fastpath`).
        The same numbers as without (to float rounding). Returns ``self``.
        """
        if self.model.fusion is not None:
            from sora.model.fastpath import NumpyFusion

            try:
                self._fusion_np = NumpyFusion(self.model.fusion)
            except ValueError as exc:  # an activation without a NumPy twin: the torch path serves
                log.info("serving without the NumPy fast path: %s", exc)
        with torch.no_grad():
            self._unit_items = torch.nn.functional.normalize(self.item_vectors, dim=1)
            if isinstance(self.ii, np.ndarray):
                self._ii_dense = torch.from_numpy(np.ascontiguousarray(self.ii, dtype=np.float32))
            if self.ann is None and self.num_users * self.num_items <= max_scores:
                step = max(1, 1_000_000 // max(self.num_items, 1))
                self._scores = torch.cat([self.score_users(np.arange(s, min(s + step, self.num_users)))
                                          for s in range(0, self.num_users, step)])
        return self

    def _network(self, user: Callable[[], torch.Tensor], n: int | None = None) -> torch.Tensor:
        """``user() @ item_vectors.T`` ((n, I), or (I,) for n None); zeros without calling ``user`` when the
        network's weight is 0."""
        if not self.network_weight:
            return torch.zeros(self.num_items) if n is None else torch.zeros(n, self.num_items)
        return user() @ self.item_vectors.T

    def score_users(self, users: np.ndarray, alpha: float | None = None) -> torch.Tensor:
        """(B,) user indices → (B, I) scores."""
        alpha = self.alpha if alpha is None else alpha
        idx = torch.tensor(users, dtype=torch.long)  # a copy: pandas hands out read-only arrays, as_tensor warns
        s = self._network(lambda: self.user_vectors[idx], len(idx))
        if alpha:
            s = s + alpha * self._ii_scores(self._head_rows(users))
        if self.beta and self.transitions is not None:
            s = s + self.beta * self._transition_scores(self.transition_rows[users])
        return s

    @torch.no_grad()
    def user_vectors_with(self, u: int, recent: list[int]) -> torch.Tensor:
        """(D,) user ``u``'s vector with ``recent`` item indices (oldest first) folded into its history.

        The history the Transformer sees is the ``L`` newest of (training history + recent). With
        :attr:`user_tokens` saved this is exactly what training computes; without them the fitted
        vector is shifted by the change that the new history makes to an anonymous user's vector
        (the Transformer's user token is then unknown; an approximation, documented in the README).
        """
        if not recent or self.model.fusion is None:
            return self.user_vectors[u]
        L = self.config.model.history_len
        old = self.history[u][self.history_mask[u]].tolist()  # newest first
        new = (list(reversed(recent)) + old)[:L]
        if self.user_tokens is not None:
            return self._one_history(self.user_tokens[u], new)
        hist = torch.zeros(2, L, dtype=torch.long)
        mask = torch.zeros(2, L, dtype=torch.bool)
        for row, seq in enumerate((new, old)):
            hist[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        anon = self.model.user_vectors(None, hist, mask, self.item_tokens)  # (2, D): new and old history
        return self.user_vectors[u] + anon[0] - anon[1]

    @torch.no_grad()
    def score_user_recent(self, u: int, recent: list[int], alpha: float | None = None) -> torch.Tensor:
        """(I,) scores for user ``u`` with ``recent`` item indices (events since training, oldest first)."""
        if not recent:
            if self._scores is not None and (alpha is None or alpha == self.alpha):
                return self._scores[u]
            return self.score_users(np.array([u]), alpha)[0]
        s = self._network(lambda: self.user_vectors_with(u, recent))
        heads = self._heads(u, recent, alpha)  # a recent repeat of a training item counts once, like training
        return s if heads is None else s + heads

    @torch.no_grad()
    def top_k_users(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) user indices → (B, k) scores and item indices, best first (seen items excluded: -inf)."""
        s = self.score_users(users)
        if exclude_seen:
            rows = self.seen[users]
            r = np.repeat(np.arange(len(users)), np.diff(rows.indptr))
            s[torch.from_numpy(r), torch.from_numpy(rows.indices.astype(np.int64))] = -torch.inf
        return torch.topk(s, min(k, self.num_items), dim=1)

    @torch.no_grad()
    def history_vector(self, items: list[int]) -> torch.Tensor:
        """(D,) the vector of an anonymous user whose history is ``items`` (oldest first)."""
        return self._one_history(None, items[-self.config.model.history_len:][::-1])

    def _one_history(self, user_token: torch.Tensor | None, newest_first: list[int]) -> torch.Tensor:
        """(D,) the Transformer's user vector for one unpadded history of ≤ L items, newest first.

        Through the NumPy fast path when :meth:`prepare_serving` built it, else the torch module.
        """
        if self._fusion_np is not None:
            token = None if user_token is None else user_token.numpy()
            return torch.from_numpy(self._fusion_np(token, self.item_tokens.numpy()[newest_first]))
        hist = torch.as_tensor(newest_first, dtype=torch.long)[None]  # (1, n): no padding to mask
        token = None if user_token is None else user_token[None]
        return self.model.user_vectors(token, hist, torch.ones_like(hist, dtype=torch.bool), self.item_tokens)[0]

    @torch.no_grad()
    def score_history(self, items: list[int]) -> torch.Tensor:
        """(I,) scores for an anonymous user whose history is ``items`` (oldest first)."""
        s = self._network(lambda: self.history_vector(items))
        heads = self._heads(None, items)
        return s if heads is None else s + heads

    # ------------------------------------------------------------------ id-level API

    def _user(self, user_id: str) -> int:
        try:
            return self.user_index[str(user_id)]
        except KeyError:
            raise UnknownIdError(f"unknown user_id {user_id!r}") from None

    def _item(self, item_id: str) -> int:
        try:
            return self.item_index[str(item_id)]
        except KeyError:
            raise UnknownIdError(f"unknown item_id {item_id!r}") from None

    def _results(self, scores: torch.Tensor, k: int, exclude: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Top-k of an (I,) score vector (not modified); ``exclude``d items (set to -inf) are left out."""
        if exclude is not None and len(exclude):
            scores = scores.index_fill(0, torch.as_tensor(exclude, dtype=torch.long), -torch.inf)
        top = torch.topk(scores, max(0, min(k, self.num_items)))
        return [{"item_id": self.item_ids[i], "title": self.titles.get(self.item_ids[i], ""), "score": v}
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True) if v > -np.inf]

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True,
                  recent_item_ids: list[str] | None = None, explain: bool = False) -> list[dict[str, Any]]:
        """Top-k items for a known user (items the user already interacted with excluded by default).

        ``recent_item_ids``: events since training (newest last), folded into the user's history for the
        Transformer and the item–item head and, with ``exclude_seen``, excluded like training items.
        ``explain``: each item also gets ``because``, the history items that drove it (:mod:`sora.model.explain`).
        Unknown ids raise :class:`UnknownIdError`; duplicates raise ``ValueError``.
        """
        u = self._user(user_id)
        recent = self._recent(recent_item_ids)
        exclude = np.r_[self._row(self.seen, u), np.asarray(recent, dtype=np.int64)] if exclude_seen else None
        if self.ann is not None:
            out = self._ann_results(self.user_vectors_with(u, recent), self._heads(u, recent), k, exclude)
        else:
            with torch.no_grad():
                out = self._results(self.score_user_recent(u, recent), k, exclude)
        if explain:
            newest_first = list(reversed(recent)) + self.history[u][self.history_mask[u]].tolist()
            token = None if self.user_tokens is None else self.user_tokens[u]
            self._explain(out, newest_first, u, recent, token)
        return out

    def _explain(self, results: list[dict[str, Any]], newest_first: list[int], u: int | None, recent: list[int],
                 user_token: torch.Tensor | None) -> None:
        """Add ``because`` to each result (in place): its ``serve.explain_items`` heaviest history items.

        ``u`` (None: anonymous) and ``recent``: whose history the heads read, as in :meth:`head_history`.
        """
        from sora.model.explain import attributions, because

        targets = [self.item_index[r["item_id"]] for r in results]
        head = self.head_history(u, recent)
        trans = self.transition_history(u, recent) if self.beta and self.transitions is not None else None
        items, weights = attributions(self, newest_first, head[0], targets, user_token, head[1], trans)
        for r, b in zip(results, because(self, items, weights, self.config.serve.explain_items), strict=True):
            r["because"] = b

    @torch.no_grad()
    def _ann_results(self, user: torch.Tensor, heads: torch.Tensor | None, k: int,
                     exclude: np.ndarray | None) -> list[dict[str, Any]]:
        """Top-k through the approximate index: its candidates plus those the heads reach (``heads``: their
        (I,) weighted scores, :meth:`_heads`), scored exactly."""
        serve = self.config.serve
        n_ex = 0 if exclude is None else len(exclude)
        _, idx = self.ann.search(user.numpy(), k + n_ex + serve.ann_candidates)
        cand = [idx[0][idx[0] >= 0]]
        reach = None if heads is None else heads.numpy()
        if reach is not None:
            cand.append(np.flatnonzero(reach).astype(np.int64))
        cand = np.unique(np.concatenate(cand))
        if exclude is not None and n_ex:
            cand = np.setdiff1d(cand, exclude, assume_unique=False)
        if not len(cand):
            return []
        c = torch.from_numpy(cand)
        s = self.item_vectors[c] @ user * self.network_weight
        if reach is not None:
            s = s + torch.from_numpy(reach[cand])
        top = torch.topk(s, min(k, len(cand)))
        return [{"item_id": self.item_ids[i], "title": self.titles.get(self.item_ids[i], ""), "score": float(v)}
                for v, i in zip(top.values.tolist(), c[top.indices].tolist(), strict=True)]

    def _recent(self, recent_item_ids: list[str] | None) -> list[int]:
        ids = [str(i) for i in recent_item_ids or []]
        if len(set(ids)) != len(ids):
            dup = next(i for n, i in enumerate(ids) if i in ids[:n])
            raise ValueError(f"recent_item_ids: duplicate item id {dup!r}")
        unknown = [i for i in ids if i not in self.item_index]
        if unknown:
            raise UnknownIdError(f"recent_item_ids: {len(unknown)} unknown item id(s), first {unknown[0]!r}")
        return [self.item_index[i] for i in ids]

    def recommend_popular(self, k: int = 10, exclude: list[str] | None = None) -> list[dict[str, Any]]:
        """Most popular items: the explicit fallback for unknown users."""
        ex = np.array([self.item_index[i] for i in exclude or [] if i in self.item_index], dtype=np.int64)
        return self._results(self.popularity, k, ex)

    def recommend_from_history(self, item_ids: list[str], k: int = 10,
                               explain: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """Top-k for an anonymous user from a history of item ids (oldest first). Returns (items, ignored unknown ids).

        ``explain`` as in :meth:`recommend`.
        """
        known = [self.item_index[str(i)] for i in item_ids if str(i) in self.item_index]
        ignored = [str(i) for i in item_ids if str(i) not in self.item_index]
        if not known:
            raise UnknownIdError(f"none of the history's item ids is known: {ignored[:5]}")
        if self.ann is not None:
            out = self._ann_results(self.history_vector(known), self._heads(None, known), k, np.array(known))
        else:
            with torch.no_grad():
                out = self._results(self.score_history(known), k, np.array(known))
        if explain:
            self._explain(out, list(reversed(known)), None, known, None)
        return out, ignored

    def similar_items(self, item_id: str, k: int = 10) -> list[dict[str, Any]]:
        """Items whose fused vectors are closest (cosine) to ``item_id``'s."""
        i = self._item(item_id)
        v = self._unit_items if self._unit_items is not None else torch.nn.functional.normalize(self.item_vectors, dim=1)
        with torch.no_grad():
            return self._results(v @ v[i], k, np.array([i]))

    def score(self, user_id: str, item_ids: list[str],
              recent_item_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Scores of the given items for a user, in the order given (``recent_item_ids`` as in :meth:`recommend`)."""
        u = self._user(user_id)
        idx = [self._item(i) for i in item_ids]
        recent = self._recent(recent_item_ids)
        with torch.no_grad():
            s = self.score_user_recent(u, recent)
        return [{"item_id": self.item_ids[i], "title": self.titles.get(self.item_ids[i], ""), "score": float(s[i])}
                for i in idx]

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write the model directory atomically: a half-written model never replaces a good one."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        serve = self.config.serve
        if self.ann is None and 0 < serve.ann_min_items <= self.num_items:  # built once per item vectors
            from sora.model.ann import build_index

            self.ann = build_index(self.item_vectors.numpy(), serve.ann_nlist, serve.ann_nprobe)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            # clone: fitted tensors may share storage (e.g. item vectors == graph embeddings without text)
            tensors.update({k: getattr(self, k).detach().clone().contiguous() for k in
                            ("user_vectors", "item_vectors", "item_tokens", "history", "history_mask")})
            tensors.update({
                **_csr_tensors("train", self.train), **_csr_tensors("seen", self.seen),
            })
            if self.head_weights is not None:
                tensors.update(_csr_tensors("head", self.head_weights, values=True))
            if self.transitions is not None:
                tensors.update({**_csr_tensors("trans", self.transitions, values=True),
                                **_csr_tensors("trans_rows", self.transition_rows, values=True)})
            for name in ("user_tokens", "item_text"):
                if getattr(self, name) is not None:
                    tensors[name] = getattr(self, name).detach().cpu().float().contiguous()
            if isinstance(self.ii, np.ndarray):
                tensors["ii.dense"] = torch.from_numpy(self.ii)
            elif self.ii is not None:
                tensors.update(_csr_tensors("ii", self.ii, values=True))
            save_file(tensors, str(tmp / "model.safetensors"))
            self.config.save(tmp / "config.json")
            meta = {**self.meta, "user_ids": self.user_ids, "item_ids": self.item_ids, "alpha": self.alpha,
                    "head_decay": self.head_decay, "beta": self.beta, "transition_decay": self.transition_decay,
                    "network_weight": self.network_weight, "has_transitions": self.transitions is not None,
                    "has_ii": self.ii is not None, "has_user_tokens": self.user_tokens is not None,
                    "has_item_text": self.item_text is not None, "has_ann": self.ann is not None}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            self.items.to_parquet(tmp / "items.parquet", index=False)
            if self.ann is not None:
                from sora.model.ann import INDEX_FILE

                self.ann.save(tmp / INDEX_FILE)
            old = None
            if directory.exists():
                # two renames, never a copy: the good model stays whole until the new one is complete
                old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
                directory.replace(old)
            try:
                tmp.rename(directory)
            except BaseException:
                if old is not None:
                    old.replace(directory)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        """Load a model directory strictly; any damage raises :class:`ModelLoadError` naming the file."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: model directory does not exist")
        missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
        if missing:
            raise ModelLoadError(f"{directory}: not a complete Sora model directory: missing {', '.join(missing)} "
                                 f"(a model directory holds {', '.join(MODEL_FILES)})")
        try:
            config = SoraConfig.load(directory / "config.json")  # ConfigError messages start with the path
        except ConfigError as exc:
            raise ModelLoadError(f"{exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{directory / 'config.json'}: cannot read ({exc})") from exc
        meta = _read_meta(directory / "meta.json")
        path = directory / "model.safetensors"
        try:
            t = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for truncated files
            raise ModelLoadError(f"{path}: cannot read the weights, the file is truncated or not safetensors "
                                 f"({type(exc).__name__}: {exc})") from exc
        nu, ni = len(meta["user_ids"]), len(meta["item_ids"])
        try:
            model = SoraModel(config.model, nu, ni, int(meta.get("text_dim", 0)), torch.ones(ni),
                              causal=config.causal_training)
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"{directory}: config.json and meta.json do not describe a model: {exc}") from exc
        _check_tensors(path, t, model, config, meta)
        # the graph encoder only runs during training; older saves may still hold its (unused) tensors
        model.load_state_dict({k[6:]: v for k, v in t.items()
                               if k.startswith("model.") and not k.startswith("model.graph_encoder.")}, strict=True)
        try:
            items = pd.read_parquet(directory / "items.parquet")
        except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged file
            raise ModelLoadError(f"{directory / 'items.parquet'}: cannot read ({type(exc).__name__}: {exc})") from exc
        if "item_id" not in items.columns or len(items) != ni:
            raise ModelLoadError(f"{directory / 'items.parquet'}: expected {ni} rows with an item_id column "
                                 f"(from meta.json), found {len(items)} rows, columns {list(items.columns)}")
        try:
            ii = None
            if "ii.dense" in t:
                ii = t["ii.dense"].numpy()
            elif meta.get("has_ii"):
                ii = _csr_from(t, "ii", (ni, ni))
            train, seen = _csr_from(t, "train", (nu, ni)), _csr_from(t, "seen", (nu, ni))
            head = _csr_from(t, "head", (nu, ni)) if "head.indptr" in t else None
            trans = _csr_from(t, "trans", (ni, ni)) if meta.get("has_transitions") else None
            trans_rows = _csr_from(t, "trans_rows", (nu, ni)) if meta.get("has_transitions") else None
        except (KeyError, ValueError, IndexError) as exc:
            raise ModelLoadError(f"{path}: interaction or item–item tensors are inconsistent ({exc})") from exc
        ann = None
        if meta.get("has_ann"):
            from sora.model.ann import INDEX_FILE, AnnIndex

            index_path = directory / INDEX_FILE
            try:
                ann = AnnIndex.load(index_path, config.serve.ann_nprobe)
            except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError for missing or damaged files
                raise ModelLoadError(f"{index_path}: meta.json says the model has an approximate index, but it "
                                     f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
            if ann.size != ni or int(ann.index.d) != config.model.dim:
                raise ModelLoadError(f"{index_path}: index holds {ann.size} vectors of {ann.index.d} dims, the model "
                                     f"{ni} items of {config.model.dim}")
        # safetensors hands out tensors at arbitrary offsets of its buffer; BLAS picks other kernels for
        # unaligned memory, so scores would differ from the saved model's in the last bit. Fresh copies
        # are aligned: a loaded model scores exactly like the one that was saved.
        for name in ("user_vectors", "item_vectors", "item_tokens", "user_tokens", "item_text"):
            if name in t:
                t[name] = t[name].clone()
        fields = {k: v for k, v in meta.items() if k not in _OWN_META}
        return cls(config=config, model=model, user_ids=meta["user_ids"], item_ids=meta["item_ids"], items=items,
                   user_vectors=t["user_vectors"], item_vectors=t["item_vectors"], item_tokens=t["item_tokens"],
                   history=t["history"], history_mask=t["history_mask"].bool(),
                   train=train, seen=seen, ii=ii, alpha=float(meta["alpha"]), meta=fields,
                   user_tokens=t.get("user_tokens"), item_text=t.get("item_text"), ann=ann,
                   head_decay=float(meta.get("head_decay", 1.0)), head_weights=head, transitions=trans,
                   beta=float(meta.get("beta", 0.0)), transition_decay=float(meta.get("transition_decay", 1.0)),
                   transition_rows=trans_rows, network_weight=float(meta.get("network_weight", 1.0)))


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    for key in ("user_ids", "item_ids"):
        if not isinstance(meta.get(key), list) or not meta[key]:
            raise ModelLoadError(f"{path}: {key!r} must be a non-empty list of ids")
    if not isinstance(meta.get("alpha"), (int, float)) or isinstance(meta.get("alpha"), bool):
        raise ModelLoadError(f"{path}: 'alpha' must be a number, got {meta.get('alpha')!r}")
    decay = meta.get("head_decay", 1.0)
    if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not 0 < decay <= 1:
        raise ModelLoadError(f"{path}: 'head_decay' must be a number in (0, 1], got {decay!r}")
    if meta.get("network_weight", 1.0) not in (0, 1) or isinstance(meta.get("network_weight"), bool):
        raise ModelLoadError(f"{path}: 'network_weight' must be 0 or 1, got {meta.get('network_weight')!r}")
    return meta


def _names(keys: set[str] | list[str], limit: int = 12) -> str:
    keys = sorted(keys) if isinstance(keys, set) else keys  # lists keep the state-dict order
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_tensors(path: Path, t: dict[str, torch.Tensor], model: SoraModel, config: SoraConfig,
                   meta: dict[str, Any]) -> None:
    """Every tensor the config and meta.json call for, with the right shape, and nothing else."""
    nu, ni, dim, hl = len(meta["user_ids"]), len(meta["item_ids"]), config.model.dim, config.model.history_len
    expected: dict[str, tuple[int, ...] | None] = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    expected.update({"user_vectors": (nu, dim), "item_vectors": (ni, dim), "item_tokens": (ni, dim),
                     "history": (nu, hl), "history_mask": (nu, hl),
                     "train.indptr": (nu + 1,), "train.indices": None, "seen.indptr": (nu + 1,), "seen.indices": None})
    if meta.get("has_user_tokens"):
        expected["user_tokens"] = (nu, dim)
    if meta.get("has_item_text"):
        expected["item_text"] = (ni, int(meta.get("text_dim", 0)))
    if float(meta.get("head_decay", 1.0)) != 1.0:
        expected.update({"head.indptr": (nu + 1,), "head.indices": None, "head.values": None})
    if "ii.dense" in t:
        expected["ii.dense"] = (ni, ni)
    elif meta.get("has_ii"):
        expected.update({"ii.indptr": (ni + 1,), "ii.indices": None, "ii.values": None})
    if meta.get("has_transitions"):
        expected.update({"trans.indptr": (ni + 1,), "trans.indices": None, "trans.values": None,
                         "trans_rows.indptr": (nu + 1,), "trans_rows.indices": None, "trans_rows.values": None})
    present = {k for k in t if not k.startswith("model.graph_encoder.")}
    missing, unexpected = set(expected) - present, present - set(expected)
    if missing or unexpected:
        parts = [f"missing {_names(missing)}" if missing else "", f"unexpected {_names(unexpected)}" if unexpected else ""]
        raise ModelLoadError(f"{path}: tensors do not match config.json/meta.json: " + "; ".join(p for p in parts if p))
    wrong = [f"{k} {tuple(t[k].shape)} (expected {shape})" for k, shape in expected.items()
             if shape is not None and tuple(t[k].shape) != shape]
    if wrong:
        raise ModelLoadError(f"{path}: tensor shapes do not match config.json/meta.json "
                             f"({nu} users, {ni} items, model.dim={dim}): {_names(wrong, 6)}")
