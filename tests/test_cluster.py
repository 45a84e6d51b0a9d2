"""The cluster path, on loopback with real parts (slow tier).

- an S3-compatible server (moto's server mode) holding the data, the embedding cache, every step's
  artifacts and MLflow's artifact store;
- a real ``mlflow server`` started the way ``k8s/`` starts it (its rendered command, flags and literal
  env: basic-auth app, allowed hosts), with a SQL backend store and its artifact root in the bucket,
  reached under its Service name ``http://sora-mlflow:5000`` (so the Host header is the Service's);
- every pipeline step in its own process and its own empty working directory, given only URIs and the
  environment a pod gets from the ``sora-mlflow`` Secret, its artifacts downloaded and uploaded the way
  KFP's launcher does (``tests/cluster_launcher.py``), calling the real component functions;
- and at the end ``sora serve --model-uri models:/sora@champion`` in a fresh directory answers ``/recommend``.

Cluster DNS is the one thing simulated: ``sitecustomize`` in the steps' ``PYTHONPATH`` resolves the
Service name ``sora-mlflow:5000`` to the loopback port the server listens on.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port, make_dataset
from tests.k8s_render import mlflow_server_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "sora-cluster-test"
ADMIN = ("sora-admin", "cluster-test-Passw0rd")
SERVICE = "sora-mlflow:5000"

SITECUSTOMIZE = '''
import os, socket
_hosts = dict(e.split("=", 1) for e in os.environ.get("SORA_TEST_HOSTS", "").split(",") if e)
_real = socket.getaddrinfo
def getaddrinfo(host, port, *args, **kwargs):
    target = _hosts.get(f"{host}:{port}")
    if target:
        h, p = target.rsplit(":", 1)
        return _real(h, int(p), *args, **kwargs)
    return _real(host, port, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
'''


def _wait_http(url: str, timeout: float = 240.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """MLflow as k8s/ runs it (rendered command and env), on loopback, artifacts in the bucket."""
    base = tmp_path_factory.mktemp("cluster")
    shim = base / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port = free_port()
    argv, literal_env = mlflow_server_command("dev")
    assert argv[:2] == ["mlflow", "server"] and "--app-name" in argv
    argv = [str(Path(sys.executable).parent / "mlflow"), *argv[1:]]
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    assert SERVICE in literal_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    auth_ini = base / "basic_auth.ini"
    auth_ini.write_text(textwrap.dedent(f"""\
        [mlflow]
        default_permission = READ
        database_uri = sqlite:///{base / 'auth.db'}
        admin_username = {ADMIN[0]}
        admin_password = {ADMIN[1]}
        authorization_function = mlflow.server.auth:authenticate_request_basic_auth
        """))
    # what the Secrets give the container in k8s/ (a SQL backend store here is SQLite, not PostgreSQL)
    env = {"PATH": os.environ["PATH"], "HOME": str(base), **s3, **literal_env,
           "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{base / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlflow"}
    log = open(base / "mlflow.log", "w")
    proc = subprocess.Popen(argv, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health")
        pod_env = {"PATH": os.environ["PATH"], **s3, "MLFLOW_TRACKING_URI": f"http://{SERVICE}",
                   "MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1],
                   "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(shim), "SORA_TEST_HOSTS": f"{SERVICE}=127.0.0.1:{port}"}
        yield {"port": port, "pod_env": pod_env, "base": base, "log": base / "mlflow.log"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def _s3_fs():
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ.get("AWS_ENDPOINT_URL")})


class Pods:
    """Runs each step as a pod would: a fresh empty directory, only URIs and env in, artifacts out."""

    def __init__(self, cluster, root: str):
        self.cluster, self.root, self.n = cluster, root, 0

    def run(self, component: str, params: dict, inputs: dict[str, str], outputs: list[str]) -> dict:
        self.n += 1
        work = self.cluster["base"] / f"pod-{self.n}-{component}"
        work.mkdir()
        assert not any(work.iterdir())
        spec = {"component": component, "params": params, "inputs": inputs,
                "outputs": {name: f"{self.root}/{component}/{name}" for name in outputs},
                "result": f"{self.root}/{component}/result.json"}
        (work / "spec.json").write_text(json.dumps(spec))
        env = dict(self.cluster["pod_env"], HOME=str(work))
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "cluster_launcher.py"), "spec.json"], cwd=work,
                              env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{component} failed:\n{done.stderr[-3000:]}"
        from sora.data import storage

        with _env(self.cluster["pod_env"]):
            return json.loads(storage.read_text(spec["result"]))

    def uri(self, component: str, name: str) -> str:
        return f"{self.root}/{component}/{name}"


class _service_dns:
    """The test process's own view of the Service name (what ``sitecustomize`` does for the pods)."""

    def __init__(self, port: int):
        self.port = port

    def __enter__(self):
        import socket

        self.real = real = socket.getaddrinfo
        port = self.port

        def getaddrinfo(host, p, *args, **kwargs):
            if f"{host}:{p}" == SERVICE:
                return real("127.0.0.1", port, *args, **kwargs)
            return real(host, p, *args, **kwargs)

        socket.getaddrinfo = getaddrinfo

    def __exit__(self, *exc):
        import socket

        socket.getaddrinfo = self.real


