"""An object store that goes away mid-write (moto's S3 server, stopped and restarted in-process)."""

import threading

import pytest

from sora.data import storage
from tests.faults import MotoStore


@pytest.fixture
def store(monkeypatch):
    s = MotoStore()
    for k, v in s.env.items():
        monkeypatch.setenv(k, v)
    yield s
    s.stop()


def _model_dir(root, tag: str, n: int = 4):
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"part-{i}.bin").write_bytes(f"{tag}-{i}".encode() * 100)
    (root / "config.json").write_text(f'{{"tag": "{tag}"}}')
    return root


def _read_dir(uri):
    with storage.local_dir(uri) as d:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_a_store_gone_mid_move_leaves_a_marked_directory_and_a_rerun_completes_it(store, tmp_path, monkeypatch):
    import s3fs

    uri = f"s3://{store.bucket}/runs/model"
    old, new = _model_dir(tmp_path / "old", "old"), _model_dir(tmp_path / "new", "new", n=3)
    storage.put_dir(old, uri)
    assert _read_dir(uri)["config.json"] == b'{"tag": "old"}'

    real_copy, copies = s3fs.S3FileSystem._cp_file, []

    async def copy_then_store_dies(self, path1, path2, **kwargs):
        copies.append(path2)
        if len(copies) == 2:  # one object already moved into place, the rest not
            store.stop()
        return await real_copy(self, path1, path2, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_cp_file", copy_then_store_dies)
    with pytest.raises(storage.StorageError) as info:
        storage.put_dir(new, uri)
    message = str(info.value)
    assert message.startswith(f"cannot upload to {uri} (endpoint {store.endpoint}") and "\n" not in message
    monkeypatch.setattr(s3fs.S3FileSystem, "_cp_file", real_copy)

    store.start()
    assert f"runs/model/{storage.INCOMPLETE}" in store.keys("runs/model/")
    with pytest.raises(storage.StorageError, match="is incomplete: an upload to it was interrupted"):
        _read_dir(uri)  # never read as a whole model
    storage.put_dir(new, uri)  # the re-run
    got = _read_dir(uri)
    assert got == {p.name: p.read_bytes() for p in sorted(new.iterdir())}  # the old part-3 is gone too
    assert not [k for k in store.keys("runs/") if ".tmp-" in k or k.endswith(storage.INCOMPLETE)]


def test_a_write_to_a_stopped_store_fails_fast_in_one_line_and_writes_nothing(store, monkeypatch):
    uri = f"s3://{store.bucket}/emb/embeddings.parquet"
    monkeypatch.setenv("SORA_S3_CONNECT_TIMEOUT_S", "2")
    store.stop()
    with pytest.raises(storage.StorageError) as info:
        storage.write_bytes(uri, b"x" * 1000)
    message = str(info.value)
    assert message.startswith(f"cannot write {uri} (endpoint {store.endpoint}") and "\n" not in message
    store.start()
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"y" * 1000)
    assert storage.read_bytes(uri) == b"y" * 1000
    fs, _ = storage._fs(uri)  # bounded: botocore's 2 attempts with backoff, not s3fs's 5 on top of them
    assert fs.retries == 1 and fs.config_kwargs["connect_timeout"] == 2 and "retries" in fs.config_kwargs


def test_s3_timeouts_and_retries_come_from_the_environment():
    assert storage.s3_client_config({}) == storage.S3_CLIENT_CONFIG
    cfg = storage.s3_client_config({"SORA_S3_CONNECT_TIMEOUT_S": "1.5", "SORA_S3_READ_TIMEOUT_S": "7"})
    assert cfg["connect_timeout"] == 1.5 and cfg["read_timeout"] == 7 and cfg["retries"]["max_attempts"] == 2
    assert "retries" not in storage.s3_client_config({"AWS_MAX_ATTEMPTS": "5"})  # botocore's own variable wins
    with pytest.raises(storage.StorageError, match="SORA_S3_READ_TIMEOUT_S"):
        storage.s3_client_config({"SORA_S3_READ_TIMEOUT_S": "soon"})


def test_a_store_that_hangs_fails_at_its_read_timeout_naming_the_uri(monkeypatch):
    from tests.faults import CREDENTIALS, BlackHole

    hole = BlackHole()
    try:
        for k, v in {**CREDENTIALS, "AWS_ENDPOINT_URL": hole.endpoint, "AWS_MAX_ATTEMPTS": "1",
                     "SORA_S3_CONNECT_TIMEOUT_S": "1", "SORA_S3_READ_TIMEOUT_S": "1"}.items():
            monkeypatch.setenv(k, v)
        uri = "s3://sora-faults/steps/out.parquet"
        # an upload asks for "100 Continue" and aiohttp waits for it without a timeout: without the fix this
        # never returns, so it runs beside the test, which gives up on it (a hang guard, not a measurement)
        outcome: list[BaseException] = []
        worker = threading.Thread(target=lambda: _capture(outcome, storage.write_bytes, uri, b"z" * 100),
                                  daemon=True)
        worker.start()
        worker.join(timeout=300)
        assert outcome, "the upload to a hung store never returned"
    finally:
        hole.close()
    assert isinstance(outcome[0], storage.StorageError), outcome
    message = str(outcome[0])
    assert message.startswith(f"cannot write {uri} (endpoint {hole.endpoint}") and "\n" not in message
    assert "ReadTimeoutError" in message  # ended by the configured read timeout, not by a refusal


def _capture(outcome: list, fn, *args) -> None:
    try:
        fn(*args)
        outcome.append(AssertionError("no error"))
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        outcome.append(exc)
