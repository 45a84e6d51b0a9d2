"""What each pipeline step asks of a Kubernetes cluster: one table of requests and limits, and the
steps that retry because they talk to the network (DESIGN.md §6).

The pipeline (``sora_pipelines``) applies :data:`STEP_RESOURCES` to every task it builds (a test checks
the compiled pipeline has no step without an entry and no entry without a step), so sizing a cluster
means editing this one table. Sizes are for MovieLens-scale data; the train step's limits leave room
for the larger catalogues ``benchmarks/`` measures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class StepResources:
    """Kubernetes requests and limits of one step's container (Kubernetes quantity strings)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


#: Step (component) name → its container's requests and limits.
STEP_RESOURCES: dict[str, StepResources] = {
    "connect": StepResources("100m", "500m", "256Mi", "512Mi"),
    "configure": StepResources("100m", "500m", "256Mi", "512Mi"),
    "validate": StepResources("1", "2", "2Gi", "4Gi"),
    "drift": StepResources("1", "2", "2Gi", "4Gi"),
    "prepare": StepResources("1", "2", "2Gi", "8Gi"),
    "embed": StepResources("2", "4", "4Gi", "8Gi"),
    "train": StepResources("2", "8", "8Gi", "32Gi"),
    "train-distributed": StepResources("250m", "1", "512Mi", "1Gi"),  # launches and follows a TrainJob
    "evaluate": StepResources("2", "4", "4Gi", "16Gi"),  # the baselines: EASE inverts an items × items matrix
    "register": StepResources("1", "2", "2Gi", "4Gi"),
    "compare": StepResources("1", "2", "2Gi", "8Gi"),
    "promote": StepResources("100m", "500m", "512Mi", "1Gi"),
    "batch-score": StepResources("2", "4", "4Gi", "8Gi"),
    "fail": StepResources("100m", "250m", "128Mi", "256Mi"),
}

#: Steps that read or write the object store or MLflow themselves, so a dropped connection or an
#: evicted pod is worth another try. ``connect`` retries inside (its failure is a misconfiguration,
#: reported at once). ``train`` retries too: a preempted GPU node's retry resumes from the step's newest
#: checkpoint (``train.checkpoint_every``, beside the model's artifact URI), losing at most one epoch.
NETWORK_STEPS = ("validate", "drift", "prepare", "embed", "train", "register", "compare", "promote", "batch-score")


@dataclass(frozen=True)
class RetryPolicy:
    """KFP task retries: ``num_retries`` more attempts, ``backoff`` then ×``factor`` each time."""

    num_retries: int = 3
    backoff: str = "30s"
    factor: float = 2.0
    max_backoff: str = "5m"


RETRY = RetryPolicy()


def preflight(tracking_uri: str | None, snapshot_root: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """A pipeline run's first check, before any data is read: the tracking URI (an answering MLflow server
    in a pod, never a pod-local file) and the snapshot root (an object-store prefix in a pod). Returns both;
    raises with one line naming the setting (:func:`sora.registry.connect`, :func:`sora.data.snapshot.resolve_root`)."""
    from sora.data.snapshot import resolve_root
    from sora.registry import connect

    root = resolve_root(snapshot_root, env)  # no network: refuse a bad root before waiting on the registry
    return connect(tracking_uri, dict(env)), root
