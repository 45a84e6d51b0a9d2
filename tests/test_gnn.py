"""GraphEncoder: the torch sparse backend against DGL's multi_update_all and a hand-computed graph."""

import math

import numpy as np
import pytest
import torch

from sora.config import GraphConfig
from sora.model.gnn import GraphEncoder, TorchGraph
from sora.model.graph import ALL_ETYPES, COOCCUR, ITEM_USER, SOCIAL, TEXT_SIM, USER_ITEM, build_graph

# name → (users, items, num_users, num_items), as in tests/test_graph.py
TINY = {
    "single_edge": (np.array([0]), np.array([0]), 1, 2),
    "cold_item": (np.array([0, 0, 1, 2]), np.array([0, 1, 2, 3]), 3, 5),
    "isolated_user": (np.array([0, 1]), np.array([0, 1]), 3, 3),
    "duplicates": (np.array([0, 0, 0, 1]), np.array([1, 1, 1, 2]), 2, 3),
}


def _random_graph(seed=0, nu=30, ni=40, n=150):
    """A heterograph with every edge type (interactions, text kNN, co-occurrence, social kNN)."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, nu, n), rng.integers(0, ni, n)
    text = rng.normal(size=(ni, 8)).astype(np.float32)
    g = build_graph(users, items, nu, ni, text, GraphConfig(item_knn_k=4, item_edges="text,cooccur",
                                                           user_edges="knn", cooccur_k=5, user_knn_k=3))
    assert set(g.canonical_etypes) == set(ALL_ETYPES)
    return g


def _inputs(nu, ni, d=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(nu, d, generator=gen, requires_grad=True),
            torch.randn(ni, d, generator=gen, requires_grad=True))


def _run(encoder, graph, hu, hi, keep=None):
    """Forward and gradients of a fixed non-linear function of the outputs."""
    for t in (hu, hi):
        t.grad = None
    out_u, out_i = encoder(graph, hu, hi, edge_keep=keep)
    ((out_u ** 2).sum() + (out_i * torch.arange(out_i.shape[1])).sum()).backward()
    return out_u.detach(), out_i.detach(), hu.grad.clone(), hi.grad.clone()


def test_hand_computed_three_node_graph():
    # one user who rated both items: LightGCN norm on every edge is 1/sqrt(deg_out(src) · deg_in(dst)) = 1/sqrt(2)
    g = build_graph(np.array([0, 0]), np.array([0, 1]), 1, 2, None, GraphConfig(item_edges="none", user_edges="none"))
    hu = torch.tensor([[1.0, 2.0]])
    hi = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    r = 1 / math.sqrt(2)
    # layer 1: user ← (i0 + i1)·r; item_k ← u·r.  layer 2: user ← (u·r + u·r)·r = u; item_k ← (i0 + i1)·r·r
    l1_u, l1_i = (hi[0] + hi[1]) * r, hu.repeat(2, 1) * r
    l2_u, l2_i = hu, ((hi[0] + hi[1]) * r * r).repeat(2, 1)
    expected_u, expected_i = (hu + l1_u + l2_u) / 3, (hi + l1_i + l2_i) / 3
    enc = GraphEncoder(g.canonical_etypes, num_layers=2)
    for graph in (g, TorchGraph.from_dgl(g)):
        out_u, out_i = enc(graph, hu, hi)
        torch.testing.assert_close(out_u, expected_u)
        torch.testing.assert_close(out_i, expected_i)


@pytest.mark.parametrize("layers,side_weight,dropout", [(1, 0.5, 0.0), (2, 0.3, 0.0), (3, 0.7, 0.3)])
def test_torch_backend_equals_dgl_on_every_edge_type(layers, side_weight, dropout):
    g = _random_graph()
    tg = TorchGraph.from_dgl(g)
    enc = GraphEncoder(g.canonical_etypes, layers, side_weight)
    keep = None
    if dropout:
        gen = torch.Generator().manual_seed(3)
        keep = {et: (torch.rand(g.num_edges(et), generator=gen) >= dropout).float() / (1 - dropout)
                for et in g.canonical_etypes}
        assert all(tg.num_edges(et) == g.num_edges(et) for et in g.canonical_etypes)
    hu, hi = _inputs(g.num_nodes("user"), g.num_nodes("item"))
    ref = _run(enc, g, hu, hi, keep)
    got = _run(enc, tg, hu, hi, keep)
    for a, b in zip(ref, got, strict=True):
        assert float((a - b).abs().max()) <= 1e-5


def test_encoder_over_a_subset_of_edge_types():
    g = _random_graph(seed=4)
    enc = GraphEncoder([USER_ITEM, ITEM_USER, SOCIAL], 2, 0.5)  # graph has text and co-occurrence edges too
    hu, hi = _inputs(g.num_nodes("user"), g.num_nodes("item"))
    for a, b in zip(_run(enc, g, hu, hi), _run(enc, TorchGraph.from_dgl(g), hu, hi), strict=True):
        assert float((a - b).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_graphs_agree(name):
    users, items, nu, ni = TINY[name]
    text = np.random.default_rng(0).normal(size=(ni, 4)).astype(np.float32)
    g = build_graph(users, items, nu, ni, text, GraphConfig(item_knn_k=2, item_edges="text,cooccur"))
    enc = GraphEncoder(g.canonical_etypes, 2, 0.5)
    hu, hi = _inputs(nu, ni)
    for a, b in zip(_run(enc, g, hu, hi), _run(enc, TorchGraph.from_dgl(g), hu, hi), strict=True):
        assert float((a - b).abs().max()) <= 1e-5


def test_zero_layers_is_identity_and_isolated_nodes_keep_their_input_share():
    users, items, nu, ni = TINY["isolated_user"]
    g = TorchGraph.from_dgl(build_graph(users, items, nu, ni, None, GraphConfig(item_edges="none")))
    hu, hi = torch.randn(nu, 3), torch.randn(ni, 3)
    out_u, out_i = GraphEncoder(g.canonical_etypes, 0)(g, hu, hi)
    assert torch.equal(out_u, hu) and torch.equal(out_i, hi)
    out_u, _ = GraphEncoder(g.canonical_etypes, 2)(g, hu, hi)
    torch.testing.assert_close(out_u[2], hu[2] / 3)  # user 2 has no edge: only layer 0 contributes


def test_torch_graph_moves_and_keeps_its_structure():
    g = _random_graph(seed=2)
    tg = TorchGraph.from_dgl(g)
    moved = tg.to("cpu")
    assert moved.device.type == "cpu" and moved.canonical_etypes == tg.canonical_etypes
    assert sum(tg.num_edges(et) for et in tg.canonical_etypes) == len(tg.norm) == len(tg.slot) >= len(tg.col)
    assert {TEXT_SIM, COOCCUR} <= set(tg.canonical_etypes)
    with pytest.raises(ValueError, match="num_layers"):
        GraphEncoder(tg.canonical_etypes, -1)


def test_a_pair_joined_by_two_edge_types_sums_both_messages():
    one = torch.tensor([0])
    tg = TorchGraph.from_edges(1, 2, {TEXT_SIM: (one, one + 1, torch.tensor([0.5])),
                                      COOCCUR: (one, one + 1, torch.tensor([0.25]))})
    assert len(tg.col) == 1 and len(tg.slot) == 2  # one CSR entry carrying both edges
    hu, hi = torch.zeros(1, 2), torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    _, out_i = GraphEncoder(tg.canonical_etypes, 1, side_weight=0.5)(tg, hu, hi)
    torch.testing.assert_close(out_i[1], 0.5 * (0.5 + 0.25) * hi[0] / 2)  # mean of layer 0 (zero) and layer 1
    keep = {TEXT_SIM: torch.tensor([0.0]), COOCCUR: torch.tensor([1.0])}
    _, out_i = GraphEncoder(tg.canonical_etypes, 1, side_weight=0.5)(tg, hu, hi, edge_keep=keep)
    torch.testing.assert_close(out_i[1], 0.5 * 0.25 * hi[0] / 2)