class _env:
    def __init__(self, values):
        self.values, self.saved = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            if k.startswith(("AWS_", "MLFLOW_S3")):
                self.saved[k] = os.environ.get(k)
                os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_pipeline_steps_as_pods_end_with_a_served_champion_whose_artifacts_are_in_the_bucket(cluster, tmp_path):
    from sora.data import storage

    data_uri = f"s3://{BUCKET}/datasets/tiny"
    local = tmp_path / "data"
    make_dataset(n_users=60, n_items=120).save(local, fmt="csv")
    with _env(cluster["pod_env"]):
        storage.put_dir(local, data_uri)
    pods = Pods(cluster, f"s3://{BUCKET}/pipeline-root/run-1")
    overrides = "train.max_epochs=3;model.dim=16;train.batch_size=128;model.history_len=4"

    # tracking_uri left at the UI default (""): the step falls back to MLFLOW_TRACKING_URI from the Secret
    uri = pods.run("connect", {"tracking_uri": ""}, {}, [])["return"]
    assert uri == f"http://{SERVICE}"
    pods.run("configure", {"config_overrides": overrides}, {}, ["config"])
    config = pods.uri("configure", "config")
    passed, message, fingerprint = pods.run("validate", {"data_uri": data_uri}, {"config": config},
                                            ["report", "summary"])["return"]
    assert passed, message
    drift = pods.run("drift", {"data_uri": data_uri, "reference_uri": "", "tracking_uri": uri, "model_name": "sora"},
                     {"config": config}, ["report", "metrics"])["return"]
    assert drift == "skipped"  # no champion yet
    meta = pods.run("prepare", {"data_uri": data_uri, "data_fingerprint": fingerprint}, {"config": config},
                    ["split"])["metadata"]["split"]
    assert meta["fingerprint"] == fingerprint and meta["users"] == 60
    split = pods.uri("prepare", "split")
    cache = f"s3://{BUCKET}/embedding-cache"
    emb = pods.run("embed", {"cache_uri": cache}, {"config": config, "split": split}, ["embeddings"])
    assert emb["metadata"]["embeddings"]["encoded"] > 0
    embeddings = pods.uri("embed", "embeddings")
    pods.run("train", {}, {"config": config, "split": split, "embeddings": embeddings}, ["model", "curves"])
    model = pods.uri("train", "model")
    metrics = pods.run("evaluate", {"run_baselines": False}, {"model": model, "split": split, "embeddings": embeddings},
                       ["metrics", "report"])["metadata"]["metrics"]
    assert metrics["test_ndcg_at_10"] > 0  # the MLflow naming scheme, in the Kubeflow UI too
    report = pods.uri("evaluate", "report")
    reg_inputs = {"model": model, "split": split, "report": report, "validation_report": pods.uri("validate", "report"),
                  "curves": pods.uri("train", "curves")}
    version = pods.run("register", {"tracking_uri": uri, "model_name": "sora"}, reg_inputs, [])["return"]
    # a second register of the same (cached) model reuses the version instead of adding one
    assert pods.run("register", {"tracking_uri": uri, "model_name": "sora"}, reg_inputs, [])["return"] == version
    promote = pods.run("compare", {"tracking_uri": uri, "model_name": "sora", "version": version,
                                   "promotion_margin": 0.0}, {"model": model, "split": split, "report": report},
                       ["card"])["return"]
    assert promote is True
    pods.run("promote", {"tracking_uri": uri, "model_name": "sora", "version": version}, {}, [])
    # a second embed in another pod encodes nothing: the cache lives in the bucket
    again = Pods(cluster, f"s3://{BUCKET}/pipeline-root/run-2").run(
        "embed", {"cache_uri": cache}, {"config": config, "split": split}, ["embeddings"])
    assert again["metadata"]["embeddings"]["encoded"] == 0

    with _env(cluster["pod_env"]):
        fs = _s3_fs()
        in_bucket = fs.find(f"{BUCKET}/mlflow")
    assert any(p.endswith("model.safetensors") for p in in_bucket), "the champion's artifacts are in the bucket"
    assert not any(".tmp-" in p for p in fs.find(f"{BUCKET}/pipeline-root")), "no staging prefixes left behind"

    # the run records the dataset as an input (source URI and digest)
    import mlflow

    with _env(cluster["pod_env"]), _service_dns(cluster["port"]):
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN
        try:
            client = mlflow.MlflowClient(f"http://{SERVICE}", registry_uri=f"http://{SERVICE}")
            mv = client.get_model_version("sora", version)
            run = client.get_run(mv.run_id)
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME"), os.environ.pop("MLFLOW_TRACKING_PASSWORD")
    assert run.data.tags["sora.data_source"] == data_uri
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [fingerprint[:36]]

    # serving, in a fresh directory, from the registry alias only
    serve_dir = tmp_path / "serve"
    serve_dir.mkdir()
    port = free_port()
    env = dict(cluster["pod_env"], HOME=str(serve_dir), BENTOML_HOME=str(serve_dir / "bentoml"))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "sora"), "serve", "--model-uri", "models:/sora@champion",
                             "--port", str(port)], cwd=serve_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", timeout=300)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/recommend", data=json.dumps(
            {"user_id": "u3", "k": 5}).encode(), headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.loads(r.read())
        assert len(body["items"]) == 5 and body["model"]["version"] == version
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_bad_uris_fail_in_one_line_naming_the_uri(cluster, tmp_path):
    env = dict(cluster["pod_env"], HOME=str(tmp_path))
    sora = str(Path(sys.executable).parent / "sora")

    def run(*argv):
        done = subprocess.run([sora, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stderr.strip()

    code, err = run("data", "validate", "--data", "s3://no-such-bucket-sora/ml")
    assert code == 1 and "s3://no-such-bucket-sora/ml" in err and len(err.splitlines()) == 1, err
    code, err = run("data", "validate", "--data", f"s3://{BUCKET}/datasets/missing")
    assert code == 1 and f"s3://{BUCKET}/datasets/missing" in err and "Traceback" not in err, err
    # a registry that does not answer its API is reported before any work
    code, err = run("registry", "show", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and err.startswith("sora: error: cannot reach the registry at"), err
    # a wrong password is not "no versions"
    bad = dict(env, MLFLOW_TRACKING_PASSWORD="wrong-password-123")
    done = subprocess.run([sora, "registry", "show"], cwd=tmp_path, env=bad, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "HTTP 401" in done.stderr, done.stderr
