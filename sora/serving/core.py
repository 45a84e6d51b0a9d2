"""What the BentoML service does, without BentoML: load a model once, answer requests, hot-swap.

:class:`ModelHolder` owns the served model. ``models:/<name>@<alias>`` URIs are polled (every
``poll_interval_s``); when the alias points at a new version, that version is downloaded and loaded
in a background thread and then swapped in with one reference assignment, so requests in flight keep
the model they started with. A version that fails to load is logged and the old one keeps serving.
While the registry does not answer (an outage), the served model keeps answering; :meth:`ModelHolder.health`
reports the registry as ``degraded`` with the time of the last poll it answered, and the first poll
after it comes back picks up whatever the alias points at by then.

:func:`answer` answers a checked request (the service's: BentoML has checked it against
:func:`sora.serving.requests.request_models`); :func:`handle` checks a plain dict first, for
in-process callers. Refusals are :class:`sora.serving.requests.ServiceError` (404 for unknown ids,
503 while no model is loaded). The HTTP edge (body-size and content-type guard, ``/healthz``, process
hygiene) is :mod:`sora.serving.http`. No DGL and no MLflow are imported here (the registry goes
through :mod:`sora.registry`).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sora.serving.requests import Limits, NotFound, NotReady, clip, scrub, validate

if TYPE_CHECKING:  # imported where used: `sora serve` and the ASGI guard need none of torch
    from sora.model.recommender import Recommender

log = logging.getLogger(__name__)

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


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
                    from sora.model.recommender import Recommender

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
    ``explain``: each item carries ``because`` (:mod:`sora.model.explain`); popular fallback items have none.
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
    from sora.model.recommender import UnknownIdError

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


def answer(holder: ModelHolder, endpoint: str, args: dict[str, Any]) -> dict[str, Any]:
    """Answer a checked request with the served model: :class:`NotFound` (404) for unknown ids, :class:`NotReady` (503)."""
    return ANSWERS[endpoint](holder.require(), **args)


def handle(holder: ModelHolder, endpoint: str, payload: Any, limits: Limits = Limits()) -> dict[str, Any]:
    """Check ``payload`` (a parsed JSON body) and answer it with the served model.

    Refusals raise :class:`sora.serving.requests.ServiceError`: 400 for a bad request (before readiness
    matters), 404 for unknown ids, 503 while no model is loaded.
    """
    return answer(holder, endpoint, validate(endpoint, payload, limits))
