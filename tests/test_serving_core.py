"""The service's request handling in-process (no server): checks, answers, refusals, the ASGI guard.

Over 400 lines on purpose: requests, answers and refusals share one loaded model and fake app.
"""

import asyncio
import json
import re
import socket

import numpy as np
import pytest

from sora.cli.serve import port_problem
from sora.config import SoraConfig
from sora.model.recommender import Recommender
from sora.serving.core import ModelHolder, content_version, handle
from sora.serving.http import HealthEndpoint, RequestGuard, check_media_type
from sora.serving.requests import (
    ENDPOINTS,
    BadRequest,
    Limits,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    clip,
    request_models,
    scrub,
    validate,
)
from tests.conftest import train_tiny_model

LIMITS = Limits(max_k=50, max_id_length=16, max_list_length=8, max_body_bytes=2048)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("serving_core") / "model", n_users=20, n_items=30)


@pytest.fixture(scope="module")
def holder(model_dir):
    h = ModelHolder(str(model_dir))
    assert h.refresh() and h.ready
    return h


def test_limits_come_from_config():
    serve = SoraConfig().serve
    limits = Limits.from_config(serve)
    assert (limits.max_k, limits.max_id_length, limits.max_list_length, limits.max_body_bytes) == (
        serve.max_k, serve.max_id_length, serve.max_list_length, serve.max_body_bytes)


def test_every_endpoint_answers_with_the_contract(holder, model_dir):
    out = handle(holder, "recommend", {"user_id": "u1", "k": 3}, LIMITS)
    assert set(out) == {"model", "items", "fallback"} and len(out["items"]) == 3 and out["fallback"] is False
    assert set(out["items"][0]) == {"item_id", "title", "score"}
    assert out["model"] == {"name": "sora", "version": content_version(model_dir)}
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", out["model"]["version"])
    out = handle(holder, "recommend_from_history", {"item_ids": ["i1", "nope", 2]}, LIMITS)
    assert out["ignored_item_ids"] == ["nope", "2"] and len(out["items"]) == 10
    out = handle(holder, "similar_items", {"item_id": "i0", "k": 4}, LIMITS)
    assert len(out["items"]) == 4 and "i0" not in [i["item_id"] for i in out["items"]]
    out = handle(holder, "score", {"user_id": "u1", "item_ids": ["i3", "i4"]}, LIMITS)
    assert [i["item_id"] for i in out["items"]] == ["i3", "i4"]
    out = handle(holder, "recommend", {"user_id": "nobody", "k": 2, "fallback": True}, LIMITS)
    assert out["fallback"] is True and len(out["items"]) == 2


def test_serving_precompute_gives_the_same_answers(model_dir):
    """The service's precomputed rows, unit vectors and dense head change speed, not answers."""
    plain = Recommender.load(model_dir)
    fast = Recommender.load(model_dir).prepare_serving()
    assert fast._scores is not None and fast._ii_dense is not None
    assert Recommender.load(model_dir).prepare_serving(max_scores=10)._scores is None  # over the budget

    def same(a, b):
        assert [x["item_id"] for x in a] == [x["item_id"] for x in b]
        assert np.allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-5)

    items = plain.item_ids
    for u in plain.user_ids[:6]:
        same(plain.recommend(u, k=7), fast.recommend(u, k=7))
        same(plain.recommend(u, k=7, exclude_seen=False), fast.recommend(u, k=7, exclude_seen=False))
        same(plain.recommend(u, k=7, recent_item_ids=items[3:6]), fast.recommend(u, k=7, recent_item_ids=items[3:6]))
        same(plain.score(u, items[:5], recent_item_ids=items[7:9]), fast.score(u, items[:5], recent_item_ids=items[7:9]))
        same(plain.score(u, items[:5]), fast.score(u, items[:5]))
    same(plain.recommend_from_history(items[2:6], k=5)[0], fast.recommend_from_history(items[2:6], k=5)[0])
    same(plain.similar_items(items[1], k=5), fast.similar_items(items[1], k=5))
    # k above what is left after exclusions: only real items, never an excluded one at -inf
    u = plain.user_ids[0]
    out = fast.recommend(u, k=len(items))
    assert len(out) == len(items) - len(plain._row(plain.seen, 0))
    assert all(np.isfinite(x["score"]) for x in out)


