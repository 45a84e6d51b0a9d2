"""Training checkpoints (``train.checkpoint_every``): a preempted train step resumes where it stopped.

A checkpoint is one file holding everything the epoch loop needs to go on as if it had never stopped:
the weights, the optimiser's state, the random generators (the loop's own, torch's, CUDA's, numpy's),
the early-stopping state (best epoch, its metric and weights) and the history so far. It is written
whole under a new name (local: a temporary name renamed into place; an object store: one PUT), then
the older ones are removed, so the newest readable file is always a complete checkpoint. A file whose
fingerprint (resolved config, data, trial) differs from the run's is never resumed from.

Where: ``<model URI>.checkpoint/`` beside the model's output (local or object store), one file per
tuning trial (``trial-N-epoch-E.pt``), removed once the model is written. Under torchrun only rank 0
writes; every rank reads the same file on restart, so a TrainJob whose pods all restart resumes
together.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from sora.data import storage

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<tag>[\w.-]+)-epoch-(?P<epoch>\d+)\.pt$")


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (the resolved config, the data's fingerprint, the trial)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Checkpointer:
    """Writes and finds one training run's checkpoints under ``uri`` (a directory path or URI)."""

    uri: str
    fingerprint: str
    every: int = 1
    tag: str = "trial-1"
    #: rank 0 writes; other ranks only read
    writer: bool = True

    def for_trial(self, n: int, fingerprint_: str) -> Checkpointer:
        return Checkpointer(self.uri, fingerprint_, self.every, f"trial-{n}", self.writer)

    def _names(self) -> list[tuple[int, str]]:
        """(epoch, file name) of this trial's checkpoints, newest first."""
        out = []
        for name in storage.list_names(self.uri):
            m = _NAME.match(name)
            if m and m["tag"] == self.tag:
                out.append((int(m["epoch"]), name))
        return sorted(out, reverse=True)

    def due(self, epoch: int, last: bool) -> bool:
        return self.writer and self.every > 0 and (epoch % self.every == 0 or last)

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Write ``state`` as this trial's checkpoint of ``epoch``; then drop the older ones."""
        t0 = time.perf_counter()
        buf = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "epoch": epoch, **state}, buf)
        name = f"{self.tag}-epoch-{epoch:05d}.pt"
        storage.write_bytes(_join(self.uri, name), buf.getvalue())
        for _, old in self._names():
            if old != name:
                storage.remove(_join(self.uri, old))
        log.debug("checkpoint %s (%.1f MB, %.2fs)", name, buf.tell() / 2**20, time.perf_counter() - t0)

    def latest(self) -> dict[str, Any] | None:
        """The newest complete checkpoint of this trial with the run's fingerprint, or None."""
        for _, name in self._names():
            uri = _join(self.uri, name)
            try:
                state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001 - a damaged file is skipped for an older one, said once
                log.warning("checkpoint %s unreadable (%s: %s); trying an older one", uri, type(exc).__name__, exc)
                continue
            if state.get("fingerprint") != self.fingerprint:
                log.warning("checkpoint %s is from another config or data; starting afresh", uri)
                return None
            return state
        return None

    def clear(self) -> None:
        """Remove every checkpoint of the run (the model is written)."""
        if not self.writer:
            return
        storage.remove(self.uri)


def checkpoint_uri(model_uri: str) -> str:
    """Where a model's checkpoints live: beside its output, ``<model URI>.checkpoint``."""
    return str(model_uri).rstrip("/") + ".checkpoint"


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"
