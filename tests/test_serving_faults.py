"""Faults against a real `sora serve` on loopback (slow tier): malformed requests, kill -9, SIGTERM under load.

Every loop here is bounded (request counts, deadlines) and every server is stopped by the test.
"""

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from sora.cli.serve import port_problem
from sora.config import SoraConfig
from sora.model.text import HashEncoder
from sora.training.train import prepare, train_model
from tests.conftest import free_port, make_dataset

pytestmark = pytest.mark.slow

LIMITS = SoraConfig().serve


class Server:
    """`python -m sora.cli serve …` on a free loopback port, its output in a log file."""

    def __init__(self, args, log: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.port = port or free_port()
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "sora.cli", "serve", "--port", str(self.port), *args],
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def request(self, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def wait(self, path="/readyz", timeout=120) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if self.request("GET", path, timeout=5)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.5)
        return False

    def tree(self) -> list[psutil.Process]:
        return [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _all_gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


def _port_freed(port: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_problem("127.0.0.1", port) is None:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    ds = make_dataset(n_users=40, n_items=60)
    cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=16", "train.max_epochs=2",
                                       "train.batch_size=128", "model.history_len=4"])
    split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
    out = tmp_path_factory.mktemp("faults") / "model"
    train_model(split, emb, ds.items, cfg, progress=False).recommender.save(out)
    return out


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    log = tmp_path_factory.mktemp("faults-log") / "serve.log"
    server = Server(["--model", str(model)], log)
    try:
        assert server.wait(), log.read_text()[-3000:]
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ malformed requests

def _malformed(rng: random.Random) -> list[tuple[str, bytes, dict]]:
    """(path, body, headers): bad JSON, wrong types, missing / unknown fields, long ids and lists, bad media types."""
    json_h = {"content-type": "application/json"}
    fields = {"/recommend": ["user_id", "k", "exclude_seen", "fallback"], "/recommend_from_history": ["item_ids", "k"],
              "/similar_items": ["item_id", "k"], "/score": ["user_id", "item_ids"]}
    good = {"/recommend": {"user_id": "u1", "k": 5}, "/recommend_from_history": {"item_ids": ["i1", "i2"]},
            "/similar_items": {"item_id": "i1"}, "/score": {"user_id": "u1", "item_ids": ["i1"]}}
    wrong_values = [None, True, -1, 0, 10**30, 2.5, float("nan"), "", "x" * (LIMITS.max_id_length + 1), [], {},
                    ["i1"] * (LIMITS.max_list_length + 1), [None], [["i1"]], [{"a": 1}], "many", {"$gt": ""}]
    raw_bodies = [b"", b"{", b'{"user_id": "u1",', b"null", b"[]", b"42", b'"u1"', b"\xff\xfe\x00", b"{'a': 1}",
                  b"[" * 5000 + b"]" * 5000, b'{"user_id": "\\ud800"}', b"\x00" * 64, b"NaN", b"{}" * 3]
    cases = []
    for path in fields:
        for body in raw_bodies:
            cases.append((path, body, json_h))
        for media in ("multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded", "text/plain",
                      "application/xml", "image/png"):
            cases.append((path, json.dumps(good[path]).encode(), {"content-type": media}))
        for field in fields[path]:
            for value in wrong_values:
                body = {**good[path], field: value}
                if value is None and field not in ("user_id", "item_id", "item_ids"):
                    continue  # null means "default" for optional fields: a valid request
                if value is True and field in ("exclude_seen", "fallback"):
                    continue
                cases.append((path, json.dumps(body).encode(), json_h))
            missing = {k: v for k, v in good[path].items() if k != field}
            if field in ("user_id", "item_id", "item_ids"):
                cases.append((path, json.dumps(missing).encode(), json_h))
        cases.append((path, json.dumps({**good[path], "unexpected": 1}).encode(), json_h))
        # unknown ids, some of them long or odd
        for _ in range(4):
            odd = "".join(rng.choice("abc/ \\\"'\n\t\u00e9\u4e2d<>{}") for _ in range(rng.randint(1, 200)))
            body = {k: ([odd] if k == "item_ids" else odd if k in ("user_id", "item_id") else v)
                    for k, v in good[path].items()}
            cases.append((path, json.dumps(body).encode(), json_h))
    return cases


def test_malformed_requests_get_4xx_without_tracebacks_or_paths(served, model):
    cases = _malformed(random.Random(0))
    assert len(cases) >= 200
    statuses = Counter()
    for path, body, headers in cases:
        status, payload = served.request("POST", path, body, headers)
        statuses[status] += 1
        text = payload.decode("utf-8", "replace")
        assert 400 <= status < 500, (path, body[:200], status, text[:300])
        assert set(json.loads(text)) == {"error"}, text[:300]
        assert len(payload) < 600, (path, body[:100], len(payload))
        assert "Traceback" not in text and str(model) not in text and "/tmp" not in text and "site-packages" not in text
    # body size cap: declared and real oversized bodies
    for size in (LIMITS.max_body_bytes + 1, 20 * 2**20):
        conn = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        conn.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{" % size)
        assert conn.recv(200).startswith(b"HTTP/1.1 413"), size
        conn.close()
    try:
        status, _ = served.request("POST", "/score", b'{"user_id": "u1", "item_ids": ["' + b"i" * 1_100_000 + b'"]}',
                                   {"content-type": "application/json"})
        assert status == 413
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may answer 413 and close before the client has sent everything
    statuses[413] += 3
    assert {400, 404, 413, 415} <= set(statuses), statuses
    # still healthy, and nothing above was logged with a traceback or as an error
    status, payload = served.request("POST", "/recommend", b'{"user_id": "u1", "k": 3}',
                                     {"content-type": "application/json"})
    assert status == 200 and json.loads(payload)["model"]["version"].startswith("sha256:")
    log = served.log.read_text(errors="replace")
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]
    assert log.count("[WARNING]") >= len(cases)


