"""What the BentoML service does, without BentoML: load a model once, check and answer requests, hot-swap.

:class:`ModelHolder` owns the served model. ``models:/<name>@<alias>`` URIs are polled (every
``poll_interval_s``); when the alias points at a new version, that version is downloaded and loaded
in a background thread and then swapped in with one reference assignment, so requests in flight keep
the model they started with. A version that fails to load is logged and the old one keeps serving.
While the registry does not answer (an outage), the served model keeps answering; :meth:`ModelHolder.health`
reports the registry as ``degraded`` with the time of the last poll it answered, and the first poll
after it comes back picks up whatever the alias points at by then.

Requests are plain dicts here: :func:`validate` checks a JSON body against :data:`ENDPOINTS` and the
size limits (:class:`Limits`, from ``SoraConfig().serve``), :func:`handle` answers it, and every
refusal is a :class:`ServiceError` carrying its HTTP status and a message that never echoes more
than :data:`ECHO_CHARS` characters of the request nor any filesystem path. :class:`RequestGuard` is
the ASGI middleware that applies content-type, body-size and body checks before the web framework
parses anything. :func:`die_with_parent` and :func:`stop_listening_on` keep processes tidy: no
worker outlives ``sora serve``, and SIGTERM refuses new connections while requests in flight finish.
No DGL and no MLflow are imported here (the registry goes through :mod:`sora.registry`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sora.config import ServeConfig

if TYPE_CHECKING:  # imported where used: `sora serve` and the ASGI guard need none of torch
    from sora.recommender import Recommender

log = logging.getLogger(__name__)

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
ECHO_CHARS = 48  # at most this much of a client's value is quoted back in an error message


# -------------------------------------------------------------------- limits and errors

@dataclass(frozen=True)
class Limits:
    """Request limits; the defaults are ``ServeConfig``'s."""

    max_k: int = ServeConfig().max_k
    max_id_length: int = ServeConfig().max_id_length
    max_list_length: int = ServeConfig().max_list_length
    max_body_bytes: int = ServeConfig().max_body_bytes

    @classmethod
    def from_config(cls, serve: ServeConfig) -> Limits:
        return cls(serve.max_k, serve.max_id_length, serve.max_list_length, serve.max_body_bytes)


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``message`` is safe to send back."""

    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status = 400


class NotFound(ServiceError):
    status = 404

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # "user" or "item", for the unknown-id metric


class PayloadTooLarge(ServiceError):
    status = 413


class UnsupportedMediaType(ServiceError):
    status = 415


class NotReady(ServiceError):
    status = 503


def clip(value: Any, n: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``n`` characters with the full length said, for quoting client input."""
    text = repr(value)
    if len(text) <= n:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
    return f"{text[:n]}… ({size})"


_PATH = re.compile(r"(?:file:/*)?(?<![\w.~-])/(?:[^\s'\"/:,()]+/)+[^\s'\"/:,()]*")


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def scrub(text: str, n: int = 300) -> str:
    """Remove absolute filesystem paths and URI credentials from ``text`` (for messages a client sees), cut to ``n``."""
    text = _PATH.sub("<path>", _USERINFO.sub("", text))
    return text if len(text) <= n else text[:n] + "…"


def error_body(exc: ServiceError) -> dict[str, str]:
    return {"error": exc.message}


def log_refusal(where: str, exc: ServiceError) -> None:
    """One WARNING line per refused request (no traceback: the client's mistake, not ours)."""
    if exc.status >= 500:
        log.error("%s -> %d: %s", where, exc.status, exc.message)
    else:
        log.warning("%s -> %d: %s", where, exc.status, exc.message)


# -------------------------------------------------------------------- the served model

@dataclass(frozen=True)
class Loaded:
    rec: Recommender
    name: str
    version: str  # registry version ("3") or content hash ("sha256:…"); never a path


def _iso(t: float) -> str:
    """``t`` (seconds since the epoch) as an ISO 8601 UTC timestamp, to the millisecond."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def content_version(model_dir: str | Path) -> str:
    """``sha256:`` + the first 12 hex digits of the weights file's hash: names a local model without its path."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:12]


