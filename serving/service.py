"""The Sora BentoML service (DESIGN.md §7, §10 "Service contract"): thin over :mod:`sora.serving.core`.

Configuration comes from the environment (this is an edge):

- ``SORA_MODEL_URI``   ``models:/sora@champion`` (default) or ``models:/sora/3``; polled for alias moves
- ``SORA_MODEL_DIR``   a local model directory instead of the registry
- ``MLFLOW_TRACKING_URI`` where the registry lives
- ``SORA_POLL_INTERVAL_S`` seconds between alias checks (default ``serve.poll_interval_s``)
- ``SORA_STOP_LISTENING_ON_SIGTERM=1`` a worker's SIGTERM means the whole server stops: the shared
  listening socket stops taking connections at once (refused, not queued and reset at exit) while
  requests in flight finish. Set by ``sora serve`` and the Bento; leave it unset under
  ``bentoml serve --reload``, whose restarted workers reuse that socket.
- ``SORA_DIE_WITH_PARENT=1`` workers get SIGTERM when their arbiter dies (set by ``sora serve``)

``/healthz`` answers JSON (:meth:`sora.serving.core.ModelHolder.health`): the served model and, while the
registry does not answer, ``"registry": {"status": "degraded", "last_successful_poll": ...}``; the service
keeps answering from the model it has and ``/readyz`` stays ready.

Request limits (id length, list length, body size, k) are ``SoraConfig().serve``'s. Each JSON
endpoint's body is a pydantic model (:func:`sora.serving.requests.request_models`) given to BentoML as
the API's ``input_spec``: BentoML parses and checks it, once, and the method gets checked arguments
for :func:`sora.serving.core.answer` (404 for unknown ids, 503 at once while no model is loaded).
:class:`sora.serving.http.RequestGuard` adds what BentoML lacks (415 for a body that is not JSON, 413
over the size cap) and words BentoML's 400s the project's way. Errors are ``{"error": "..."}``, logged
once at WARNING.

The endpoints are ``async``: an answer is a precomputed row read or one small matrix product
(:meth:`sora.model.recommender.Recommender.prepare_serving`), well under a millisecond, so it runs on the
event loop instead of paying a thread hop per request; torch uses ``serve.num_threads`` threads per
worker (1: scale with ``workers``, not with threads fighting over the same cores).

``/score`` is not batched across requests: BentoML 1.4 batchable APIs take a single argument, and
one ``/score`` request already scores a whole list of items in one matrix product.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import bentoml
import torch
from starlette.responses import Response

from sora.config import SoraConfig
from sora.serving.core import ModelHolder, answer
from sora.serving.http import HealthEndpoint, RequestGuard, die_with_parent, stop_listening_on
from sora.serving.requests import Limits, NotFound, ServiceError, error_body, log_refusal, request_models

SERVE = SoraConfig().serve
LIMITS = Limits.from_config(SERVE)
REQUESTS = request_models(LIMITS)


_HOLDERS: list[ModelHolder] = []  # this worker's service instance's holder, for /healthz


def _health() -> dict | None:
    return _HOLDERS[-1].health() if _HOLDERS else None


class _QuietClientErrors(logging.Filter):
    """BentoML logs any exception it turns into a 4xx at ERROR with a traceback; make that one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(getattr(exc, "error_code", None), "value", None)
        if exc is not None and (type(exc).__name__ == "ValidationError" or (code is not None and code < 500)):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "%s (%s)", (record.getMessage(), str(exc).splitlines()[0][:200])
            record.exc_info = record.exc_text = None
        return True


@bentoml.service(name="sora", traffic={"timeout": 30}, workers=1)
class SoraService:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        if os.environ.get("SORA_DIE_WITH_PARENT") == "1":  # set by `sora serve`: never outlive the server
            die_with_parent(signal.SIGTERM)
        if os.environ.get("SORA_STOP_LISTENING_ON_SIGTERM") == "1":  # not under --reload: see the docstring
            stop_listening_on(signal.SIGTERM)  # refuse new connections at once, then drain (uvicorn's handler)
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_QuietClientErrors())
        if logging.getLogger("sora").level == logging.NOTSET:  # model loads and swaps belong in the server log
            logging.getLogger("sora").setLevel(logging.INFO)
        source = os.environ.get("SORA_MODEL_DIR") or os.environ.get("SORA_MODEL_URI", SERVE.model_uri)
        self.holder = ModelHolder(source, os.environ.get("MLFLOW_TRACKING_URI"),
                                  float(os.environ.get("SORA_POLL_INTERVAL_S", SERVE.poll_interval_s)))
        self.fallbacks = Counter("sora_fallback_responses", "Responses that used the popularity fallback")
        self.unknown = Counter("sora_unknown_ids", "Requests naming an unknown user or item id", ["kind"])
        self.version = Gauge("sora_model_version", "Registry version of the served model (0 = local directory)",
                             multiprocess_mode="livemax")
        torch.set_num_threads(SERVE.num_threads)
        _HOLDERS[:] = [self.holder]
        self.holder.start()

    def __is_ready__(self) -> bool:
        loaded = self.holder.current
        if loaded is not None:
            self.version.set(float(loaded.version) if loaded.version.isdigit() else 0.0)
        return loaded is not None

    def _answer(self, ctx: bentoml.Context, endpoint: str, args: dict[str, Any]) -> Response:
        """:func:`answer` as a JSON response, a refusal turned into its status code and ``{"error": ...}``.

        ``args`` are BentoML's, checked against ``REQUESTS[endpoint]``. The body is encoded here rather
        than returned as a ``dict``: BentoML's ``dict`` output path rebuilds the output model's JSON
        schema on every response (about a third of a millisecond).
        """
        try:
            out = answer(self.holder, endpoint, args)
        except ServiceError as exc:
            if isinstance(exc, NotFound):
                self.unknown.labels(exc.kind).inc()
            log_refusal(f"POST /{endpoint}", exc)
            ctx.response.status_code = exc.status
            out = error_body(exc)
        else:
            if out["fallback"]:
                self.fallbacks.inc()
        return Response(json.dumps(out), media_type="application/json")

    @bentoml.api(input_spec=REQUESTS["recommend"])
    async def recommend(self, ctx: bentoml.Context, **request: Any) -> dict:
        """Top-k items for a known user; ``fallback=true`` answers unknown users with popular items.

        ``recent_item_ids``: the user's events since training, newest last (folded into the history, excluded).
        ``explain=true``: each item carries ``because``, the history items that drove it, heaviest first.
        """
        return self._answer(ctx, "recommend", request)

    @bentoml.api(input_spec=REQUESTS["recommend_from_history"])
    async def recommend_from_history(self, ctx: bentoml.Context, **request: Any) -> dict:
        """Top-k for an anonymous user from a history of item ids, oldest first (unknown ids are skipped and listed).

        ``explain=true`` as for ``/recommend``.
        """
        return self._answer(ctx, "recommend_from_history", request)

    @bentoml.api(input_spec=REQUESTS["similar_items"])
    async def similar_items(self, ctx: bentoml.Context, **request: Any) -> dict:
        """Items closest to ``item_id`` in Sora's fused item space."""
        return self._answer(ctx, "similar_items", request)

    @bentoml.api(input_spec=REQUESTS["score"])
    async def score(self, ctx: bentoml.Context, **request: Any) -> dict:
        """Scores of the given items for a user, in the order given (``recent_item_ids`` as for recommend)."""
        return self._answer(ctx, "score", request)


SoraService.add_asgi_middleware(RequestGuard, limits=LIMITS)
SoraService.add_asgi_middleware(HealthEndpoint, report=_health)
