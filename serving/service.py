"""The Sora BentoML service (DESIGN.md §7, §10 "Service contract").

Configuration comes from the environment (this is an edge):

- ``SORA_MODEL_URI``   ``models:/sora@champion`` (default) or ``models:/sora/3``; polled for alias moves
- ``SORA_MODEL_DIR``   a local model directory instead of the registry
- ``MLFLOW_TRACKING_URI`` where the registry lives
- ``SORA_POLL_INTERVAL_S`` seconds between alias checks (default 30)

``/score`` is not batched across requests: BentoML 1.4 batchable APIs take a single argument, and
one ``/score`` request already scores a whole list of items in one matrix product.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Annotated

import bentoml
from bentoml.exceptions import BentoMLException, NotFound
from pydantic import Field

log = logging.getLogger("sora.serving")

K = Annotated[int, Field(ge=1, le=1000, description="number of items to return (1..1000)")]


class NotReady(BentoMLException):
    error_code = 503


@bentoml.service(name="sora", traffic={"timeout": 30}, workers=1)
class SoraService:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        from sora.serving_core import ModelHolder

        source = os.environ.get("SORA_MODEL_DIR") or os.environ.get("SORA_MODEL_URI", "models:/sora@champion")
        self.holder = ModelHolder(source, os.environ.get("MLFLOW_TRACKING_URI"),
                                  float(os.environ.get("SORA_POLL_INTERVAL_S", "30")))
        self.fallbacks = Counter("sora_fallback_responses", "Responses that used the popularity fallback")
        self.unknown = Counter("sora_unknown_ids", "Requests naming an unknown user or item id", ["kind"])
        self.version = Gauge("sora_model_version", "Registry version of the served model (0 = local directory)",
                             multiprocess_mode="livemax")
        self.holder.start()

    def __is_ready__(self) -> bool:
        loaded = self.holder.current
        if loaded is not None:
            self.version.set(float(loaded.version) if loaded.version.isdigit() else 0.0)
        return loaded is not None

    @contextlib.contextmanager
    def _not_found(self, field: str, kind: str, hint: str = ""):
        """Turn an unknown id into a 404 naming the request field, and count it."""
        from sora.recommender import UnknownIdError

        try:
            yield
        except UnknownIdError as exc:
            self.unknown.labels(kind).inc()
            raise NotFound(f"{field}: {exc.args[0]}{hint}") from None

    def _loaded(self):
        loaded = self.holder.current
        if loaded is None:
            raise NotReady(f"no model loaded yet ({self.holder.last_error or 'loading'})")
        self.version.set(float(loaded.version) if loaded.version.isdigit() else 0.0)
        return loaded

    @bentoml.api
    def recommend(self, user_id: str, k: K = 10, exclude_seen: bool = True, fallback: bool = False) -> dict:
        """Top-k items for a known user; ``fallback=true`` answers unknown users with popular items."""
        from sora.serving_core import recommend

        with self._not_found("user_id", "user", ' (send "fallback": true for popular items)'):
            out = recommend(self._loaded(), user_id, k, exclude_seen, fallback)
        if out["fallback"]:
            self.fallbacks.inc()
        return out

    @bentoml.api
    def recommend_from_history(self, item_ids: Annotated[list[str], Field(min_length=1, max_length=1000)],
                               k: K = 10) -> dict:
        """Top-k for an anonymous user from a history of item ids (unknown ids are skipped and listed)."""
        from sora.serving_core import recommend_from_history

        with self._not_found("item_ids", "item"):
            return recommend_from_history(self._loaded(), item_ids, k)

    @bentoml.api
    def similar_items(self, item_id: str, k: K = 10) -> dict:
        """Items closest to ``item_id`` in Sora's fused item space."""
        from sora.serving_core import similar_items

        with self._not_found("item_id", "item"):
            return similar_items(self._loaded(), item_id, k)

    @bentoml.api
    def score(self, user_id: str, item_ids: Annotated[list[str], Field(min_length=1, max_length=10000)]) -> dict:
        """Scores of the given items for a user, in the order given."""
        from sora.serving_core import score

        loaded = self._loaded()
        known_user = str(user_id) in loaded.rec.user_index
        with self._not_found(*(("item_ids", "item") if known_user else ("user_id", "user"))):
            return score(loaded, user_id, item_ids)
