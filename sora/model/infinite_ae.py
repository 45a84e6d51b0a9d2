"""The infinite-width autoencoder (∞-AE; Sachdeva, Dhaliwal, Wu, McAuley, NeurIPS 2022), in closed form.

An autoencoder with one ReLU hidden layer, trained to reconstruct users' binary rows, becomes kernel
ridge regression with its neural tangent kernel (NTK) as the hidden layer grows to infinite width:

    K = NTK(X, X)                    (U, U)   between the users' training rows
    α = (K + r·I)⁻¹ X                (U, I)   dual weights; r = λ · trace(K) / U
    scores(Q) = NTK(Q, X) · α        (B, I)   for query rows Q (B, I), e.g. a user's training row

Letters: U users (the rows the kernel is built on), I items, B a batch of query rows. λ is relative to the
mean diagonal of K, as in the authors' code, so one λ grid fits any dataset size.

The kernel is the NTK of ``Dense(W_std=√2, b_std=0.1) → ReLU → Dense`` in the NTK parameterisation (the
authors' depth-1 network), for inputs x, x' ∈ {0, 1}^I:

    Σ(x, x')  = 2·⟨x, x'⟩ / I + 0.01                              first layer's covariance
    θ         = arccos(Σ(x, x') / √(Σ(x, x)·Σ(x', x')))
    E[φφ']    = √(Σ(x, x)·Σ(x', x')) · (sin θ + (π − θ)·cos θ) / 2π   ReLU (arc-cosine kernel, order 1)
    E[φ̇φ̇']    = (π − θ) / 2π                                          ReLU's derivative
    NTK(x, x') = 2·E[φφ'] + 0.01 + 2·Σ(x, x')·E[φ̇φ̇']

Cost and where it stops: the model is user–user, so it holds the (U, U) kernel and its eigenvectors
(2 · 8·U² bytes in float64) plus VᵀX (8·U·I bytes) and costs O(U³) once (one eigendecomposition, after
which every λ costs O(U²·I)). ML-100K (U=943) takes well under a second; ML-1M (U=6,040) about half a
GB and tens of seconds on 2 cores; at U≈30k the kernel alone is 7 GB and the decomposition takes hours
on a small CPU, and at U≈100k (16 GB per (U, U) matrix) it is out of reach without sampling the users
the kernel is built on (the authors' "user support", or their distilled Distill-CF).

Pure numpy / scipy / torch: no DGL, no MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from sora.model.walk import geometric_walk

log = logging.getLogger(__name__)

#: the authors' weight and bias variances (W_std = √2, b_std = 0.1)
W_VAR = 2.0
B_VAR = 0.01
#: where the λ walk starts (relative to the mean diagonal of K) and its step factor
LAMBDA_START = 1.0
LAMBDA_FACTOR = 2.0

Rows = np.ndarray | sp.spmatrix


def _dense_dot(a: Rows, b: Rows) -> np.ndarray:
    """⟨a_i, b_j⟩ as a dense float64 (A, B) array, for sparse or dense rows."""
    out = a @ b.T
    return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float64)


def _squared_norms(a: Rows) -> np.ndarray:
    """|a_i|² (A,) for sparse or dense rows."""
    if sp.issparse(a):
        return np.asarray(a.multiply(a).sum(1), dtype=np.float64).ravel()
    a = np.asarray(a, dtype=np.float64)
    return np.einsum("ij,ij->i", a, a)


def ntk(a: Rows, b: Rows | None = None) -> np.ndarray:
    """The NTK of the authors' one-hidden-layer ReLU autoencoder between rows ``a`` (A, I) and ``b`` (B, I).

    ``b`` None: ``a`` with itself (the (A, A) training kernel). Returns (A, B) float64.
    """
    same = b is None
    b = a if same else b
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"rows of {a.shape[1]} and {b.shape[1]} items: the kernel needs one catalogue")
    n_items = max(a.shape[1], 1)
    sigma = W_VAR * _dense_dot(a, b) / n_items + B_VAR                      # (A, B)
    da = W_VAR * _squared_norms(a) / n_items + B_VAR                         # (A,)
    db = da if same else W_VAR * _squared_norms(b) / n_items + B_VAR         # (B,)
    norm = np.sqrt(np.outer(da, db))
    theta = np.arccos(np.clip(sigma / norm, -1.0, 1.0))
    e_relu = norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    e_grad = (np.pi - theta) / (2 * np.pi)
    k = W_VAR * e_relu + B_VAR + W_VAR * sigma * e_grad
    if same:  # exact symmetry (the float rounding of arccos is not)
        k = (k + k.T) / 2
    return k


@dataclass
class InfiniteAE:
    """∞-AE fitted on binary training rows ``x`` (U, I): the kernel's eigendecomposition, so each λ is cheap.

    :meth:`fit` builds it; :meth:`score_users` scores the training rows themselves (K[users] · α, what a
    random split's valid and test read), :meth:`score_rows` any other rows (a history that grew, a new user).
    """

    x: sp.csr_matrix                     # (U, I) the support rows
    eigvals: np.ndarray                  # (U,) of K, ascending, clipped at 0
    eigvecs: np.ndarray                  # (U, U) columns: K's eigenvectors
    proj: np.ndarray                     # (U, I) Vᵀ X
    mean_diag: float                     # trace(K) / U: the unit of λ
    _alpha: dict[float, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def fit(cls, x: sp.spmatrix | np.ndarray) -> InfiniteAE:
        """Kernel of ``x`` (U, I) (any nonzero is an interaction) and its eigendecomposition: O(U³) once."""
        x = sp.csr_matrix(x, dtype=np.float64)
        x.data[:] = 1.0
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"∞-AE needs at least one user and one item, got rows of shape {x.shape}")
        k = ntk(x)
        s, v = np.linalg.eigh(k)
        return cls(x, np.clip(s, 0.0, None), v, v.T @ x.toarray(), float(np.trace(k)) / x.shape[0])

    @property
    def num_users(self) -> int:
        return self.x.shape[0]

    @property
    def num_items(self) -> int:
        return self.x.shape[1]

    def ridge(self, lam: float) -> float:
        """The absolute ridge r = λ · trace(K) / U added to K's diagonal."""
        if lam <= 0:
            raise ValueError(f"λ must be positive, got {lam}")
        return lam * self.mean_diag

    def kernel(self) -> np.ndarray:
        """K (U, U), rebuilt from the eigendecomposition."""
        return (self.eigvecs * self.eigvals) @ self.eigvecs.T

    def alpha(self, lam: float) -> np.ndarray:
        """Dual weights α = (K + r·I)⁻¹ X (U, I); the last λ asked is cached."""
        if lam not in self._alpha:
            self._alpha.clear()
            self._alpha[lam] = self.eigvecs @ (self.proj / (self.eigvals + self.ridge(lam))[:, None])
        return self._alpha[lam]

    def score_users(self, users: np.ndarray, lam: float) -> np.ndarray:
        """Scores (B, I) of support users ``users`` (B,) from their own rows: K[users] · α, O(B·U·I)."""
        users = np.asarray(users, dtype=np.int64)
        shrink = self.eigvals / (self.eigvals + self.ridge(lam))  # K (K + rI)⁻¹ in K's eigenbasis
        return (self.eigvecs[users] * shrink) @ self.proj

    def score_rows(self, rows: Rows, lam: float) -> np.ndarray:
        """Scores (B, I) of any binary rows (B, I): NTK(rows, X) · α."""
        if sp.issparse(rows):
            rows = sp.csr_matrix(rows, dtype=np.float64)
            rows.data[:] = 1.0
        else:
            rows = (np.asarray(rows) != 0).astype(np.float64)
        return ntk(rows, self.x) @ self.alpha(lam)

    def score_fn(self, lam: float, context: sp.csr_matrix | None = None) -> Callable[[np.ndarray], torch.Tensor]:
        """A :func:`sora.evaluation.metrics.evaluate_scores` score function: user indices (B,) → (B, I) float32 tensor.

        ``context`` None: each user's own training row (:meth:`score_users`); else that matrix's rows
        (U, I), e.g. train + valid when scoring test with everything known by then.
        """
        if context is None:
            return lambda users: torch.from_numpy(self.score_users(users, lam).astype(np.float32))
        return lambda users: torch.from_numpy(self.score_rows(context[users], lam).astype(np.float32))


@dataclass
class LambdaChoice:
    """The λ chosen (relative to trace(K)/U) and the valid metric of every λ tried."""

    lam: float
    valid: dict[float, float]


def choose_lambda(metric: Callable[[float], float], start: float = LAMBDA_START, factor: float = LAMBDA_FACTOR,
                  max_steps: int = 12) -> LambdaChoice:
    """The λ of ``start · factor**k`` (|k| ≤ ``max_steps``) with the best ``metric`` (valid NDCG@10).

    The same walk as :func:`sora.training.selection.choose_ease_lambda`: up from ``start`` while the metric improves
    strictly, down when the first step up did not. Each step costs O(U²·I) after :meth:`InfiniteAE.fit`.
    """
    lam, valid = geometric_walk(metric, start, factor, max_steps)
    log.info("∞-AE λ %g chosen on valid (ndcg@10 %.4f; by λ %s)", lam, valid[lam],
             {f"{key:g}": round(v, 4) for key, v in sorted(valid.items())})
    return LambdaChoice(lam, valid)


def fit_on_valid(x_train: sp.csr_matrix, metric: Callable[[Callable[[np.ndarray], torch.Tensor]], float],
                 **walk: Any) -> tuple[InfiniteAE, LambdaChoice]:
    """∞-AE on ``x_train`` (U, I) with λ chosen by ``metric`` (a score function → valid NDCG@10)."""
    model = InfiniteAE.fit(x_train)
    choice = choose_lambda(lambda lam: metric(model.score_fn(lam)), **walk)
    return model, choice
