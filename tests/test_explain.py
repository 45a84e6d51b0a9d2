"""Explanations (``because``): exact for the head, leave-one-out for the network, on every interface."""

import json

import numpy as np
import pytest

from sora.cli import main
from sora.model.explain import attributions
from sora.model.recommender import Recommender
from sora.serving.core import ModelHolder, handle
from sora.serving.requests import BadRequest, validate
from tests.conftest import train_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("explain") / "model", n_users=25, n_items=30, per_user=12)


@pytest.fixture(scope="module")
def rec(model_dir):
    r = Recommender.load(model_dir)
    r.alpha = 0.7  # whatever valid chose: the head's share must be exact for any weight
    # a binary head: with a recency decay, removing h also re-ages the items older than h (tested below)
    r.head_decay, r.head_weights = 1.0, None
    return r


def test_decayed_head_shares_add_up_to_the_head_score(model_dir):
    """With a recency decay the head's shares alpha·w_h·ii[h, j] still sum to exactly the head's score."""
    r = Recommender.load(model_dir)
    r.alpha, r.head_decay = 0.7, 0.8  # anonymous histories need no stored rows
    history = [r.item_index[i] for i in r.item_ids[3:12]]  # oldest first
    items, w = r.head_history(None, history)
    assert np.allclose(w[np.searchsorted(items, history)], 0.8 ** np.arange(len(history) - 1, -1, -1))
    targets = [0, 1, 20]
    from sora.model.explain import head_contributions

    shares = head_contributions(r, items, targets, w)
    assert np.allclose(shares.sum(0), r.alpha * r._ii_history(items, w)[targets].numpy(), atol=1e-6)


def test_weight_is_the_score_change_without_the_item(rec):
    """Fold-in path: removing history item h changes item j's score by exactly weight(h, j)."""
    history = [rec.item_index[i] for i in rec.item_ids[2:16]]  # oldest first, longer than the window
    assert len(history) > rec.config.model.history_len
    full = rec.score_history(history)
    targets = [int(t) for t in np.argsort(-full.numpy())[:5]]
    items, weights = attributions(rec, list(reversed(history)), np.unique(history), targets, None)
    assert sorted(items.tolist()) == sorted(set(history))
    for row, h in enumerate(items):
        without = rec.score_history([x for x in history if x != h])
        assert np.allclose(weights[row], (full - without)[targets].numpy(), atol=1e-4), h


def test_head_share_is_exact_and_network_part_only_inside_the_window(rec):
    history = [rec.item_index[i] for i in rec.item_ids[0:14]]
    window = list(reversed(history))[: rec.config.model.history_len]
    old = [h for h in history if h not in window]
    targets = [20, 21]
    items, weights = attributions(rec, list(reversed(history)), np.unique(history), targets, None)
    ii = rec.ii.toarray() if hasattr(rec.ii, "toarray") else np.asarray(rec.ii)
    for h in old:  # outside the window, removing h changes only the head
        row = int(np.searchsorted(items, h))
        assert np.allclose(weights[row], rec.alpha * ii[h, targets], atol=1e-6)


def test_recommend_explain_lists_history_items_heaviest_first(rec):
    user = rec.user_ids[3]
    u = rec.user_index[user]
    out = rec.recommend(user, k=4, explain=True, recent_item_ids=[rec.item_ids[29]])
    history = set(rec.seen[u].indices.tolist()) | {29}
    assert len(out) == 4
    for it in out:
        because = it["because"]
        assert 1 <= len(because) <= rec.config.serve.explain_items
        assert [b["weight"] for b in because] == sorted((b["weight"] for b in because), reverse=True)
        assert {rec.item_index[b["item_id"]] for b in because} <= history
    plain = rec.recommend(user, k=4, recent_item_ids=[rec.item_ids[29]])
    assert [i["item_id"] for i in plain] == [i["item_id"] for i in out] and "because" not in plain[0]


def test_service_explains_on_request(model_dir):
    holder = ModelHolder(str(model_dir))
    assert holder.refresh()
    rec = holder.require().rec
    out = handle(holder, "recommend", {"user_id": rec.user_ids[0], "k": 3, "explain": True})
    assert all(it["because"] for it in out["items"])
    out = handle(holder, "recommend_from_history", {"item_ids": rec.item_ids[:4], "k": 3, "explain": True})
    assert all({b["item_id"] for b in it["because"]} <= set(rec.item_ids[:4]) for it in out["items"])
    out = handle(holder, "recommend", {"user_id": "nobody", "k": 2, "fallback": True, "explain": True})
    assert out["fallback"] and "because" not in out["items"][0]  # popular items are not explained by a history
    with pytest.raises(BadRequest, match="explain: expected true or false"):
        validate("recommend", {"user_id": "u1", "explain": "yes"})


def test_cli_explain(model_dir, capsys):
    rec = Recommender.load(model_dir)
    assert main(["recommend", "--model", str(model_dir), "--user", rec.user_ids[1], "-k", "2", "--explain"]) == 0
    assert capsys.readouterr().out.count("because of") >= 2
    assert main(["recommend", "--model", str(model_dir), "--history", ",".join(rec.item_ids[:3]), "-k", "2",
                 "--explain", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert all("because" in it for it in items)
    assert main(["recommend", "--model", str(model_dir), "--similar-to", rec.item_ids[0], "--explain"]) == 2
    assert "--explain" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_dir), "--user", rec.user_ids[1], "-k", "3"]) == 0
    assert capsys.readouterr().out.count("because of") >= 3


def test_model_card_section(rec):
    from sora.model.explain import explanation_markdown

    md = explanation_markdown(rec, rec.user_ids[2], k=3)
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and all("(+" in r or "(-" in r for r in rows)
    assert f"sora explain --model MODEL --user {rec.user_ids[2]}" in md
