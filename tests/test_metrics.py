"""Metrics against hand-computed cases."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sora.evaluation.metrics import evaluate_scores, metrics_from_topk, rank_all


def test_hand_computed_single_user():
    m = metrics_from_topk(np.array([[1, 2, 3]]), [{2, 5}], ks=(1, 3), num_items=10)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["hit@3"] == 1.0 and m["hit@1"] == 0.0
    assert m["mrr@3"] == pytest.approx(0.5) and m["mrr@1"] == 0.0
    dcg = 1 / math.log2(3)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx(dcg / idcg)
    assert m["coverage@3"] == pytest.approx(0.3) and m["coverage@1"] == pytest.approx(0.1)


def test_perfect_and_empty_rankings_average_over_users():
    m = metrics_from_topk(np.array([[4, 7], [0, 1]]), [{4, 7}, {9}], ks=(2,), num_items=10)
    assert m["ndcg@2"] == pytest.approx(0.5) and m["recall@2"] == pytest.approx(0.5)
    assert m["hit@2"] == pytest.approx(0.5) and m["mrr@2"] == pytest.approx(0.5)


def test_ndcg_ideal_is_capped_at_k():
    # 5 relevant items, K=2, both top slots hit → NDCG 1 (IDCG counts only K slots)
    m = metrics_from_topk(np.array([[0, 1]]), [{0, 1, 2, 3, 4}], ks=(2,), num_items=5)
    assert m["ndcg@2"] == pytest.approx(1.0) and m["recall@2"] == pytest.approx(0.4)


def test_rank_all_excludes_and_restricts_and_batches():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    fn = lambda users: scores[torch.as_tensor(users)]  # noqa: E731
    exclude = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 1]]))
    top = rank_all(fn, np.array([0, 1]), 2, exclude=exclude, batch_size=1)
    assert top.tolist() == [[1, 2], [2, 1]]
    top = rank_all(fn, np.array([0, 1]), 2, candidates=np.array([0, 3]))
    assert top.tolist() == [[0, 3], [3, 0]]


def test_evaluate_scores_groups_pairs_by_user():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.9]])
    m = evaluate_scores(lambda u: scores[torch.as_tensor(u)], np.array([1, 0, 0]), np.array([2, 0, 2]), 3, ks=(1,))
    assert m["hit@1"] == pytest.approx(1.0) and m["recall@1"] == pytest.approx(0.75)


def test_device_ranker_gives_evaluate_scores_numbers():
    """The on-device ranking (training's valid metric) is the host ranking, to the digit, with exclusions,
    candidates, duplicate ground truth and batches that split the users."""
    from sora.evaluation.metrics import DeviceRanker

    rng = np.random.default_rng(3)
    n_users, n_items = 37, 53
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items)).astype(np.float32))
    scores[:, 5] = scores[:, 6]  # ties
    eu = rng.integers(0, n_users, 90)
    ei = rng.integers(0, n_items, 90)
    eu, ei = np.r_[eu, eu[:3]], np.r_[ei, ei[:3]]  # duplicate pairs count once
    ex = sp.random(n_users, n_items, density=0.2, random_state=1, format="csr")
    for cand in (None, np.sort(rng.choice(n_items, 20, replace=False))):
        ref = evaluate_scores(lambda b: scores[torch.as_tensor(b)], eu, ei, n_items, (10, 20), exclude=ex,
                              candidates=cand, batch_size=7)
        ranker = DeviceRanker(eu, ei, n_items, (10, 20), torch.device("cpu"), exclude=ex, candidates=cand,
                              batch_size=7)
        got = ranker.evaluate(lambda b: scores[b])
        assert got == ref
