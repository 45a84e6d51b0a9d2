"""The Sora model from named parts (DESIGN.md §5). No DGL import here: the graph encoder is passed in.

Letters: B batch, U users, I items, L history length, D model dim, T text dim.

- ``TextProjector``  (I, T) text embeddings → (I, D)
- graph encoder      (U, D), (I, D) node inputs → (U, D), (I, D) graph embeddings (``sora.model.gnn``)
- ``HistoryFusion``  Transformer over ``[user token] + the user's L most recent items`` → (B, D)
- item fusion        graph embedding + a second text projection → (I, D)
- scorer             dot product (plus the item–item head in :mod:`sora.model.recommender`)

A cold item (no training interaction) has no id embedding: its input is its text projection only,
and it is reached in the graph through item↔item text edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sora.config import ModelConfig


class TextProjector(nn.Module):
    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        if text_dim <= 0 or dim <= 0:
            raise ValueError(f"text_dim and dim must be positive, got {text_dim}, {dim}")
        self.proj = nn.Linear(text_dim, dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:  # (I, T) → (I, D)
        return self.proj(text)


class HistoryFusion(nn.Module):
    """Transformer encoder over [user token] + L history item tokens → one (D,) user vector per history.

    Two layouts of the same tokens (position 0 = the user token, position a + 1 = the item of age a,
    0 = the newest):

    - ``causal=False`` (set): the user token reads every item; its output is the user vector.
    - ``causal=True`` (sequence, next-item data): the items run oldest → newest after the user token,
      each attends only to itself and what came before, and the newest item's output is the user
      vector. Training then reads every position's output (:meth:`sequence`): one pass gives a
      next-item target for every item of a window, SASRec-style, and inference is that same pass's
      last position. Masked-out items are removed (the rest close up), so a history with a hole is
      exactly the shorter history.
    """

    def __init__(self, dim: int, history_len: int, layers: int, heads: int, dropout: float, causal: bool = False,
                 position_std: float = 0.1):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"model.dim ({dim}) must be divisible by model.transformer_heads ({heads})")
        if history_len < 1:
            raise ValueError(f"model.history_len must be >= 1, got {history_len}")
        self.causal = causal
        self.position = nn.Embedding(history_len + 1, dim)
        # by default on the item tokens' scale (SoraModel's embeddings start at std 0.1): at nn.Embedding's
        # std 1 they outweigh the items tenfold and a long causal window learns mostly order
        # (``model.position_std``; a cold-item split tries both on valid)
        nn.init.normal_(self.position.weight, std=position_std)
        self.anonymous = nn.Parameter(torch.zeros(dim))  # user token for a history without a user id
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.LayerNorm(dim)

    def drop_key_bias_grad(self) -> None:
        """Zero the gradient of the attention keys' bias (call after backward).

        A key bias adds q·b to every key a query sees alike, which softmax cannot see: its gradient is
        rounding noise, which AdamW would scale up to full-size steps (weights then drift apart between
        devices, thread counts and ranks, with no effect on any output). It starts at zero and stays there.
        """
        d = self.position.weight.shape[1]
        for layer in self.encoder.layers:
            grad = layer.self_attn.in_proj_bias.grad
            if grad is not None:
                grad[d:2 * d] = 0

    def forward(self, user_token: torch.Tensor | None, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """user_token (B, D) or None (anonymous); items (B, L, D) newest first; mask (B, L) True where a real item."""
        b, n_hist, d = items.shape
        if user_token is None:
            user_token = self.anonymous.expand(b, d)
        if self.causal:
            # close up holes (stable: newest first kept), then oldest first: the newest sits last
            order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
            items = items.gather(1, order[..., None].expand(-1, -1, d)).flip(1)
            mask = mask.gather(1, order).flip(1)
            position = torch.cat([self.position.weight[:1], self.position.weight[1:n_hist + 1].flip(0)])
        else:
            position = self.position.weight[: n_hist + 1]
        tokens = torch.cat([user_token[:, None, :], items], dim=1) + position[None]  # (B, L+1, D)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], dim=1)  # (B, L+1)
        if not self.training and not torch.is_grad_enabled():
            return self._infer(tokens, keep) + user_token
        if self.causal:
            out = self.encoder(tokens, mask=_future(n_hist + 1, tokens.device), src_key_padding_mask=~keep)
            last = torch.where(mask[:, -1], n_hist, 0)  # the newest item; the user token when there is none
            return self.out(out[torch.arange(b, device=out.device), last]) + user_token
        out = self.encoder(tokens, src_key_padding_mask=~keep)  # (B, L+1, D)
        return self.out(out[:, 0]) + user_token  # residual keeps the graph signal

    def sequence(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Causal training pass, anonymous user: items (B, L, D) oldest first, left-padded; mask (B, L).

        Returns (B, L, D): position t's output sees items ≤ t, exactly what :meth:`forward` returns for
        the history ending at t when t is the last position of a full window.
        """
        b, n_hist, d = items.shape
        user_token = self.anonymous.expand(b, d)
        position = torch.cat([self.position.weight[:1], self.position.weight[1:n_hist + 1].flip(0)])
        tokens = torch.cat([user_token[:, None, :], items], dim=1) + position[None]
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], dim=1)
        out = self.encoder(tokens, mask=_future(n_hist + 1, tokens.device), src_key_padding_mask=~keep)
        return self.out(out[:, 1:]) + user_token[:, None, :]

    def _infer(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder's eval-mode forward, token 0's output normalised; the same numbers as ``self.encoder``.

        Serving calls this once per request with a handful of tokens, where ``nn.TransformerEncoder``'s
        per-call checks cost more than the arithmetic: here, positions no row uses are dropped, the
        layers run as plain functional ops, and attention skips padded keys through a boolean mask.
        """
        cols = keep.any(0)
        if not bool(cols.all()):
            tokens, keep = tokens[:, cols], keep[:, cols]
        attn_mask = None if bool(keep.all()) else keep[:, None, None, :]  # (B, 1, 1, S): True = attend
        if self.causal:
            past = ~_future(tokens.shape[1], tokens.device)  # (S, S) True = attend
            attn_mask = past[None, None] if attn_mask is None else attn_mask & past[None, None]
        x = tokens
        for layer in self.encoder.layers:
            if layer.norm_first:
                x = x + self._attend(layer, _norm(layer.norm1, x), attn_mask)
                x = x + self._feed_forward(layer, _norm(layer.norm2, x))
            else:
                x = _norm(layer.norm1, x + self._attend(layer, x, attn_mask))
                x = _norm(layer.norm2, x + self._feed_forward(layer, x))
        if self.causal:
            last = torch.where(keep[:, -1], x.shape[1] - 1, 0)  # the newest item; the user token when none
            return _norm(self.out, x[torch.arange(len(x), device=x.device), last])
        return _norm(self.out, x[:, 0])

    @staticmethod
    def _attend(layer: nn.TransformerEncoderLayer, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        sa = layer.self_attn
        b, s, d = x.shape
        h = sa.num_heads
        q, k, v = F.linear(x, sa.in_proj_weight, sa.in_proj_bias).view(b, s, 3, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, S, D/H)
        return F.linear(out.transpose(1, 2).reshape(b, s, d), sa.out_proj.weight, sa.out_proj.bias)

    @staticmethod
    def _feed_forward(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
        return F.linear(layer.activation(F.linear(x, layer.linear1.weight, layer.linear1.bias)),
                        layer.linear2.weight, layer.linear2.bias)


def _future(n: int, device) -> torch.Tensor:
    """(n, n) bool, True where the key comes after the query (blocked in a causal pass)."""
    idx = torch.arange(n, device=device)
    return idx[None, :] > idx[:, None]


def _norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class SoraModel(nn.Module):
    """Learned parts of Sora; ``graph_encoder`` is any module mapping node inputs to graph embeddings."""

    def __init__(self, cfg: ModelConfig, num_users: int, num_items: int, text_dim: int,
                 warm_items: torch.Tensor, graph_encoder: nn.Module | None = None, causal: bool = False):
        super().__init__()
        if cfg.dim <= 0:
            raise ValueError(f"model.dim must be positive, got {cfg.dim}")
        if num_users <= 0 or num_items <= 0:
            raise ValueError(f"need at least one user and one item, got {num_users}, {num_items}")
        if warm_items.shape != (num_items,):
            raise ValueError(f"warm_items must have shape ({num_items},), got {tuple(warm_items.shape)}")
        if cfg.use_text and text_dim <= 0:
            raise ValueError("model.use_text needs text embeddings (text_dim > 0)")
        self.cfg = cfg
        self.user_emb = nn.Embedding(num_users, cfg.dim)
        self.item_emb = nn.Embedding(num_items, cfg.dim)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self.register_buffer("warm", warm_items.float()[:, None], persistent=False)  # (I, 1)
        self.text_in = TextProjector(text_dim, cfg.dim) if cfg.use_text else None
        self.text_out = TextProjector(text_dim, cfg.dim) if cfg.use_text else None
        if self.text_out is not None:
            # A bias on the item vectors adds u·b to every item of a user alike, which no loss can see (softmax
            # and BPR compare items of one user). Its gradient is pure rounding noise, which AdamW scales up to
            # full-size steps: left learnable it drifts by ~lr a step, differently per device and thread count,
            # shifting every score of a user (0.39 between CPU and CUDA) and the spread the head's weight is
            # scaled to. Held at zero; kept as a parameter so saved models load either way.
            nn.init.zeros_(self.text_out.proj.bias)
            self.text_out.proj.bias.requires_grad_(False)
        self.fusion = (HistoryFusion(cfg.dim, cfg.history_len, cfg.transformer_layers, cfg.transformer_heads,
                                     cfg.dropout, causal, cfg.position_std) if cfg.use_transformer else None)
        self.graph_encoder = graph_encoder

    def node_inputs(self, text: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, D) user inputs, (I, D) item inputs: id embedding (warm items only) + text projection."""
        h_item = self.item_emb.weight * self.warm
        if self.text_in is not None:
            h_item = h_item + self.text_in(text)
        return self.user_emb.weight, h_item

    def propagate(self, graph, text: torch.Tensor | None, edge_keep=None) -> tuple[torch.Tensor, torch.Tensor]:
        h_user, h_item = self.node_inputs(text)
        if self.graph_encoder is None or graph is None:
            return h_user, h_item
        return self.graph_encoder(graph, h_user, h_item, edge_keep=edge_keep)

    def item_vectors(self, g_item: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """(I, D) item vectors: graph embedding fused with the item's text."""
        return g_item + self.text_out(text) if self.text_out is not None else g_item

    def user_vectors(self, g_user: torch.Tensor | None, history: torch.Tensor, mask: torch.Tensor,
                     g_item: torch.Tensor) -> torch.Tensor:
        """g_user (B, D) or None for anonymous users; history (B, L) item indices; mask (B, L) → (B, D)."""
        if self.fusion is not None:
            return self.fusion(g_user, g_item[history], mask)
        if g_user is not None:
            return g_user
        m = mask.float()[..., None]
        return (g_item[history] * m).sum(1) / m.sum(1).clamp(min=1.0)
