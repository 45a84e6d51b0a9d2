"""A registry of tiny graphs run through the graph builder (DGL's own tests do the same per layer)."""

import numpy as np
import pytest

from sora.config import GraphConfig
from sora.model.graph import COOCCUR, ITEM_USER, SOCIAL, TEXT_SIM, USER_ITEM, build_graph

# name → (users, items, num_users, num_items); item 4 of "cold_item" has no interaction
TINY = {
    "single_edge": (np.array([0]), np.array([0]), 1, 2),
    "cold_item": (np.array([0, 0, 1, 2]), np.array([0, 1, 2, 3]), 3, 5),
    "isolated_user": (np.array([0, 1]), np.array([0, 1]), 3, 3),
    "duplicates": (np.array([0, 0, 0, 1]), np.array([1, 1, 1, 2]), 2, 3),
}


def _vectors(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def _edge_set(g, etype):
    s, d = g.edges(etype=etype)
    return set(zip(s.tolist(), d.tolist(), strict=True))


@pytest.mark.parametrize("name", list(TINY))
def test_interaction_edges_unique_and_mirrored(name):
    users, items, nu, ni = TINY[name]
    g = build_graph(users, items, nu, ni, _vectors(ni), GraphConfig(item_knn_k=2, item_edges="text"))
    ui = _edge_set(g, USER_ITEM)
    assert ui == set(zip(users.tolist(), items.tolist(), strict=True))  # duplicates collapse
    assert {(i, u) for u, i in ui} == _edge_set(g, ITEM_USER)
    assert g.num_nodes("user") == nu and g.num_nodes("item") == ni


@pytest.mark.parametrize("name", list(TINY))
def test_item_edges_symmetric_without_self_loops(name):
    users, items, nu, ni = TINY[name]
    g = build_graph(users, items, nu, ni, _vectors(ni), GraphConfig(item_knn_k=2, item_edges="text,cooccur"))
    for etype in (TEXT_SIM, COOCCUR):
        edges = _edge_set(g, etype)
        assert edges == {(b, a) for a, b in edges}
        assert all(a != b for a, b in edges)
    assert _edge_set(g, TEXT_SIM)  # every catalogue with 2+ items gets text edges


def test_self_loops_only_when_configured():
    users, items, nu, ni = TINY["cold_item"]
    g = build_graph(users, items, nu, ni, _vectors(ni), GraphConfig(item_knn_k=2, item_edges="text", self_loops=True))
    assert all((i, i) in _edge_set(g, TEXT_SIM) for i in range(ni))


def test_cold_item_reachable_only_through_item_edges():
    users, items, nu, ni = TINY["cold_item"]
    g = build_graph(users, items, nu, ni, _vectors(ni), GraphConfig(item_knn_k=2, item_edges="text,cooccur"))
    assert g.in_degrees(4, etype=USER_ITEM) == 0 and g.out_degrees(4, etype=ITEM_USER) == 0
    assert g.in_degrees(4, etype=TEXT_SIM) > 0
    assert g.in_degrees(4, etype=COOCCUR) == 0


def test_edge_counts_and_knn_k():
    users, items, nu, ni = TINY["cold_item"]
    g = build_graph(users, items, nu, ni, _vectors(ni), GraphConfig(item_knn_k=1, item_edges="text"))
    assert g.num_edges(USER_ITEM) == 4
    # each item lists 1 neighbour; symmetrised, each item has at least 1 and at most ni-1 neighbours
    deg = g.out_degrees(etype=TEXT_SIM)
    assert (deg >= 1).all() and g.num_edges(TEXT_SIM) <= 2 * ni


def test_norm_is_lightgcn_on_unit_weights():
    users, items, nu, ni = TINY["cold_item"]
    g = build_graph(users, items, nu, ni, None, GraphConfig(item_edges="none"))
    s, d = g.edges(etype=USER_ITEM)
    du, di = g.out_degrees(s, etype=USER_ITEM).float(), g.in_degrees(d, etype=USER_ITEM).float()
    np.testing.assert_allclose(g.edges[USER_ITEM].data["norm"].numpy(), (1 / np.sqrt(du * di)).numpy(), rtol=1e-6)
    assert TEXT_SIM not in g.canonical_etypes


def test_user_edges_given_and_knn():
    users, items, nu, ni = TINY["duplicates"]
    given = (np.array([0]), np.array([1]), np.array([1.0], np.float32))
    g = build_graph(users, items, nu, ni, None, GraphConfig(item_edges="none", user_edges="given"), user_edges=given)
    assert _edge_set(g, SOCIAL) == {(0, 1), (1, 0)}
    g = build_graph(np.array([0, 1, 2]), np.array([0, 0, 1]), 3, 2, None,
                    GraphConfig(item_edges="none", user_edges="knn"))
    assert _edge_set(g, SOCIAL) == {(0, 1), (1, 0)}  # users 0 and 1 share item 0; user 2 shares nothing


def test_knn_batches_agree_with_one_shot():
    from sora.model.itemsim import knn_cosine

    v = _vectors(50, seed=3)
    a = knn_cosine(v, 5, batch_size=7)
    b = knn_cosine(v, 5, batch_size=1000)
    assert set(zip(a[0].tolist(), a[1].tolist(), strict=True)) == set(zip(b[0].tolist(), b[1].tolist(), strict=True))


def _recall(approx, exact):
    """Share of the exact neighbour pairs that the approximate kNN lists too."""
    want = set(zip(exact[0].tolist(), exact[1].tolist(), strict=True))
    return len(want & set(zip(approx[0].tolist(), approx[1].tolist(), strict=True))) / len(want)


def test_ivf_knn_recalls_the_exact_neighbours_and_graph_uses_it_above_the_limit():
    from sora.model.itemsim import auto_knn_nlist, knn_cosine, knn_cosine_ivf

    rng = np.random.default_rng(4)  # 40 overlapping clusters of ~50 items: the shape text embeddings have
    v = (rng.normal(size=(40, 16))[rng.integers(40, size=2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    exact = knn_cosine(v, 5)
    nlist = auto_knn_nlist(len(v))
    assert 1 < nlist < len(v) // 39 + 1
    every_cell = knn_cosine_ivf(v, 5, nprobe=nlist)
    few, default = knn_cosine_ivf(v, 5, nprobe=1), knn_cosine_ivf(v, 5)
    assert _recall(every_cell, exact) > 0.999  # probing every cell is exact search (ties aside)
    assert _recall(default, exact) >= 0.9 > _recall(few, exact)  # more cells probed, more found
    for src, dst, w in (few, default):
        assert (src != dst).all() and np.bincount(src, minlength=len(v)).max() == 5
        assert np.all(w <= 1.0 + 1e-5) and w.dtype == np.float32
    again = knn_cosine_ivf(v, 5)
    for a, b in zip(default, again, strict=True):  # seeded: the same graph every run
        np.testing.assert_array_equal(a, b)
    users, items, nu, ni = TINY["cold_item"]
    g = build_graph(users, items, nu, ni, _vectors(ni), GraphConfig(item_knn_k=2, item_edges="text",
                                                                   knn_exact_max_items=2))
    edges = _edge_set(g, TEXT_SIM)
    assert edges and edges == {(b, a) for a, b in edges}


def test_parallel_item_item_work_equals_one_thread():
    """The sparse EASE head and the co-occurrence lists on several threads are the one-thread result, bit for bit."""
    import numpy as np
    import scipy.sparse as sp

    from sora.model.itemsim import cooccurrence_topk, ease_sparse

    x = sp.random(300, 120, density=0.08, random_state=4, format="csr")
    x.data[:] = 1.0
    one = cooccurrence_topk(x, 7, max_block_nnz=500, workers=1)
    many = cooccurrence_topk(x, 7, max_block_nnz=500, workers=3)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)
    h1 = ease_sparse(x, 30.0, 10, max_union=40, workers=1)
    h3 = ease_sparse(x, 30.0, 10, max_union=40, workers=3)
    assert h1.nnz > 0 and (h1 != h3).nnz == 0
