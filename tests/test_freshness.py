"""Recent events in /recommend (issue 15, deliverable 2): folded into the history, excluded, stateless."""

import numpy as np
import pytest
import torch

from sora.model.recommender import ModelLoadError, Recommender, UnknownIdError
from sora.serving.core import ModelHolder, handle
from sora.serving.requests import BadRequest, Limits, NotFound, validate
from tests.conftest import train_tiny_model

LIMITS = Limits(max_k=50, max_id_length=16, max_list_length=8, max_body_bytes=4096)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("freshness") / "model", n_users=24, n_items=36)


@pytest.fixture(scope="module")
def holder(model_dir):
    h = ModelHolder(str(model_dir))
    assert h.refresh()
    return h


def _unseen(rec: Recommender, user: str, n: int) -> list[str]:
    seen = set(rec.seen[rec.user_index[user]].indices.tolist())
    return [rec.item_ids[i] for i in range(rec.num_items) if i not in seen][:n]


def test_recent_events_change_and_are_excluded(holder):
    rec = holder.current.rec
    recent = _unseen(rec, "u1", 3)
    before = handle(holder, "recommend", {"user_id": "u1", "k": 10}, LIMITS)
    after = handle(holder, "recommend", {"user_id": "u1", "k": 10, "recent_item_ids": recent}, LIMITS)
    ids_before = [i["item_id"] for i in before["items"]]
    ids_after = [i["item_id"] for i in after["items"]]
    assert not set(recent) & set(ids_after)
    assert [i["score"] for i in before["items"]] != [i["score"] for i in after["items"]]
    assert ids_before != ids_after
    # an empty list is "no events": the answer without them
    same = handle(holder, "recommend", {"user_id": "u1", "k": 10, "recent_item_ids": []}, LIMITS)
    assert same["items"] == before["items"]


def test_any_replica_answers_alike(holder, model_dir):
    other = ModelHolder(str(model_dir))
    assert other.refresh()
    recent = _unseen(holder.current.rec, "u2", 2)
    body = {"user_id": "u2", "k": 5, "recent_item_ids": recent}
    first = handle(holder, "recommend", body, LIMITS)
    handle(holder, "recommend", {"user_id": "u2", "k": 5, "recent_item_ids": recent[::-1]}, LIMITS)
    assert handle(other, "recommend", body, LIMITS) == first == handle(holder, "recommend", body, LIMITS)


def test_score_takes_recent_events_too(holder):
    rec = holder.current.rec
    recent = _unseen(rec, "u3", 2)
    items = _unseen(rec, "u3", 6)[2:]
    a = handle(holder, "score", {"user_id": "u3", "item_ids": items}, LIMITS)
    b = handle(holder, "score", {"user_id": "u3", "item_ids": items, "recent_item_ids": recent}, LIMITS)
    assert [i["score"] for i in a["items"]] != [i["score"] for i in b["items"]]
    # /score and /recommend agree with recent events
    top = handle(holder, "recommend", {"user_id": "u3", "k": 50, "recent_item_ids": recent}, LIMITS)
    by_id = {i["item_id"]: i["score"] for i in top["items"]}
    for it in b["items"]:
        if it["item_id"] in by_id:
            assert it["score"] == pytest.approx(by_id[it["item_id"]], abs=1e-5)


@pytest.mark.parametrize("value,code,fragment", [
    (["i1", "i1"], BadRequest, "recent_item_ids[1]: duplicate"),
    ("i1", BadRequest, "recent_item_ids: expected a list"),
    ([1.5], BadRequest, "recent_item_ids[0]"),
    (["i1"] * 9, BadRequest, "recent_item_ids: more than 8"),
    (["x" * 20], BadRequest, "recent_item_ids[0]: id longer"),
])
def test_bad_recent_ids_are_400_naming_the_field(holder, value, code, fragment):
    with pytest.raises(code) as err:
        handle(holder, "recommend", {"user_id": "u1", "recent_item_ids": value}, LIMITS)
    assert fragment in err.value.message and err.value.status == 400


def test_unknown_recent_ids_are_404_naming_the_field(holder):
    for endpoint, body in (("recommend", {"user_id": "u1"}), ("score", {"user_id": "u1", "item_ids": ["i1"]}),
                           ("recommend", {"user_id": "nobody", "fallback": True})):
        with pytest.raises(NotFound) as err:
            handle(holder, endpoint, {**body, "recent_item_ids": ["i2", "nope"]}, LIMITS)
        assert err.value.status == 404 and err.value.message.startswith("recent_item_ids:") and "'nope'" in err.value.message