def test_numeric_ids_are_read_as_strings(holder):
    assert validate("recommend", {"user_id": 7}, LIMITS)["user_id"] == "7"
    assert validate("recommend", {"user_id": "u1", "k": 3.0}, LIMITS)["k"] == 3


@pytest.mark.parametrize("endpoint,payload,error,field", [
    ("recommend", {"user_id": "nobody"}, NotFound, "user_id"),
    ("recommend", {"user_id": "u1", "k": 0}, BadRequest, "k"),
    ("recommend", {"user_id": "u1", "k": 51}, BadRequest, "k"),
    ("recommend", {"user_id": "u1", "k": "many"}, BadRequest, "k"),
    ("recommend", {"user_id": "u1", "k": True}, BadRequest, "k"),
    ("recommend", {"user_id": "u1", "k": 2.5}, BadRequest, "k"),
    ("recommend", {"user_id": "u1", "exclude_seen": "yes"}, BadRequest, "exclude_seen"),
    ("recommend", {"k": 3}, BadRequest, "user_id"),
    ("recommend", {"user_id": ""}, BadRequest, "user_id"),
    ("recommend", {"user_id": ["u1"]}, BadRequest, "user_id"),
    ("recommend", {"user_id": "u1", "kk": 3}, BadRequest, "kk"),
    ("recommend", ["u1"], BadRequest, "json object"),
    ("recommend_from_history", {"item_ids": ["nope"]}, NotFound, "item_ids"),
    ("recommend_from_history", {"item_ids": "i1"}, BadRequest, "item_ids"),
    ("recommend_from_history", {"item_ids": []}, BadRequest, "item_ids"),
    ("recommend_from_history", {"item_ids": ["i1"] * 9}, BadRequest, "item_ids"),
    ("recommend_from_history", {"item_ids": ["i1", None]}, BadRequest, "item_ids[1]"),
    ("similar_items", {"item_id": "nope"}, NotFound, "item_id"),
    ("score", {"user_id": "u1", "item_ids": ["i1", "nope"]}, NotFound, "item_ids"),
    ("score", {"user_id": "nobody", "item_ids": ["i1"]}, NotFound, "user_id"),
])
def test_bad_requests_name_the_field(holder, endpoint, payload, error, field):
    with pytest.raises(error) as info:
        handle(holder, endpoint, payload, LIMITS)
    assert info.value.status == {BadRequest: 400, NotFound: 404}[error]
    assert field in info.value.message.lower()


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_long_ids_and_lists_are_refused_without_echoing_them(holder, endpoint):
    huge = "x" * 100_000
    payload = {"user_id": huge, "item_id": huge, "item_ids": [huge]}
    payload = {k: v for k, v in payload.items() if k in ENDPOINTS[endpoint]}
    with pytest.raises(BadRequest) as info:
        handle(holder, endpoint, payload, LIMITS)
    assert "longer than 16" in info.value.message and len(info.value.message) < 200
    # unknown ids within the limit are quoted, but cut short
    ok_length = "y" * 16
    payload = {k: (["i1", ok_length] if k == "item_ids" else ok_length) for k in payload}
    if endpoint == "recommend_from_history":
        payload["item_ids"] = [ok_length]
    with pytest.raises(NotFound) as info:
        handle(holder, endpoint, payload, Limits(max_id_length=16))
    assert len(info.value.message) < 200


def test_not_ready_is_a_503_with_the_reason_and_no_path(tmp_path):
    holder = ModelHolder(str(tmp_path / "nowhere"))
    with pytest.raises(NotReady, match="model loading"):
        handle(holder, "recommend", {"user_id": "u1"}, LIMITS)
    assert not holder.refresh()
    with pytest.raises(NotReady) as info:
        handle(holder, "recommend", {"user_id": "u1"}, LIMITS)
    assert info.value.status == 503 and "FileNotFoundError" in info.value.message
    assert str(tmp_path) not in info.value.message and "/" not in info.value.message.replace("<path>", "")
    assert str(tmp_path) in holder.last_error  # the log keeps the detail


def test_a_bad_request_is_refused_before_readiness_matters(tmp_path):
    with pytest.raises(BadRequest):
        handle(ModelHolder(str(tmp_path)), "recommend", {"user_id": 3.5}, LIMITS)


