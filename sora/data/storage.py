"""Artifacts and data by URI: local paths and object stores (``s3://``, ``gs://``, … through fsspec).

Object-store clients are configured the standard way, by their own environment variables (for S3:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL`` for
an S3-compatible server); nothing here reads them itself.

Writes go through a temporary name and are renamed into place, so a failed stage never leaves a
half-written artifact where a good one was. A local rename is atomic; an object store has no rename,
so a directory is uploaded under a temporary prefix and moved only once every file is there, with a
marker object (:data:`INCOMPLETE`) at the target while it changes: a store that goes away mid-move
leaves the marker, and :func:`local_dir` refuses such a directory in one line until a re-run completes
it. A single object is one PUT, whole or absent.

A store that stops answering fails in bounded time: S3 clients get a connect and a read timeout
(``SORA_S3_CONNECT_TIMEOUT_S``, default 5; ``SORA_S3_READ_TIMEOUT_S``, default 60) and botocore's own
retries with backoff (``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` when set, else 2 attempts, ``standard``);
every operation issued here (GET, HEAD, LIST, whole-object PUT, COPY, DELETE) is idempotent, so a
retried one cannot do harm. s3fs's own retry loop is switched off, so the two do not multiply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: Short connect timeout and bounded retries for S3, so an unreachable store fails in seconds.
S3_CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}
#: Present at a directory's URI while :func:`put_dir` changes it; a directory holding it is incomplete.
INCOMPLETE = ".sora-incomplete"


def s3_client_config(env: dict[str, str] | None = None) -> dict:
    """botocore ``Config`` arguments: :data:`S3_CLIENT_CONFIG` with the timeouts and retries the environment sets."""
    env = os.environ if env is None else env
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in S3_CLIENT_CONFIG.items()}
    for key, var in (("connect_timeout", "SORA_S3_CONNECT_TIMEOUT_S"), ("read_timeout", "SORA_S3_READ_TIMEOUT_S")):
        if env.get(var):
            try:
                config[key] = float(env[var])
            except ValueError:
                raise StorageError(f"{var}={env[var]!r} is not a number of seconds") from None
    if env.get("AWS_MAX_ATTEMPTS") or env.get("AWS_RETRY_MODE"):
        del config["retries"]  # botocore reads its own standard variables when the config leaves retries out
    return config


class StorageError(Exception):
    """A URI cannot be read or written; the message names the URI and what was tried."""


def is_remote(uri: str | os.PathLike) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def local_path(uri: str | os.PathLike) -> Path:
    text = str(uri)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def _fs(uri: str):
    """(filesystem, path inside it) for a remote URI."""
    import fsspec

    scheme = uri.split("://", 1)[0]
    options = {}
    if scheme in ("s3", "s3a"):
        options = {"config_kwargs": s3_client_config(), "skip_instance_cache": True}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # s3fs predates botocore's AWS_ENDPOINT_URL support; pass the standard variable on
            options["client_kwargs"] = {"endpoint_url": endpoint}
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:
        raise StorageError(f"{uri}: no filesystem for {scheme}:// is installed ({exc})") from exc
    if scheme in ("s3", "s3a"):
        fs.retries = 1  # botocore retries (with backoff); s3fs's loop on top would multiply every timeout
        _without_expect_continue(fs)
    return fs, path


def _drop_expect(request, **_) -> None:
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _without_expect_continue(fs) -> None:
    """Send request bodies at once instead of waiting for ``100 Continue``.

    botocore asks for ``Expect: 100-continue`` on uploads, and aiohttp (under s3fs) waits for that
    answer with no timeout at all: a store that accepts the connection and then hangs would hang the
    upload forever. Without the header the body goes out and the read timeout bounds the wait.
    """
    from fsspec.asyn import sync

    try:
        client = sync(fs.loop, fs.set_session)
    except Exception:  # noqa: BLE001 - no client yet (bad credentials config…): the first call will say why
        return
    client.meta.events.register("before-send.s3", _drop_expect)


def _explain(uri: str, action: str, exc: BaseException) -> StorageError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = ""
    if uri.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS default"
        creds = "credentials set" if os.environ.get("AWS_ACCESS_KEY_ID") else "no AWS_ACCESS_KEY_ID"
        where = f" (endpoint {endpoint}, {creds})"
    return StorageError(f"cannot {action} {uri}{where}: {type(exc).__name__}: {detail}")


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, path = _fs(uri)
    try:
        return fs.exists(path)
    except Exception as exc:  # noqa: BLE001 - any client error becomes one line naming the URI
        raise _explain(uri, "reach", exc) from exc


def list_names(uri: str) -> list[str]:
    """The names directly under the directory or prefix ``uri``, sorted ([] when there is none)."""
    if not is_remote(uri):
        path = local_path(uri)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    fs, path = _fs(uri)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True))
    except FileNotFoundError:
        return []
    except Exception as exc:  # noqa: BLE001 - any client error becomes one line naming the URI
        raise _explain(uri, "list", exc) from exc


def remove(uri: str) -> None:
    """Remove the file, object, directory or prefix at ``uri``; nothing there is not an error."""
    if not is_remote(uri):
        path = local_path(uri)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs, path = _fs(uri)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001
        raise _explain(uri, "remove", exc) from exc


def check_readable(uri: str) -> None:
    """Fail with one line naming ``uri`` when it cannot be listed (missing, unreachable, no access)."""
    if not exists(uri):
        raise StorageError(f"{uri} does not exist")


def read_bytes(uri: str) -> bytes:
    if not is_remote(uri):
        try:
            return local_path(uri).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from exc
    fs, path = _fs(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist") from exc
    except Exception as exc:  # noqa: BLE001
        raise _explain(uri, "read", exc) from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` through a temporary name."""
    if not is_remote(uri):
        path = local_path(uri)
        if path.is_dir():
            raise StorageError(f"cannot write {uri}: it is a directory")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc.strerror or exc}") from exc
        return
    fs, path = _fs(uri)
    try:
        fs.pipe_file(path, data)  # a single PUT: the object appears whole or not at all
    except Exception as exc:  # noqa: BLE001
        raise _explain(uri, "write", exc) from exc


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


