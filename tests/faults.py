"""Servers that the fault tests stop and restart: an S3-compatible store (moto) and ``mlflow server``.

Both keep their state across a restart, as the real ones do: moto's backends live in this process
(:class:`MotoStore` restarts its HTTP server on the same port), MLflow's in its SQL backend file
(:class:`MlflowServer` starts a new process on the same port and database). ``stop`` closes the
listening socket, so clients see refused connections, the way a store that went away looks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class MotoStore:
    """moto's S3 server on a loopback port; ``stop()`` refuses connections, ``start()`` answers again, data kept."""

    def __init__(self, bucket: str = "sora-faults"):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.server = None
        self.start()
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                          if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket=bucket)

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def start(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per S3 request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server._server.server_close()  # moto's stop() leaves the socket listening: clients would hang
            self.server = None

    def keys(self, prefix: str = "") -> list[str]:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def wait_http(url: str, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.3)
    return False


class MlflowServer:
    """``mlflow server`` with a SQLite backend and its artifacts proxied into ``artifacts`` (a URI)."""

    def __init__(self, root: Path, artifacts: str, env: dict[str, str] | None = None):
        self.root, self.artifacts, self.extra_env = root, artifacts, env or {}
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = root / "mlflow.db"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.root / "mlflow.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination", self.artifacts,
             "--workers", "1"], cwd=self.root, env={**os.environ, **self.extra_env}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_http(f"{self.uri}/health", timeout=180):
            self.stop()
            raise RuntimeError(f"mlflow server did not start:\n{(self.root / 'mlflow.log').read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGKILL the server's process group: it stops answering at once, as a lost pod does."""
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


class BlackHole:
    """A loopback port that accepts connections and never answers: a server that hangs (stopped, not gone)."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.held: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.held.append(conn)  # never read, never answered

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