def test_clip_and_scrub():
    assert clip("abc") == "'abc'"
    long = clip("z" * 10_000)
    assert len(long) < 80 and "10000 characters" in long
    text = scrub("FileNotFoundError: /tmp/x/y/model: not a model; see file:///srv/a/b and models:/sora@champion")
    assert "/tmp" not in text and "/srv" not in text and "models:/sora@champion" in text


@pytest.mark.parametrize("ctype", ["multipart/form-data; boundary=x", "text/plain", "application/xml"])
def test_non_json_media_types_are_refused(ctype):
    with pytest.raises(UnsupportedMediaType):
        check_media_type(ctype)


def test_json_media_types_are_accepted():
    for ctype in ("application/json; charset=utf-8", None, "", "application/vnd.api+json"):
        check_media_type(ctype)


# ------------------------------------------------------------------ the ASGI guard, with a fake BentoML

def _bentoml_error(exc):
    """BentoML 1.4's answer to a request model's ValidationError (``_bentoml_impl/server/app.py``)."""
    return {"error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False)}


def _call_guard(path, body, headers, method="POST", chunks=None):
    """``path`` through :class:`RequestGuard` to an app that reads the body as BentoML does (request model on the bytes)."""
    from pydantic import ValidationError

    seen = {}

    async def app(scope, receive, send):
        message = await receive()
        seen["body"], seen["headers"] = message["body"], dict(scope["headers"])
        status, data = 200, b"ok"
        if path.strip("/") in ENDPOINTS:
            try:
                request_models(LIMITS)[path.strip("/")].model_validate_json(message["body"] or b"{}")
            except ValidationError as exc:
                status, data = 400, json.dumps(_bentoml_error(exc)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    parts = chunks if chunks is not None else [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(RequestGuard(app, LIMITS)(scope, receive, send))
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    assert dict(sent[0]["headers"]).get(b"content-length", str(len(payload)).encode()) == str(len(payload)).encode()
    return status, payload, seen


def test_guard_passes_json_requests_on_untouched():
    """One parse and one check, BentoML's: the body reaches it as the client sent it."""
    body = json.dumps({"user_id": 12, "k": 2}).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    status, payload, seen = _call_guard("/recommend", body, headers)
    assert status == 200 and payload == b"ok"
    assert seen["body"] == body and seen["headers"][b"content-length"] == str(len(body)).encode()
    status, payload, seen = _call_guard("/recommend", b"", {}, chunks=[body[:5], body[5:]])  # chunked: read, handed on
    assert status == 200 and seen["body"] == body


@pytest.mark.parametrize("path,body,headers,chunks,status", [
    ("/recommend", b'{"user_id": "u1"}', {"content-type": "multipart/form-data; boundary=b"}, None, 415),
    ("/score", b"{}", {"content-type": "application/x-www-form-urlencoded"}, None, 415),
    ("/recommend", b"{}", {"content-type": "application/json", "content-length": "99999999"}, None, 413),
    ("/recommend", b"", {"content-type": "application/json"}, [b"x" * 1500, b"y" * 1500], 413),
])
def test_guard_refuses_before_the_app(path, body, headers, chunks, status):
    got, payload, seen = _call_guard(path, body, headers, chunks=chunks)
    assert got == status and not seen
    assert set(json.loads(payload)) == {"error"} and len(payload) < 300


@pytest.mark.parametrize("path,body,field", [
    ("/recommend", b'{"user_id": ', "json"),
    ("/recommend", b"\xff\xfe", "json"),
    ("/recommend", b"[" * 1000, "json"),
    ("/recommend", b"[]", "json object"),
    ("/recommend", b'{"user_id": "u1", "k": -1}', "k: must be in 1..50"),
    ("/recommend", b'{"user_id": "u1", "k": "3"}', "k: expected an integer"),
    ("/recommend", b'{"user_id": "u1", "kk": 3}', "unknown field 'kk'"),
    ("/recommend", b'{"k": 3}', "user_id: required"),
    ("/recommend", b'{"user_id": "u1", "recent_item_ids": ["a", "b", "a"]}', "recent_item_ids[2]: duplicate"),
    ("/similar_items", json.dumps({"item_id": "q" * 500}).encode(), "item_id: id longer than 16"),
    ("/score", b'{"user_id": "u1", "item_ids": ["i1", 2.5]}', "item_ids[1]: expected a string id"),
])
def test_bentoml_rejections_reach_the_client_in_the_project_words(path, body, field):
    status, payload, seen = _call_guard(path, body, {"content-type": "application/json"})
    assert status == 400 and seen["body"] == body  # BentoML checked it, the guard only reworded the answer
    message = json.loads(payload)
    assert set(message) == {"error"} and len(payload) < 300 and field in message["error"].lower()
    try:  # the same words as in-process
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return
    with pytest.raises(BadRequest) as info:
        validate(path.strip("/"), parsed, LIMITS)
    assert info.value.message == message["error"]


def test_guard_passes_other_answers_as_they_are():
    status, payload, _ = _call_guard("/recommend", b'{"user_id": "u1", "k": 3}', {})
    assert status == 200 and payload == b"ok"


def test_guard_leaves_other_requests_alone():
    status, _, seen = _call_guard("/metrics", b"anything", {"content-type": "text/plain"}, method="GET")
    assert status == 200 and seen["body"] == b"anything"
    status, _, seen = _call_guard("/not-an-endpoint", b"anything", {"content-type": "text/plain"})
    assert status == 200 and seen


def test_service_errors_carry_http_statuses():
    assert {c.status for c in (BadRequest, PayloadTooLarge, UnsupportedMediaType, NotReady)} == {400, 413, 415, 503}
    assert issubclass(NotFound, ServiceError) and NotFound("x", "user").status == 404


def test_busy_port_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert "in use" in port_problem("127.0.0.1", s.getsockname()[1]).lower()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert port_problem("127.0.0.1", free) is None


# ------------------------------------------------------------------ a registry outage, with a fake registry

class _FakeRegistry:
    """``resolve_model_uri`` / ``load_version`` stand-ins: an alias that moves, a server that goes away."""

    def __init__(self, model_dir):
        self.model_dir, self.version, self.down, self.artifacts_down, self.loads = model_dir, "1", False, False, []

    def resolve(self, tracking_uri, uri):
        from sora.registry import RegistryUnreachable

        if self.down:
            raise RegistryUnreachable(f"cannot reach the registry at {tracking_uri}: ConnectionError")
        return "sora", self.version, f"models:/sora/{self.version}"

    def load(self, tracking_uri, uri):
        if self.artifacts_down:
            raise OSError("cannot download /tmp/mlartifacts/abc/model.safetensors: connection refused")
        self.loads.append(uri)
        return Recommender.load(self.model_dir)


@pytest.fixture
def fake_registry(model_dir, monkeypatch):
    from sora import registry

    fake = _FakeRegistry(model_dir)
    monkeypatch.setattr(registry, "resolve_model_uri", fake.resolve)
    monkeypatch.setattr(registry, "load_version", fake.load)
    return fake


def test_a_registry_outage_keeps_serving_reports_degraded_and_a_champion_promoted_meanwhile_is_picked_up(
        fake_registry, caplog):
    holder = ModelHolder("models:/sora@champion", "http://user:secret@mlflow.internal:5000", poll_interval_s=1)
    assert holder.refresh()
    health = holder.health()
    assert health["status"] == "ok" and health["model"] == {"name": "sora", "version": "1"}
    assert health["registry"]["status"] == "ok" and health["registry"]["failed_polls"] == 0
    answered_at = health["registry"]["last_successful_poll"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", answered_at)

    fake_registry.down = True
    caplog.clear()
    for _ in range(3):
        assert not holder.refresh()
        assert handle(holder, "recommend", {"user_id": "u1", "k": 3}, LIMITS)["model"]["version"] == "1"
    assert holder.ready
    health = holder.health()
    assert health["status"] == "degraded" and health["model"]["version"] == "1"
    reg = health["registry"]
    assert reg["status"] == "degraded" and reg["failed_polls"] == 3 and reg["last_successful_poll"] == answered_at
    assert "cannot reach the registry" in reg["error"] and reg["seconds_since_last_successful_poll"] >= 0
    assert "secret" not in json.dumps(health) and "mlflow.internal:5000" in reg["error"]
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # one line per outage, not one per poll

    fake_registry.down, fake_registry.version = False, "2"  # champion moved while we could not see it
    assert holder.refresh()
    health = holder.health()
    assert health["status"] == "ok" and health["model"]["version"] == "2" and health["registry"]["status"] == "ok"
    assert health["registry"]["last_successful_poll"] >= answered_at and holder.swaps == 1
    assert fake_registry.loads == ["models:/sora/1", "models:/sora/2"]


def test_a_version_whose_artifacts_cannot_be_read_keeps_the_served_one(fake_registry):
    holder = ModelHolder("models:/sora@champion", "http://mlflow:5000")
    assert holder.refresh()
    fake_registry.version, fake_registry.artifacts_down = "2", True
    assert not holder.refresh()
    health = holder.health()
    assert health["status"] == "degraded" and health["model"]["version"] == "1"
    assert health["registry"]["error"].startswith("could not load version 2") and "/tmp" not in json.dumps(health)
    assert handle(holder, "similar_items", {"item_id": "i1", "k": 2}, LIMITS)["model"]["version"] == "1"
    fake_registry.artifacts_down = False
    assert holder.refresh() and holder.health()["status"] == "ok" and holder.current.version == "2"


def test_a_local_model_has_no_registry_in_its_health(holder):
    health = holder.health()
    assert health["status"] == "ok" and "registry" not in health and health["model"]["version"].startswith("sha256:")
    assert ModelHolder("models:/sora@champion", "http://x:1").health() == {
        "model": None, "swaps": 0, "status": "not ready",
        "registry": {"status": "unknown", "last_successful_poll": None, "seconds_since_last_successful_poll": None,
                     "failed_polls": 0, "poll_interval_s": 30.0, "error": None}}


def test_health_endpoint_answers_healthz_only(holder):
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    mw = HealthEndpoint(app, holder.health)
    asyncio.run(mw({"type": "http", "method": "GET", "path": "/healthz", "headers": []}, receive, send))
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"])["status"] == "ok"
    sent.clear()
    asyncio.run(mw({"type": "http", "method": "GET", "path": "/livez", "headers": []}, receive, send))
    assert sent[0]["status"] == 204
    sent.clear()
    asyncio.run(HealthEndpoint(app, lambda: None)({"type": "http", "method": "GET", "path": "/healthz",
                                                   "headers": []}, receive, send))
    assert json.loads(sent[1]["body"])["status"] == "not ready"


# ------------------------------------------------------------------ the BentoML class itself, in-process

class _Ctx:
    class response:  # noqa: N801 - stands in for bentoml.Context.response
        status_code = 200


@pytest.fixture(scope="module")
def service(model_dir):
    """``SoraService`` instantiated once (its Prometheus metrics can only be registered once per process)."""
    import os

    from sora_serving.service import SoraService

    saved = dict(os.environ)
    os.environ["SORA_MODEL_DIR"] = str(model_dir)  # the service reads its model source at the edge
    try:
        svc = SoraService()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    svc.holder._thread.join(timeout=60)
    assert svc.__is_ready__()
    yield svc
    svc.holder.stop()


def test_service_methods_are_thin_over_handle(service, model_dir):
    ctx = _Ctx()

    def call(method, **kw):
        response = asyncio.run(method(ctx=ctx, **kw))
        assert response.media_type == "application/json"
        return json.loads(response.body)

    out = call(service.recommend, user_id="u1", k=3)
    assert len(out["items"]) == 3 and out["model"]["version"] == content_version(model_dir)
    assert call(service.score, user_id="u1", item_ids=["i1"])["items"][0]["item_id"] == "i1"
    out = call(service.similar_items, item_id="nope")
    assert ctx.response.status_code == 404 and set(out) == {"error"} and "item_id" in out["error"]


def test_bentoml_4xx_tracebacks_become_one_warning_line():
    import logging
    import sys

    from pydantic import BaseModel, ValidationError
    from sora_serving.service import _QuietClientErrors

    class M(BaseModel):
        k: int

    try:
        M(k="x")
    except ValidationError:
        record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]",
                                   ("/recommend", "POST"), sys.exc_info())
    assert _QuietClientErrors().filter(record)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "/recommend" in record.getMessage() and "validation error" in record.getMessage()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception", (), sys.exc_info())
    assert _QuietClientErrors().filter(record) and record.levelno == logging.ERROR and record.exc_info


def test_stop_listening_refuses_new_connections_but_keeps_accepted_ones():
    import subprocess
    import sys

    code = """if True:
        import socket
        from sora.serving.http import stop_listening
        server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(8)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port)); conn, _ = server.accept()
        print(stop_listening())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2); print("accepted")
        except ConnectionRefusedError:
            print("refused")
        client.sendall(b"still here"); print(conn.recv(32).decode())
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[:3] == ["1", "refused", "still here"], out.stdout + out.stderr