class ModelHolder:
    """Holds the served model; ``source`` is a local model directory or a ``models:/`` URI."""

    def __init__(self, source: str, tracking_uri: str | None = None, poll_interval_s: float = 30.0):
        self.source = source
        self.tracking_uri = tracking_uri
        self.poll_interval_s = poll_interval_s
        self.current: Loaded | None = None
        self.last_error: str | None = None  # for the log: may name files
        self.public_error: str | None = None  # the same without paths, for clients
        self.swaps = 0
        #: wall-clock time of the last poll the registry answered (``models:/`` sources), None before the first
        self.last_poll_ok: float | None = None
        #: why the registry is degraded (the last poll failed, or the version it named did not load); no paths
        self.registry_error: str | None = None
        self.failed_polls = 0  # consecutive polls the registry did not answer
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one load at a time
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- loading

    def _resolve(self) -> tuple[str, str, str]:
        """(name, version, what to load) for the source as it stands now; name "" = from the model."""
        if not self.source.startswith("models:/"):
            return "", content_version(self.source), self.source
        from sora.registry import resolve_model_uri

        return resolve_model_uri(self.tracking_uri, self.source)

    def refresh(self) -> bool:
        """Load the source's current version if it differs from the served one. True if swapped."""
        with self._lock:
            asked = time.time()
            try:
                name, version, uri = self._resolve()
            except Exception as exc:  # noqa: BLE001 - an outage: keep serving, say so in /healthz
                return self._poll_failed(exc, asked)
            if self.source.startswith("models:/"):
                self._poll_answered(asked)
            try:
                if self.current is not None and self.current.version == version:
                    self.registry_error = None
                    return False
                start = time.perf_counter()
                if uri.startswith("models:/"):
                    from sora.registry import load_version

                    rec = load_version(self.tracking_uri or "", uri)
                else:
                    from sora.recommender import Recommender

                    rec = Recommender.load(uri)
                rec.prepare_serving(rec.config.serve.precompute_max_scores)
                name = name or rec.config.registry.model_name
                previous = self.current.version if self.current else None
                self.current = Loaded(rec, name, version)  # the swap: one reference assignment
                # the served model's objects never need collecting: frozen, full collections stay short (p99);
                # unfrozen first, so the model just replaced is collected
                gc.unfreeze()
                gc.collect()
                gc.freeze()
                self.swaps += previous is not None
                self.last_error = self.public_error = self.registry_error = None
                log.info("serving %s version %s (was %s), loaded in %.1fs", name, version, previous,
                         time.perf_counter() - start)
                return True
            except Exception as exc:  # noqa: BLE001 - keep serving the old model on any load failure
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.public_error = scrub(self.last_error)
                if self.source.startswith("models:/"):
                    self.registry_error = scrub(f"could not load version {version}: {self.last_error}")
                log.error("could not load %s: %s; %s", self.source, self.last_error,
                          "keeping the served model" if self.current else "no model loaded yet")
                return False

    def _poll_answered(self, asked: float) -> None:
        if self.failed_polls:
            log.warning("registry answers again after %d failed poll(s); checking %s", self.failed_polls, self.source)
        self.last_poll_ok = asked  # when the poll was sent: a registry killed after that cannot have answered it
        self.failed_polls = 0

    def _poll_failed(self, exc: Exception, asked: float) -> bool:
        """The registry (or a local source) could not be read: keep what is served, log the first failure only."""
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        not_found = False
        if self.source.startswith("models:/"):
            from sora.registry import RegistryNotFound

            not_found = isinstance(exc, RegistryNotFound)
        if not_found:  # the registry answered: no such alias (yet)
            self._poll_answered(asked)
            self.registry_error = None
        else:
            self.failed_polls += 1
            self.registry_error = scrub(detail)
        self.last_error, self.public_error = detail, scrub(detail)
        served = f"keeping version {self.current.version}" if self.current else "no model loaded yet"
        if not_found or self.failed_polls == 1:
            log.error("could not resolve %s: %s; %s", self.source, detail, served)
        else:  # one line per outage, not one per poll
            log.debug("registry still unreachable (%d polls): %s", self.failed_polls, detail)
        return False

    def start(self) -> None:
        """Load in the background now, then poll (``models:/…@alias`` sources only)."""
        def loop() -> None:
            self.refresh()
            polls = bool(ALIAS_URI.match(self.source)) and self.poll_interval_s > 0
            while polls and not self._stop.wait(self.poll_interval_s):
                self.refresh()
            while self.current is None and not self._stop.wait(2.0):  # keep trying until first load
                self.refresh()

        self._thread = threading.Thread(target=loop, name="sora-model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def ready(self) -> bool:
        return self.current is not None

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` reports: the served model and, for registry sources, the registry's state.

        ``status`` is ``ok``, ``degraded`` (a model answers, but the registry did not at the last poll or
        the version it names failed to load) or ``not ready`` (no model yet). Never a path or a URI.
        """
        loaded = self.current
        out: dict[str, Any] = {"model": {"name": loaded.name, "version": loaded.version} if loaded else None,
                               "swaps": self.swaps}
        degraded = False
        if self.source.startswith("models:/"):
            last = self.last_poll_ok
            degraded = self.registry_error is not None
            out["registry"] = {
                "status": "degraded" if degraded else ("ok" if last is not None else "unknown"),
                "last_successful_poll": _iso(last) if last is not None else None,
                "seconds_since_last_successful_poll": round(time.time() - last, 1) if last is not None else None,
                "failed_polls": self.failed_polls, "poll_interval_s": self.poll_interval_s,
                "error": self.registry_error}
        out["status"] = "not ready" if loaded is None else "degraded" if degraded else "ok"
        return out

    def require(self) -> Loaded:
        """The served model, or :class:`NotReady` (503) saying why there is none yet."""
        loaded = self.current
        if loaded is None:
            reason = f"the last attempt failed: {self.public_error}" if self.public_error else "model loading"
            raise NotReady(f"no model loaded yet ({reason})")
        return loaded


# -------------------------------------------------------------------- request checks

def _id(field: str, value: Any, limits: Limits) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRequest(f"{field}: expected a string id, got {type(value).__name__}")
    value = str(value)
    if not value:
        raise BadRequest(f"{field}: empty id")
    if len(value) > limits.max_id_length:
        raise BadRequest(f"{field}: id longer than {limits.max_id_length} characters ({len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON but no text
        raise BadRequest(f"{field}: not valid Unicode text") from None
    return value


def _ids(field: str, value: Any, limits: Limits) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(f"{field}: expected a list of ids, got {type(value).__name__}")
    if not value:
        raise BadRequest(f"{field}: empty list")
    if len(value) > limits.max_list_length:
        raise BadRequest(f"{field}: more than {limits.max_list_length} ids ({len(value)})")
    return [_id(f"{field}[{n}]", v, limits) for n, v in enumerate(value)]


def _recent_ids(field: str, value: Any, limits: Limits) -> list[str]:
    """Events since training: a list of distinct ids, possibly empty (no events)."""
    if isinstance(value, list) and not value:
        return []
    ids = _ids(field, value, limits)
    seen: set[str] = set()
    for n, i in enumerate(ids):
        if i in seen:
            raise BadRequest(f"{field}[{n}]: duplicate item id {clip(i)}")
        seen.add(i)
    return ids


def _k(field: str, value: Any, limits: Limits) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field}: expected an integer 1..{limits.max_k}, got {clip(value)}")
    if not 1 <= value <= limits.max_k:
        raise BadRequest(f"{field}: must be in 1..{limits.max_k}, got {value}")
    return value


def _flag(field: str, value: Any, limits: Limits) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{field}: expected true or false, got {clip(value)}")
    return value


_REQUIRED = object()
_OPTIONAL = object()  # no default: left out of the checked arguments unless the request gives it

#: endpoint -> {field: (check, default)}; the one description of what each endpoint accepts.
ENDPOINTS: dict[str, dict[str, tuple[Callable[[str, Any, Limits], Any], Any]]] = {
    "recommend": {"user_id": (_id, _REQUIRED), "k": (_k, 10), "exclude_seen": (_flag, True),
                  "fallback": (_flag, False), "recent_item_ids": (_recent_ids, _OPTIONAL),
                  "explain": (_flag, False)},
    "recommend_from_history": {"item_ids": (_ids, _REQUIRED), "k": (_k, 10), "explain": (_flag, False)},
    "similar_items": {"item_id": (_id, _REQUIRED), "k": (_k, 10)},
    "score": {"user_id": (_id, _REQUIRED), "item_ids": (_ids, _REQUIRED),
              "recent_item_ids": (_recent_ids, _OPTIONAL)},
}


def validate(endpoint: str, payload: Any, limits: Limits = Limits()) -> dict[str, Any]:
    """The request's arguments, checked and with defaults filled in, or :class:`BadRequest` naming the field."""
    fields = ENDPOINTS[endpoint]
    if not isinstance(payload, dict):
        raise BadRequest(f"request body must be a JSON object with {', '.join(fields)}; got {type(payload).__name__}")
    unknown = [k for k in payload if k not in fields]
    if unknown:
        raise BadRequest(f"unknown field {clip(unknown[0])}; {endpoint} takes {', '.join(fields)}")
    out = {}
    for name, (check, default) in fields.items():
        if name in payload and payload[name] is not None:
            out[name] = check(name, payload[name], limits)
        elif default is _REQUIRED:
            raise BadRequest(f"{name}: required")
        elif default is not _OPTIONAL:
            out[name] = default
    return out


def parse_body(body: bytes, content_type: str | None, limits: Limits = Limits()) -> Any:
    """The JSON value of a request body, or 413 / 415 / 400."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(f"content type {clip(media)} is not supported; send application/json")
    if len(body) > limits.max_body_bytes:
        raise PayloadTooLarge(f"request body larger than {limits.max_body_bytes} bytes")
    try:
        return json.loads(body or b"{}")
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        detail = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadRequest(f"body is not valid JSON{detail}") from None


# -------------------------------------------------------------------- answers (service contract)

def _envelope(loaded: Loaded, items: list[dict[str, Any]], fallback: bool = False, **extra) -> dict[str, Any]:
    return {"model": {"name": loaded.name, "version": loaded.version}, "items": items, "fallback": fallback, **extra}


def _unknown_user(user_id: str, fallback_hint: bool = False) -> NotFound:
    hint = ' (send "fallback": true for popular items)' if fallback_hint else ""
    return NotFound(f"user_id: unknown user {clip(user_id)}{hint}", "user")


def _check_recent(loaded: Loaded, recent_item_ids: list[str]) -> None:
    """Recent events must name known items: an unknown one is 404 naming the field (never skipped silently)."""
    missing = [i for i in recent_item_ids if i not in loaded.rec.item_index]
    if missing:
        raise NotFound(f"recent_item_ids: {len(missing)} unknown item id(s), first {clip(missing[0])}", "item")


def recommend(loaded: Loaded, user_id: str, k: int = 10, exclude_seen: bool = True,
              fallback: bool = False, recent_item_ids: list[str] | None = None, explain: bool = False) -> dict[str, Any]:
    """Top-k for a known user; an unknown one gets popular items if ``fallback``, else :class:`NotFound`.

    ``recent_item_ids`` (events since training, newest last) are folded into the user's history and
    excluded from the results; nothing is stored, so every replica answers the same request alike.
    ``explain``: each item carries ``because`` (:mod:`sora.explain`); popular fallback items have none.
    """
    recent = list(recent_item_ids or [])
    _check_recent(loaded, recent)
    if user_id not in loaded.rec.user_index:
        if not fallback:
            raise _unknown_user(user_id, fallback_hint=True)
        return _envelope(loaded, loaded.rec.recommend_popular(k, exclude=recent), fallback=True)
    return _envelope(loaded, loaded.rec.recommend(user_id, k=k, exclude_seen=exclude_seen, recent_item_ids=recent,
                                                  explain=explain))


def recommend_from_history(loaded: Loaded, item_ids: list[str], k: int = 10, explain: bool = False) -> dict[str, Any]:
    """Top-k from a history; unknown ids are skipped and listed, a history of only unknown ids is 404."""
    from sora.recommender import UnknownIdError

    try:
        items, ignored = loaded.rec.recommend_from_history(item_ids, k=k, explain=explain)
    except UnknownIdError:
        raise NotFound(f"item_ids: none of the {len(item_ids)} item ids is known "
                       f"(first: {clip(item_ids[0])})", "item") from None
    return _envelope(loaded, items, ignored_item_ids=ignored)


def similar_items(loaded: Loaded, item_id: str, k: int = 10) -> dict[str, Any]:
    if item_id not in loaded.rec.item_index:
        raise NotFound(f"item_id: unknown item {clip(item_id)}", "item")
    return _envelope(loaded, loaded.rec.similar_items(item_id, k=k))


def score(loaded: Loaded, user_id: str, item_ids: list[str],
          recent_item_ids: list[str] | None = None) -> dict[str, Any]:
    if user_id not in loaded.rec.user_index:
        raise _unknown_user(user_id)
    missing = [i for i in item_ids if i not in loaded.rec.item_index]
    if missing:
        raise NotFound(f"item_ids: {len(missing)} unknown item id(s), first {clip(missing[0])}", "item")
    recent = list(recent_item_ids or [])
    _check_recent(loaded, recent)
    return _envelope(loaded, loaded.rec.score(user_id, item_ids, recent_item_ids=recent))


ANSWERS: dict[str, Callable[..., dict[str, Any]]] = {
    "recommend": recommend, "recommend_from_history": recommend_from_history,
    "similar_items": similar_items, "score": score,
}


def handle(holder: ModelHolder, endpoint: str, payload: Any, limits: Limits = Limits()) -> dict[str, Any]:
    """Check ``payload`` (a parsed JSON body) and answer it with the served model.

    Refusals raise :class:`ServiceError`: 400 for a bad request, 404 for unknown ids, 503 while no model is loaded.
    """
    args = validate(endpoint, payload, limits)
    return ANSWERS[endpoint](holder.require(), **args)


# -------------------------------------------------------------------- ASGI guard

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


class RequestGuard:
    """ASGI middleware for the JSON endpoints: 415 / 413 / 400 before the framework parses the body.

    A POST to one of ``endpoints`` is read (at most ``limits.max_body_bytes``), parsed and checked
    with :func:`validate`; a refusal is answered here with ``{"error": ...}`` and logged once at
    WARNING. An accepted request reaches the app with its checked arguments re-encoded as JSON, so
    the framework's own parser never sees anything it would reject. Other requests pass untouched.
    """

    def __init__(self, app: Callable, limits: Limits = Limits(), endpoints: Iterable[str] = tuple(ENDPOINTS)):
        self.app = app
        self.limits = limits
        self.endpoints = set(endpoints)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        endpoint = scope.get("path", "").strip("/")
        if scope["type"] != "http" or scope.get("method") != "POST" or endpoint not in self.endpoints:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            parse_body(b"", content_type, self.limits)  # content type first: do not read what we refuse
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.limits.max_body_bytes):
                raise PayloadTooLarge(f"request body larger than {self.limits.max_body_bytes} bytes")
            body = await self._read(receive)
            args = validate(endpoint, parse_body(body, content_type, self.limits), self.limits)
        except ServiceError as exc:
            log_refusal(f"POST /{endpoint}", exc)
            await _send_json(send, exc.status, error_body(exc))
            return
        data = json.dumps(args).encode()
        kept = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        scope = {**scope, "headers": [*kept, (b"content-type", b"application/json"),
                                      (b"content-length", str(len(data)).encode())]}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise PayloadTooLarge(f"request body larger than {self.limits.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class HealthEndpoint:
    """ASGI middleware answering ``GET /healthz`` with ``report()`` as JSON (BentoML's own is a bare liveness 200).

    Always 200 while the process answers (liveness stays BentoML's ``/livez``; readiness ``/readyz``): the
    body says whether the model is served and whether the registry is ``degraded``
    (:meth:`ModelHolder.health`). ``report`` returning None (no service instance yet) is ``not ready``.
    """

    def __init__(self, app: Callable, report: Callable[[], dict[str, Any] | None], path: str = "/healthz"):
        self.app = app
        self.report = report
        self.path = path

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and scope.get("path") == self.path:
            await _send_json(send, 200, self.report() or {"status": "not ready", "model": None})
            return
        await self.app(scope, receive, send)


# -------------------------------------------------------------------- process hygiene

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int, parent_pid: int | None = None) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent exits (``prctl(PR_SET_PDEATHSIG)``).

    Used by ``sora serve`` for its server child and by the service's workers, so no worker outlives
    the process that started it, whatever signal that one got. ``parent_pid``: the parent expected
    (from before a fork), to catch one that died before this call. False where prctl is unavailable.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent_pid is not None and os.getppid() != parent_pid:  # it died before we asked: same outcome
        os.kill(os.getpid(), sig)
    return True


def stop_listening() -> int:
    """Stop every listening TCP socket of this process from taking new connections; returns how many.

    A BentoML worker shares its listening socket with the arbiter. When the worker drains on SIGTERM
    it only closes its own copy, so the kernel keeps queueing new connections on the arbiter's copy
    and resets them all at exit: clients see dropped requests. ``shutdown(SHUT_RD)`` on the shared
    socket takes it out of the listening state for every holder: new connections are refused at
    once (clients can retry elsewhere) while accepted requests finish.
    """
    import os
    import socket

    stopped = 0
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM \
                    and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                s.shutdown(socket.SHUT_RD)
                stopped += 1
        except OSError:
            pass
        finally:
            s.close()  # closes the duplicate only
    return stopped


def stop_listening_on(sig: int) -> None:
    """Run :func:`stop_listening` first when ``sig`` arrives, then the handler already installed (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(sig)

    def handler(signum, frame) -> None:
        stop_listening()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    signal.signal(sig, handler)