def test_responses_never_show_a_path(served, model):
    for path, body in (("/recommend", {"user_id": "u2", "k": 2}), ("/recommend_from_history", {"item_ids": ["i1"]}),
                       ("/similar_items", {"item_id": "i3"}), ("/score", {"user_id": "u2", "item_ids": ["i1"]})):
        status, payload = served.request("POST", path, json.dumps(body).encode(), {"content-type": "application/json"})
        assert status == 200 and str(model) not in payload.decode() and "local:" not in payload.decode()


# ------------------------------------------------------------------ process faults

def test_busy_port_is_one_line_and_exit_2(model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "sora.cli", "serve", "--model", str(model), "--port", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "already in use" in out.stderr and "Traceback" not in out.stderr


def test_kill_9_leaves_nothing_behind_and_restart_works(model, tmp_path):
    server = Server(["--model", str(model)], tmp_path / "serve.log")
    try:
        assert server.wait()
        procs = server.tree()
        assert len(procs) >= 3  # sora serve, the bentoml arbiter, a worker
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        assert not _all_gone(procs[1:]), "processes outlived `sora serve`"
        assert _port_freed(server.port)
        again = Server(["--model", str(model)], tmp_path / "serve2.log", port=server.port)
        try:
            assert again.wait(), (tmp_path / "serve2.log").read_text()[-3000:]
            assert again.request("POST", "/recommend", b'{"user_id": "u1"}', {"content-type": "application/json"}
                                 )[0] == 200
            # the worker dies with its arbiter too (kill -9 one level down)
            arbiter = psutil.Process(again.proc.pid).children()[0]
            workers = arbiter.children(recursive=True)
            arbiter.kill()
            assert not _all_gone(workers), "a worker outlived its arbiter"
            assert again.proc.wait(timeout=30) == 1  # sora serve reports the crash
            assert _port_freed(again.port)
        finally:
            again.stop()
    finally:
        server.stop()
    assert "Address already in use" not in (tmp_path / "serve2.log").read_text()


def test_sigterm_drains_requests_in_flight(model, tmp_path):
    server = Server(["--model", str(model)], tmp_path / "serve.log")
    try:
        assert server.wait()
        procs = server.tree()
        body = json.dumps({"user_id": "u1", "k": 5}).encode()
        head = (b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        # requests certainly in flight: accepted, half their body sent when SIGTERM arrives
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
        for s in slow:
            s.sendall(head + body[:5])
        results, stop = [], threading.Event()

        def client():
            while not stop.is_set():
                try:
                    status, payload = server.request("POST", "/recommend", body, {"content-type": "application/json"})
                    results.append(status if status != 200 or json.loads(payload)["items"] else "empty")
                except ConnectionRefusedError:
                    results.append("refused")
                    time.sleep(0.05)
                except OSError as exc:  # reset, or closed mid-response
                    results.append(type(exc).__name__)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(2)
        started = time.time()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        for s in slow:
            s.sendall(body[5:])
        answers = [s.recv(64).split(b"\r\n")[0] for s in slow]
        for s in slow:
            s.close()
        code = server.proc.wait(timeout=LIMITS.grace_period_s + 30)
        took = time.time() - started
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.stop()
    counts = Counter(map(str, results))
    assert answers == [b"HTTP/1.1 200 OK"] * 3, answers
    assert code == 0 and took < LIMITS.grace_period_s + 10
    assert counts["200"] > 0 and set(counts) <= {"200", "refused", "ConnectionResetError"}, counts
    # A connection still queued in the kernel at the instant of SIGTERM (not yet accepted: the async
    # endpoints answer on the event loop, so between two answers a new connection waits in the queue)
    # can be reset, at most one per client; one being answered never is (the slow ones above).
    assert counts["ConnectionResetError"] <= len(threads), counts
    assert not _all_gone(procs[1:]) and _port_freed(server.port)


def test_not_ready_is_503_at_once_with_the_reason(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    server = Server(["--model-uri", "models:/sora@champion", "--tracking-uri", uri, "--poll-interval", "1"],
                    tmp_path / "serve.log")
    try:
        assert server.wait("/livez")
        start = time.time()
        status, payload = server.request("POST", "/recommend", b'{"user_id": "u1"}',
                                         {"content-type": "application/json"})
        assert time.time() - start < 5 and status == 503
        message = json.loads(payload)["error"]
        assert "no model loaded yet" in message and str(tmp_path) not in message
    finally:
        server.stop()
