"""What the BentoML service does, without BentoML: load a model once, answer requests, hot-swap on a moved alias.

:class:`ModelHolder` owns the served model. ``models:/<name>@<alias>`` URIs are polled (every
``poll_interval_s``); when the alias points at a new version, that version is downloaded and loaded
in a background thread and then swapped in with one reference assignment, so requests in flight keep
the model they started with. A version that fails to load is logged and the old one keeps serving.
No DGL is imported here (the serving image does not need it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sora.recommender import Recommender, UnknownIdError

log = logging.getLogger(__name__)

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class Loaded:
    rec: Recommender
    name: str
    version: str


class ModelHolder:
    """Holds the served model; ``source`` is a local model directory or a ``models:/`` URI."""

    def __init__(self, source: str, tracking_uri: str | None = None, poll_interval_s: float = 30.0):
        self.source = source
        self.tracking_uri = tracking_uri
        self.poll_interval_s = poll_interval_s
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one load at a time
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- loading

    def _resolve(self) -> tuple[str, str, str]:
        """(name, version, uri to load) for the source as it stands now."""
        if not self.source.startswith("models:/"):
            path = Path(self.source)
            return path.name or "sora", f"local:{path.resolve()}", str(path)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        m = ALIAS_URI.match(self.source)
        if m:
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
            return m["name"], str(mv.version), f"models:/{m['name']}/{mv.version}"
        m = VERSION_URI.match(self.source)
        if m:
            return m["name"], m["version"], self.source
        raise ValueError(f"model URI must be models:/NAME@ALIAS or models:/NAME/VERSION, got {self.source!r}")

    def refresh(self) -> bool:
        """Load the source's current version if it differs from the served one. True if swapped."""
        with self._lock:
            try:
                name, version, uri = self._resolve()
                if self.current is not None and self.current.version == version:
                    return False
                start = time.perf_counter()
                if uri.startswith("models:/"):
                    from sora.registry import load_version

                    rec = load_version(self.tracking_uri or "", uri)
                else:
                    rec = Recommender.load(uri)
                previous = self.current.version if self.current else None
                self.current = Loaded(rec, name, version)  # the swap: one reference assignment
                self.swaps += previous is not None
                self.last_error = None
                log.info("serving %s v%s (was %s), loaded in %.1fs", name, version, previous,
                         time.perf_counter() - start)
                return True
            except Exception as exc:  # noqa: BLE001 - keep serving the old model on any load failure
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("could not load %s: %s; %s", self.source, self.last_error,
                          "keeping the served model" if self.current else "no model loaded yet")
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


# -------------------------------------------------------------------- responses (service contract)

def _envelope(loaded: Loaded, items: list[dict[str, Any]], fallback: bool = False, **extra) -> dict[str, Any]:
    return {"model": {"name": loaded.name, "version": loaded.version}, "items": items, "fallback": fallback, **extra}


def recommend(loaded: Loaded, user_id: str, k: int, exclude_seen: bool, fallback: bool) -> dict[str, Any]:
    try:
        return _envelope(loaded, loaded.rec.recommend(user_id, k=k, exclude_seen=exclude_seen))
    except UnknownIdError:
        if not fallback:
            raise
        return _envelope(loaded, loaded.rec.recommend_popular(k), fallback=True)


def recommend_from_history(loaded: Loaded, item_ids: list[str], k: int) -> dict[str, Any]:
    items, ignored = loaded.rec.recommend_from_history(item_ids, k=k)
    return _envelope(loaded, items, ignored_item_ids=ignored)


def similar_items(loaded: Loaded, item_id: str, k: int) -> dict[str, Any]:
    return _envelope(loaded, loaded.rec.similar_items(item_id, k=k))


def score(loaded: Loaded, user_id: str, item_ids: list[str]) -> dict[str, Any]:
    return _envelope(loaded, loaded.rec.score(user_id, item_ids))