def test_fallback_excludes_recent_items(holder):
    popular = handle(holder, "recommend", {"user_id": "nobody", "k": 3, "fallback": True}, LIMITS)
    first = popular["items"][0]["item_id"]
    out = handle(holder, "recommend", {"user_id": "nobody", "k": 3, "fallback": True, "recent_item_ids": [first]},
                 LIMITS)
    assert out["fallback"] and first not in [i["item_id"] for i in out["items"]]


def test_validate_defaults_to_no_events():
    assert "recent_item_ids" not in validate("recommend", {"user_id": "u1"}, LIMITS)
    assert validate("recommend", {"user_id": "u1", "recent_item_ids": None}, LIMITS).get("recent_item_ids") is None
    assert validate("score", {"user_id": "u1", "item_ids": ["i1"], "recent_item_ids": ["i2"]},
                    LIMITS)["recent_item_ids"] == ["i2"]


def test_library_refuses_unknown_and_duplicate_ids(holder):
    rec = holder.current.rec
    with pytest.raises(UnknownIdError, match="recent_item_ids"):
        rec.recommend("u1", recent_item_ids=["nope"])
    with pytest.raises(ValueError, match="duplicate"):
        rec.recommend("u1", recent_item_ids=["i1", "i1"])


def test_exact_user_tokens_are_used_and_round_trip(model_dir, tmp_path):
    rec = Recommender.load(model_dir)
    torch.manual_seed(0)
    rec.user_tokens = torch.randn(rec.num_users, rec.config.model.dim)
    u = rec.user_index["u1"]
    recent = [rec.item_index[i] for i in _unseen(rec, "u1", 2)]
    got = rec.user_vectors_with(u, recent)
    L = rec.config.model.history_len
    old = rec.history[u][rec.history_mask[u]].tolist()
    seq = (recent[::-1] + old)[:L]
    hist = torch.zeros(1, L, dtype=torch.long)
    mask = torch.zeros(1, L, dtype=torch.bool)
    hist[0, :len(seq)], mask[0, :len(seq)] = torch.tensor(seq), True
    with torch.no_grad():
        want = rec.model.user_vectors(rec.user_tokens[u][None], hist, mask, rec.item_tokens)[0]
    assert torch.allclose(got, want, atol=1e-6)
    rec.item_text = torch.randn(rec.num_items, 8)
    rec.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    assert torch.equal(back.user_tokens, rec.user_tokens) and torch.equal(back.item_text, rec.item_text)
    assert "has_user_tokens" not in back.meta
    # strict: meta.json promises the tensor, the weights file lacks it
    from safetensors.torch import load_file, save_file

    t = load_file(str(tmp_path / "m" / "model.safetensors"))
    del t["user_tokens"]
    save_file(t, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="missing user_tokens"):
        Recommender.load(tmp_path / "m")


def test_no_recent_events_is_the_fitted_vector(holder):
    rec = holder.current.rec
    u = rec.user_index["u4"]
    assert torch.equal(rec.user_vectors_with(u, []), rec.user_vectors[u])
    assert torch.allclose(rec.score_user_recent(u, []), rec.score_users(np.array([u]))[0])


@pytest.mark.slow
def test_recent_events_over_http(model_dir):
    """A real `sora serve`: the field reaches the model through the guard and BentoML, errors name it."""
    from tests.test_serving import _post, _serve, _wait_ready

    proc, base = _serve(["--model", str(model_dir)])
    try:
        assert _wait_ready(base), "service never became ready"
        rec = Recommender.load(model_dir)
        recent = _unseen(rec, "u1", 3)
        status, plain = _post(base, "/recommend", {"user_id": "u1", "k": 10})
        assert status == 200
        status, body = _post(base, "/recommend", {"user_id": "u1", "k": 10, "recent_item_ids": recent})
        assert status == 200 and not set(recent) & {i["item_id"] for i in body["items"]}
        assert body["items"] != plain["items"]
        want = rec.recommend("u1", k=10, recent_item_ids=recent)
        assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in want]
        status, text = _post(base, "/recommend", {"user_id": "u1", "recent_item_ids": ["i1", "i1"]})
        assert status == 400 and "recent_item_ids[1]: duplicate" in text
        status, text = _post(base, "/recommend", {"user_id": "u1", "recent_item_ids": ["nope"]})
        assert status == 404 and "recent_item_ids" in text
        status, body = _post(base, "/score", {"user_id": "u1", "item_ids": ["i2"], "recent_item_ids": recent[:1]})
        assert status == 200 and body["items"][0]["item_id"] == "i2"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
