"""∞-AE (sora.model.infinite_ae): properties of the kernel, the closed form and the λ walk on tiny data."""

import numpy as np
import pytest
import scipy.sparse as sp

from sora.model.infinite_ae import InfiniteAE, choose_lambda, ntk


def random_rows(users: int = 40, items: int = 25, p: float = 0.2, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((users, items)) < p).astype(np.float64))


def planted(users_per_block: int = 10, items_per_block: int = 8) -> sp.csr_matrix:
    """Two communities: block b's users interact with most of block b's items and none of the other's."""
    rng = np.random.default_rng(1)
    x = np.zeros((2 * users_per_block, 2 * items_per_block))
    for b in range(2):
        rows = slice(b * users_per_block, (b + 1) * users_per_block)
        cols = slice(b * items_per_block, (b + 1) * items_per_block)
        x[rows, cols] = rng.random((users_per_block, items_per_block)) < 0.7
    return sp.csr_matrix(x)


def test_kernel_is_symmetric_psd_and_consistent_across_calls():
    x = random_rows()
    k = ntk(x)
    assert k.shape == (40, 40)
    np.testing.assert_array_equal(k, k.T)
    assert np.linalg.eigvalsh(k).min() > -1e-9
    # the cross kernel between two row sets is the same function, sparse or dense
    np.testing.assert_allclose(ntk(x[:5], x), k[:5], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ntk(x.toarray()[5:9], x[:3]), ntk(x[:3], x[5:9]).T, rtol=1e-12)
    # Cauchy–Schwarz, as any kernel: |K(u, v)| ≤ √(K(u, u)·K(v, v))
    d = np.sqrt(np.diag(k))
    assert (np.abs(k) <= np.outer(d, d) + 1e-12).all()


def test_kernel_refuses_two_catalogues():
    with pytest.raises(ValueError, match="catalogue"):
        ntk(random_rows(items=5), random_rows(items=6))


def test_scores_have_the_shapes_and_agree_between_own_rows_and_any_rows():
    x = random_rows()
    m = InfiniteAE.fit(x)
    assert (m.num_users, m.num_items) == (40, 25)
    np.testing.assert_allclose(m.kernel(), ntk(x), atol=1e-10)
    users = np.array([3, 0, 17])
    own = m.score_users(users, 0.5)
    assert own.shape == (3, 25) and m.alpha(0.5).shape == (40, 25)
    np.testing.assert_allclose(own, m.score_rows(x[users], 0.5), atol=1e-10)
    np.testing.assert_allclose(own, m.score_rows(x[users].toarray() * 3.0, 0.5), atol=1e-10)  # binarised
    assert m.score_fn(0.5)(users).shape == (3, 25)
    with pytest.raises(ValueError):
        m.ridge(0.0)


def test_small_lambda_reconstructs_and_large_lambda_shrinks_towards_kernel_weighted_popularity():
    x = random_rows()
    m = InfiniteAE.fit(x)
    users = np.arange(40)
    np.testing.assert_allclose(m.score_users(users, 1e-9), x.toarray(), atol=1e-4)  # K invertible: interpolates
    norms = [np.linalg.norm(m.score_users(users, lam)) for lam in (0.01, 0.1, 1.0, 10.0, 100.0)]
    assert all(a > b for a, b in zip(norms[:-1], norms[1:], strict=True))
    # λ → ∞: K (K + rI)⁻¹ X · r → K X, each user's kernel-weighted item counts
    lam = 1e7
    np.testing.assert_allclose(m.score_users(users, lam) * m.ridge(lam), ntk(x) @ x.toarray(), rtol=1e-4)


def test_planted_communities_own_items_first_then_own_block():
    x = planted()
    m = InfiniteAE.fit(x)
    scores = m.score_users(np.arange(x.shape[0]), 1.0)
    dense = x.toarray()
    for u in range(x.shape[0]):
        block = u // 10
        own_block = np.zeros(16, dtype=bool)
        own_block[block * 8:(block + 1) * 8] = True
        seen = dense[u] > 0
        unseen_in_block = own_block & ~seen
        assert scores[u, seen].min() > scores[u, ~seen].max()
        if unseen_in_block.any():  # what the user has not seen: their community's items above the other's
            assert scores[u, unseen_in_block].min() > scores[u, ~own_block].max()


def test_lambda_walk_finds_the_peak_up_and_down():
    up = choose_lambda(lambda lam: -(np.log2(lam) - 3) ** 2)
    assert up.lam == 8.0 and set(up.valid) == {1.0, 2.0, 4.0, 8.0, 16.0}
    down = choose_lambda(lambda lam: -(np.log2(lam) + 2) ** 2)
    assert down.lam == 0.25
    edge = choose_lambda(lambda lam: lam, max_steps=3)  # monotone: stops at the walk's end
    assert edge.lam == 8.0


def test_kernel_is_the_wide_networks_empirical_ntk():
    """The closed form against Σ_θ ∂f(x)/∂θ·∂f(x')/∂θ of one wide ReLU network in the NTK parameterisation."""
    rng = np.random.default_rng(0)
    d, width, w_std, b_std = 20, 200_000, 2 ** 0.5, 0.1
    x = (rng.random((4, d)) < 0.3).astype(np.float64)
    w1, b1, w2 = rng.standard_normal((width, d)), rng.standard_normal(width), rng.standard_normal(width)
    pre = (w_std / np.sqrt(d)) * x @ w1.T + b_std * b1  # (4, width)
    h, dh = np.maximum(pre, 0.0), (pre > 0).astype(np.float64)
    first_layer = (w_std ** 2 / d) * x @ x.T + b_std ** 2
    empirical = (b_std ** 2 + (w_std ** 2 / width) * h @ h.T
                 + (w_std ** 2 / width) * ((w2 ** 2 * dh) @ dh.T) * first_layer)
    np.testing.assert_allclose(ntk(x), empirical, rtol=0.03, atol=0.01)
