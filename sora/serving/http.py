"""The service's HTTP edge besides BentoML: the JSON endpoints' guard, ``/healthz``, process hygiene.

:class:`RequestGuard` is the ASGI middleware for what BentoML does not do for the JSON endpoints: 415
for a body that is not JSON, 413 for one over the size cap, and BentoML's own 400 for a body its
request model rejects reworded as the project's ``{"error": "<field>: ..."}``. The body itself is
parsed and checked once, by BentoML, against :func:`sora.serving.requests.request_models`.
:class:`HealthEndpoint` answers ``/healthz``. :func:`die_with_parent` and :func:`stop_listening_on`
keep processes tidy: no worker outlives ``sora serve``, and SIGTERM refuses new connections while
requests in flight finish.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sora.serving.requests import (
    ENDPOINTS,
    BadRequest,
    Limits,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    clip,
    error_body,
    log_refusal,
    refusal,
)

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def _json_response(status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> list[dict]:
    data = json.dumps(body).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]},
            {"type": "http.response.body", "body": data}]


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    for message in _json_response(status, body, [(b"connection", b"close")]):
        await send(message)


def check_media_type(content_type: str | None) -> None:
    """:class:`UnsupportedMediaType` (415) unless ``content_type`` is JSON (``application/json``, ``…+json``) or absent."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(f"content type {clip(media)} is not supported; send application/json")


class RequestGuard:
    """ASGI middleware for the JSON endpoints: 415 and 413 before BentoML reads the body, its 400s in our words.

    A POST to one of ``endpoints`` is refused here, with ``{"error": ...}`` logged once at WARNING, when
    its content type is not JSON (BentoML would read any body as JSON) or its body is over
    ``limits.max_body_bytes``: a declared ``Content-Length`` is checked before anything is read (the
    server delivers no more than it declares); a body sent without one (chunked) is read here, counted,
    and handed on. Everything else reaches BentoML untouched, which parses and checks it against the
    endpoint's request model. BentoML answers a rejected body with ``400 {"error": "1 validation error
    for …", "detail": [pydantic's errors]}`` (logged by BentoML, one WARNING line through the service's
    log filter); that answer is reworded here as :func:`sora.serving.requests.refusal` says. (BentoML
    1.4's other route to a 4xx, raising a ``BentoMLException``, answers a JSON list, not an object.)
    Other requests pass untouched.
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
            check_media_type(headers.get(b"content-type", b"").decode("latin-1"))
            declared = headers.get(b"content-length")
            if declared is None:
                receive = _replay(await self._read(receive), receive)
            elif not declared.isdigit() or int(declared) > self.limits.max_body_bytes:
                raise PayloadTooLarge(f"request body larger than {self.limits.max_body_bytes} bytes")
        except ServiceError as exc:
            log_refusal(f"POST /{endpoint}", exc)
            await _send_json(send, exc.status, error_body(exc))
            return
        await self.app(scope, receive, self._reworded(endpoint, send))

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

    def _reworded(self, endpoint: str, send: Send) -> Send:
        """``send``, with a 400 answer held back and reworded (:meth:`_words`); any other answer passes as it is."""
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def reworded(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
            for out in _json_response(400, self._words(endpoint, b"".join(chunks)), kept):
                await send(out)

        return reworded

    def _words(self, endpoint: str, body: bytes) -> dict[str, str]:
        """BentoML's 400 body as ``{"error": ...}``: pydantic's ``detail`` through :func:`refusal`."""
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        detail = answer.get("detail") if isinstance(answer, dict) else None
        if detail is None and isinstance(answer, dict) and isinstance(answer.get("error"), str):
            return {"error": answer["error"]}  # already the project's shape
        return error_body(refusal(endpoint, detail if isinstance(detail, list) else [], self.limits))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then waits on the real one (for the disconnect, as the server would)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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
