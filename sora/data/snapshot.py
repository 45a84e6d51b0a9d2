"""Immutable snapshots of the training data, so the drift gate compares new data with what the champion
was really trained on (DESIGN.md §6).

A data URI may be rewritten in place (a nightly export to the same prefix). Before preparing the split,
the pipeline copies the data to ``<snapshot root>/<digest>/``, where the digest is the data's content
fingerprint (:meth:`sora.data.contract.Dataset.fingerprint`, computed by ``validate``), and prepares the split
from that copy. The copy's URI becomes the prepared split's source, so the registered version records
it (its run's ``sora.data_source`` tag, see :func:`sora.registry.alias_data_source`) and the next run's
drift step reads the snapshot, never the rewritten URI. A snapshot is written once (:data:`MARKER`
last) and never rewritten: the same content always lands at the same prefix.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping

from sora.data import storage

log = logging.getLogger(__name__)

#: Written last into a complete snapshot; its presence means "immutable, do not write again".
MARKER = "SNAPSHOT.json"
ROOT_ENV = "SORA_SNAPSHOT_ROOT"


class SnapshotError(Exception):
    """A snapshot cannot be taken or placed; the message is one line naming the setting."""


def snapshot_uri(root: str, digest: str) -> str:
    if not digest or "/" in digest:
        raise SnapshotError(f"snapshot digest {digest!r} is not a content fingerprint")
    return f"{root.rstrip('/')}/{digest}"


def resolve_root(param: str | None, env: Mapping[str, str]) -> str:
    """The snapshot root: the ``snapshot_root`` parameter > ``SORA_SNAPSHOT_ROOT`` (from the Secret) >
    none (no snapshot; local runs only). In a Kubernetes pod the root must be an object-store URI: a
    path would be the pod's own disk, gone before the next run reads it."""
    if (param or "").strip():
        root, source = param.strip(), "the snapshot_root parameter"
    elif (env.get(ROOT_ENV) or "").strip():
        root, source = env[ROOT_ENV].strip(), f"{ROOT_ENV} (the environment)"
    else:
        root, source = "", ""
    if env.get("KUBERNETES_SERVICE_HOST"):
        if not root:
            raise SnapshotError(f"no snapshot root: set {ROOT_ENV} in the pipeline's Secret (or the snapshot_root "
                                "parameter) to an object-store prefix, e.g. s3://bucket/sora/snapshots")
        if not storage.is_remote(root):
            raise SnapshotError(f"snapshot root {root!r} from {source} is a path inside the pod and would vanish "
                                "with it: use an object-store prefix, e.g. s3://bucket/sora/snapshots")
    return root


def take_snapshot(data_uri: str, root: str, digest: str) -> str:
    """Copy the dataset at ``data_uri`` to ``<root>/<digest>/`` unless that snapshot exists; return its URI.

    ``digest`` is the fingerprint ``validate`` computed; the copy is checked against it, so data that
    changed between validation and this copy is refused rather than trained on unvalidated.
    """
    from sora.data.contract import load_dataset

    target = snapshot_uri(root, digest)
    if storage.exists(f"{target}/{MARKER}"):
        log.info("snapshot %s exists (immutable): not copied again", target)
        return target
    with storage.local_dir(data_uri) as src, storage.output_dir(target) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        found = load_dataset(tmp).fingerprint()
        if found != digest:
            raise SnapshotError(f"the data at {data_uri} changed after validation (fingerprint {found}, validated "
                                f"{digest}): re-run the pipeline")
        (tmp / MARKER).write_text(json.dumps({"source": data_uri, "digest": digest, "created_at": time.time()}))
    log.info("snapshot of %s at %s", data_uri, target)
    return target