@contextlib.contextmanager
def local_dir(uri: str) -> Iterator[Path]:
    """A local directory with the contents of ``uri`` (the path itself when local, else a download)."""
    if not is_remote(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise StorageError(f"{uri} is not a directory" if path.exists() else f"{uri} does not exist")
        yield path
        return
    fs, path = _fs(uri)
    try:
        if not fs.isdir(path):
            raise StorageError(f"{uri} does not exist (no objects under that prefix)")
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _explain(uri, "reach", exc) from exc
    with tempfile.TemporaryDirectory(prefix="sora-dl-") as tmp:
        try:
            fs.get(path.rstrip("/") + "/", tmp + "/", recursive=True)
        except Exception as exc:  # noqa: BLE001
            raise _explain(uri, "download", exc) from exc
        if (Path(tmp) / INCOMPLETE).exists():
            raise StorageError(f"{uri} is incomplete: an upload to it was interrupted; re-run the step that writes it")
        yield Path(tmp)


@contextlib.contextmanager
def local_file(uri: str) -> Iterator[Path]:
    """A local file with the contents of ``uri``."""
    if not is_remote(uri):
        path = local_path(uri)
        if not path.is_file():
            raise StorageError(f"{uri} does not exist" if not path.exists() else f"{uri} is not a file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sora-dl-") as tmp:
        target = Path(tmp) / Path(uri.rstrip("/")).name
        target.write_bytes(read_bytes(uri))
        yield target


@contextlib.contextmanager
def output_dir(uri: str) -> Iterator[Path]:
    """A fresh local directory to write into; on success it replaces ``uri`` whole, on failure nothing changes."""
    if not is_remote(uri):
        final = local_path(uri)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc.strerror or exc}") from exc
        if final.exists() and not final.is_dir():
            raise StorageError(f"cannot write {uri}: a file is in the way")
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir()
        try:
            yield tmp
            old = None
            if final.exists():
                old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(final, old)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="sora-up-") as tmp:
        yield Path(tmp)
        put_dir(Path(tmp), uri)


def put_dir(local: Path, uri: str) -> None:
    """Upload the directory ``local`` to ``uri``: under a temporary prefix first, then moved into place.

    The move is marked: :data:`INCOMPLETE` is written at ``uri`` before its first object changes and
    removed after the last, so an interrupted move is never read as a whole directory. A re-run
    completes the target and removes staging prefixes that interrupted runs left beside it.
    """
    fs, path = _fs(uri)
    path = path.rstrip("/")
    staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    marker = f"{path}/{INCOMPLETE}"
    try:
        fs.put(str(local).rstrip("/") + "/", staging + "/", recursive=True)
        staged = [k for k in fs.find(staging) if not k.endswith("/" + INCOMPLETE)]
        fs.pipe_file(marker, b"an upload to this directory has not finished\n")
        fs.invalidate_cache(path)
        before = set(fs.find(path))
        moved = set()
        for key in staged:  # per object: a store's recursive move also tries to copy "directory" keys
            target = path + key[len(staging):]
            fs.copy(key, target)
            moved.add(target)
        stale = sorted(before - moved - {marker})
        if stale:
            fs.rm(stale)
        fs.rm_file(marker)
    except Exception as exc:  # noqa: BLE001
        if not _unreachable(exc):  # a store that does not answer would only add its timeouts here
            with contextlib.suppress(Exception):
                fs.rm(staging, recursive=True)
        raise _explain(uri, "upload to", exc) from exc
    fs.invalidate_cache()
    leftovers = [p for p in fs.glob(f"{path}.tmp-*") if p.rstrip("/") != staging] + [staging]
    with contextlib.suppress(Exception):  # the target is whole; staging left behind is only clutter
        fs.rm([p for p in leftovers if fs.exists(p)], recursive=True)


def _unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the store did not answer (connection refused, timed out, dropped)."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                         "TimeoutError", "HTTPClientError", "ConnectionClosedError", "FSTimeoutError"})
