"""Serving fast path: the Transformer fusion's eval forward for one history, in NumPy.

A request carries one history of at most ``model.history_len`` items. At that size a torch op costs
more in dispatch than in arithmetic (a one-layer pass is ~15 ops, ~0.25 ms); the same arithmetic in
NumPy takes a fraction of that. :class:`NumpyFusion` copies the weights of a
:class:`~sora.model.network.HistoryFusion` once and computes exactly its eval-mode forward (no dropout),
for one sequence without padding. :meth:`sora.model.recommender.Recommender.prepare_serving` builds it;
training and evaluation never use it. Tests check it against the torch module.

Letters: S tokens (1 + history), D dim, H heads.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32, copy=True)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    d = x - mu
    return d / np.sqrt((d * d).mean(-1, keepdims=True) + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:  # exact (erf) GELU, torch's default
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


class NumpyFusion:
    """``HistoryFusion`` for one history: ``(user token (D,) or None, item tokens (n, D)) → (D,)``."""

    def __init__(self, fusion) -> None:
        self.position = _np(fusion.position.weight)
        self.causal = bool(getattr(fusion, "causal", False))
        self.anonymous = _np(fusion.anonymous)
        self.layers = []
        for layer in fusion.encoder.layers:
            act = layer.activation
            if act is F.relu or isinstance(act, torch.nn.ReLU):
                act_fn = _relu
            elif act is F.gelu or isinstance(act, torch.nn.GELU):
                act_fn = _gelu
            else:
                raise ValueError(f"no NumPy fast path for activation {act!r}")
            sa = layer.self_attn
            self.layers.append({
                "norm_first": bool(layer.norm_first), "heads": int(sa.num_heads), "act": act_fn,
                "w_in": _np(sa.in_proj_weight).T.copy(), "b_in": _np(sa.in_proj_bias),
                "w_out": _np(sa.out_proj.weight).T.copy(), "b_out": _np(sa.out_proj.bias),
                "n1": (_np(layer.norm1.weight), _np(layer.norm1.bias), float(layer.norm1.eps)),
                "n2": (_np(layer.norm2.weight), _np(layer.norm2.bias), float(layer.norm2.eps)),
                "w1": _np(layer.linear1.weight).T.copy(), "b1": _np(layer.linear1.bias),
                "w2": _np(layer.linear2.weight).T.copy(), "b2": _np(layer.linear2.bias),
            })
        self.out = (_np(fusion.out.weight), _np(fusion.out.bias), float(fusion.out.eps))

    def __call__(self, user_token: np.ndarray | None, items: np.ndarray) -> np.ndarray:
        token = self.anonymous if user_token is None else user_token.astype(np.float32, copy=False)
        n = len(items)
        if self.causal:  # oldest first after the user token, each token sees what came before; read the newest
            x = np.concatenate([token[None], items[::-1]])
            x = x + np.concatenate([self.position[:1], self.position[1:n + 1][::-1]])
            past = np.tril(np.ones((n + 1, n + 1), dtype=bool))
        else:
            x = np.concatenate([token[None], items]) + self.position[: n + 1]
            past = None
        for p in self.layers:
            if p["norm_first"]:
                x = x + _attend(p, _layer_norm(x, *p["n1"]), past)
                x = x + _feed_forward(p, _layer_norm(x, *p["n2"]))
            else:
                x = _layer_norm(x + _attend(p, x, past), *p["n1"])
                x = _layer_norm(x + _feed_forward(p, x), *p["n2"])
        return _layer_norm(x[-1] if self.causal else x[0], *self.out) + token


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _attend(p: dict, x: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    s, d = x.shape
    h = p["heads"]
    q, k, v = (x @ p["w_in"] + p["b_in"]).reshape(s, 3, h, d // h).transpose(1, 2, 0, 3)  # each (H, S, D/H)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(d // h)  # (H, S, S)
    if allowed is not None:  # (S, S) True = the query may attend the key
        scores = np.where(allowed[None], scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    out = (scores / scores.sum(-1, keepdims=True)) @ v  # (H, S, D/H)
    return out.transpose(1, 0, 2).reshape(s, d) @ p["w_out"] + p["b_out"]


def _feed_forward(p: dict, x: np.ndarray) -> np.ndarray:
    return p["act"](x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
