"""The Sora training pipeline (installed as ``sora_pipelines``) and how to compile, run, submit, schedule it.

connect → configure → validate → drift → (passed) prepare → embed → train → evaluate → register → compare → (promote) promote → (batch_top_k > 0) batch_score
                     → (failed) fail

Steps share nothing but typed artifacts, URIs and environment variables (``data_uri`` may be an
object-store URI; the Secret mapping gives every step ``MLFLOW_TRACKING_URI`` and the store's
credentials). The train step gets GPU scheduling settings only when ``gpu_count > 0``; with
``distributed=True`` it is a Kubeflow Trainer TrainJob instead, behind the same gates.

On a cluster a misconfiguration ends the run at its first step (``connect``), before any data is read:
a tracking URI that is not an MLflow server, a snapshot root inside the pod; a Secret key a step needs
is required, so a missing one stops the pod from starting. Every step gets requests and limits from
one table (:data:`sora.cluster.STEP_RESOURCES`) and the steps that talk to the network retry
(:data:`sora.cluster.NETWORK_STEPS`). Runs go under the ``sora-pipeline`` service account (k8s/base/rbac.yaml),
set on the run when it is submitted or scheduled: kfp-kubernetes 2.17 has no per-task service account.

Cluster settings that are not pipeline parameters (GPU node selector, tolerations, the Secret with
MLflow / S3 credentials, the service account) are fixed when the pipeline is built, see :class:`ClusterSettings`.
"""

# No `from __future__ import annotations` here: kfp reads the real annotation objects.
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import sora_components as c
from kfp import dsl
from sora_pipelines import trainjob

from sora.cluster import NETWORK_STEPS, RETRY, STEP_RESOURCES

log = logging.getLogger(__name__)

PIPELINE_NAME = "sora-training"


@dataclass
class ClusterSettings:
    """Kubernetes settings applied with kfp-kubernetes (ignored by the local runner)."""

    #: The Secret whose keys become environment variables of every step: the MLflow location and
    #: credentials and the object store's (each client configured by its standard variables).
    mlflow_secret: str = "sora-mlflow"
    #: Keys every step needs: a Secret without one of them stops the pod from starting (the event names
    #: the key), instead of a run that trains and then registers nowhere. Where the object store's
    #: credentials come from workload identity, move the AWS keys to ``optional_secret_keys``.
    required_secret_keys: tuple = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    #: Keys that only some stores need (a region, a non-AWS endpoint) and the snapshot root (which may
    #: also be a pipeline parameter; ``connect`` refuses a run that has neither).
    optional_secret_keys: tuple = ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
                                   "SORA_SNAPSHOT_ROOT")
    #: The Kubernetes service account of every step's pod (k8s/base/rbac.yaml), set on the run.
    service_account: str = "sora-pipeline"
    gpu_node_selector: dict = field(default_factory=lambda: dict(trainjob.GPU_NODE_SELECTOR))
    gpu_tolerations: list = field(default_factory=lambda: [dict(t) for t in trainjob.GPU_TOLERATIONS])
    use_secret: bool = True
    #: Kubernetes-only task settings (GPU request from the ``gpu_count`` parameter, node selector,
    #: tolerations, Secrets). kfp.local cannot resolve a parameter inside a resource request, and
    #: ignores the rest, so local runs build the pipeline without them.
    kubernetes: bool = True

    @property
    def secret_env(self) -> dict:
        """Secret key → environment variable, for every key (required and optional)."""
        return {k: k for k in (*self.required_secret_keys, *self.optional_secret_keys)}


def _step_name(task) -> str:
    return task.component_spec.name.replace("_", "-")


def build_pipeline(settings: ClusterSettings | None = None, distributed: bool = False):
    """Return the ``@dsl.pipeline`` function configured with ``settings``; with ``distributed`` the train
    step launches a multi-node TrainJob (Kubeflow Trainer) and waits for it."""
    settings = settings or ClusterSettings()

    def sized(task):
        """Requests and limits from the one table; retries on the steps that talk to the network."""
        if not settings.kubernetes:  # kfp.local ignores resources; retries would only slow failing tests
            return task
        name = _step_name(task)
        res = STEP_RESOURCES[name]
        task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
        task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
        if name in NETWORK_STEPS:
            task.set_retry(num_retries=RETRY.num_retries, backoff_duration=RETRY.backoff,
                           backoff_factor=RETRY.factor, backoff_max_duration=RETRY.max_backoff)
        return task

    def with_secret(task):
        sized(task)
        if settings.kubernetes and settings.use_secret and settings.mlflow_secret:
            from kfp import kubernetes

            for keys, optional in ((settings.required_secret_keys, False), (settings.optional_secret_keys, True)):
                if keys:
                    kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_secret,
                                                 secret_key_to_env={k: k for k in keys}, optional=optional)
        return task

    def on_gpu(task, gpu_count):
        """GPU request, node selector and tolerations: only on the branch taken when gpu_count > 0."""
        from kfp import kubernetes

        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count)
        for key, value in settings.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in settings.gpu_tolerations:
            kubernetes.add_toleration(task, **tol)
        return task

    def _train(config, split, embeddings, gpu_count, p):
        """The train step: a TrainJob (``distributed``), else one pod, on GPU nodes when gpu_count > 0."""
        if distributed:
            launched = with_secret(c.train_distributed(
                config=config, split=split, model_root=p["model_root"], gpu_count=gpu_count,
                num_nodes=p["num_nodes"], image=c.TRAINER_IMAGE, secret=settings.mlflow_secret))
            return launched.outputs["model"], launched.outputs["curves"]
        if settings.kubernetes:
            with dsl.If(gpu_count > 0, name="on-gpu"):
                gpu = on_gpu(with_secret(c.train(config=config, split=split, embeddings=embeddings)), gpu_count)
            with dsl.Else(name="on-cpu"):
                cpu = with_secret(c.train(config=config, split=split, embeddings=embeddings))
            return dsl.OneOf(gpu.outputs["model"], cpu.outputs["model"]), \
                dsl.OneOf(gpu.outputs["curves"], cpu.outputs["curves"])
        trained = c.train(config=config, split=split, embeddings=embeddings)
        return trained.outputs["model"], trained.outputs["curves"]

    def _train_and_promote(validated, config, connected, p):
        """prepare → embed → train → evaluate → register → compare → (promote), inside the gates."""
        uri = connected.output
        prepared = with_secret(c.prepare(data_uri=p["data_uri"], data_fingerprint=validated.outputs["fingerprint"],
                                         snapshot_root=p["snapshot_root"], config=config))
        split = prepared.outputs["split"]
        embedded = with_secret(c.embed(cache_uri=p["embedding_cache"], config=config, split=split))
        embeddings = embedded.outputs["embeddings"]
        model, curves = _train(config, split, embeddings, p["gpu_count"], p)
        evaluated = with_secret(c.evaluate(run_baselines=p["run_baselines"], model=model, split=split,
                                           embeddings=embeddings))
        registered = with_secret(c.register(
            tracking_uri=uri, model_name=p["model_name"], model=model, split=split,
            report=evaluated.outputs["report"], validation_report=validated.outputs["report"], curves=curves))
        registered.set_caching_options(False)  # cheap, and deduplicated by the model's content hash
        compared = with_secret(c.compare(
            tracking_uri=uri, model_name=p["model_name"], version=registered.output,
            promotion_margin=p["promotion_margin"], model=model, split=split, report=evaluated.outputs["report"]))
        compared.set_caching_options(False)
        with dsl.If(compared.outputs["Output"] == True, name="challenger-wins"):  # noqa: E712
            promoted = with_secret(c.promote(tracking_uri=uri, model_name=p["model_name"], version=registered.output))
            promoted.set_caching_options(False)
            # k == 0 is checked inside the step: kfp.local skips a parameter condition nested this deep
            sized(c.batch_score(k=p["batch_top_k"], model=model).after(promoted))

    def _gates(p):
        """connect → configure → validate → (passed) drift → (not failed) training; else a failing step."""
        connected = with_secret(c.connect(tracking_uri=p["tracking_uri"], snapshot_root=p["snapshot_root"]))
        connected.set_caching_options(False)  # the registry and the settings are checked on every run, first
        uri = connected.output
        config = sized(c.configure(config_overrides=p["config_overrides"]).after(connected)).outputs["config"]
        validated = with_secret(c.validate(data_uri=p["data_uri"], config=config))
        validated.set_caching_options(False)  # data may change under the same URI
        with dsl.If(validated.outputs["passed"] == True, name="data-valid"):  # noqa: E712 - kfp condition
            drifted = with_secret(c.drift(data_uri=p["data_uri"], reference_uri=p["reference_data_uri"],
                                          tracking_uri=uri, model_name=p["model_name"], config=config))
            drifted.set_caching_options(False)
            with dsl.If(drifted.outputs["Output"] != "fail", name="no-drift-failure"):
                _train_and_promote(validated, config, connected, p)
            with dsl.Else(name="drift-failure"):
                sized(c.fail(message="data drift gate failed (see the drift report)")).set_caching_options(False)
        with dsl.Else(name="data-invalid"):
            sized(c.fail(message=validated.outputs["message"])).set_caching_options(False)

    description = ("Validate, embed, train, evaluate, register and (if better) promote the Sora graph + text "
                   "recommender" + (" (multi-node training as a Kubeflow Trainer TrainJob)." if distributed else "."))

    if distributed:
        def sora_training(data_uri: str, config_overrides: list[str] = [], tracking_uri: str = "",  # noqa: B006
                          model_name: str = "sora", promotion_margin: float = 0.0, gpu_count: int = 0,
                          embedding_cache: str = "", run_baselines: bool = True, reference_data_uri: str = "",
                          batch_top_k: int = 0, snapshot_root: str = "", num_nodes: int = 2, model_root: str = ""):
            _gates(dict(locals()))

        sora_training = dsl.pipeline(name=PIPELINE_NAME + "-distributed", description=description)(
            _described(sora_training, "The Sora training pipeline with a multi-node train step.",
                       gpu_count="GPUs per TrainJob node (0 = CPU nodes)."))
    else:
        def sora_training(data_uri: str, config_overrides: list[str] = [], tracking_uri: str = "",  # noqa: B006
                          model_name: str = "sora", promotion_margin: float = 0.0, gpu_count: int = 0,
                          embedding_cache: str = "", run_baselines: bool = True, reference_data_uri: str = "",
                          batch_top_k: int = 0, snapshot_root: str = ""):
            _gates(dict(locals()))

        sora_training = dsl.pipeline(name=PIPELINE_NAME, description=description)(
            _described(sora_training, "The Sora training pipeline.",
                       gpu_count="GPUs for the train step (0 = CPU nodes)."))

    return sora_training


#: what the Kubeflow UI shows beside each pipeline parameter (both pipelines; read from the docstring)
PARAMETER_DOCS = {
    "data_uri": "Dataset the steps read: an object-store prefix (s3://bucket/prefix, gs://...) or a mounted path.",
    "config_overrides": 'Config overrides, one key=value per item, e.g. ["train.max_epochs=20", "model.dim=64"].',
    "tracking_uri": "MLflow server URL; empty = MLFLOW_TRACKING_URI from the pipeline's Secret.",
    "model_name": "Registered model name in MLflow.",
    "promotion_margin": "Relative NDCG@10 margin by which the challenger must beat the champion.",
    "embedding_cache": "Embedding cache shared by runs (an object-store prefix); empty = none.",
    "run_baselines": "Score MostPop, EASE, BPR-MF and LightGCN beside Sora in the evaluate step.",
    "reference_data_uri": "Data to check drift against; empty = the snapshot the champion was trained on.",
    "batch_top_k": "After a promotion, write the new champion's top-K for every user (0 = skip).",
    "snapshot_root": "Object-store prefix for the immutable data snapshots; empty = SORA_SNAPSHOT_ROOT from the Secret.",
    "num_nodes": "TrainJob nodes.",
    "model_root": "Object-store prefix the TrainJob writes its model under (one folder per run).",
}


def _described(fn, title: str, **docs: str):
    """``fn`` with a Google-style docstring describing each of its parameters (KFP reads it for the UI)."""
    import inspect

    docs = {**PARAMETER_DOCS, **docs}
    fn.__doc__ = title + "\n\nArgs:\n" + "\n".join(f"    {name}: {docs[name]}"
                                                 for name in inspect.signature(fn).parameters)
    return fn


def compile_pipeline(path: str | Path, settings: ClusterSettings | None = None, distributed: bool = False) -> Path:
    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings, distributed), str(path))
    return path


def run_local(arguments: dict, pipeline_root: str | Path, enable_caching: bool = True) -> None:
    """Run the whole pipeline with ``kfp.local`` in the current environment (no containers)."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               enable_caching=enable_caching, raise_on_error=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        build_pipeline(ClusterSettings(kubernetes=False))(**arguments)


def client(host: str, token: str | None = None, namespace: str | None = None):
    import kfp

    return kfp.Client(host=host, existing_token=token, namespace=namespace)


def submit(host: str, arguments: dict, token: str | None = None, namespace: str | None = None,
           experiment: str = "sora", run_name: str | None = None, settings: ClusterSettings | None = None,
           distributed: bool = False):
    """Compile and start one run on a Kubeflow Pipelines endpoint, under the settings' service account."""
    settings = settings or ClusterSettings()
    kfp_client = client(host, token, namespace)
    return kfp_client.create_run_from_pipeline_func(build_pipeline(settings, distributed), arguments=arguments,
                                                    experiment_name=experiment, run_name=run_name,
                                                    namespace=namespace, service_account=settings.service_account)


def schedule(host: str, cron: str, arguments: dict, package_path: str | Path, token: str | None = None,
             namespace: str | None = None, experiment: str = "sora", job_name: str = "sora-retrain",
             settings: ClusterSettings | None = None):
    """A recurring run (cron in Kubeflow's 6-field form, seconds first), under the settings' service account."""
    settings = settings or ClusterSettings()
    kfp_client = client(host, token, namespace)
    exp = kfp_client.create_experiment(experiment, namespace=namespace)
    return kfp_client.create_recurring_run(experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron,
                                           pipeline_package_path=str(package_path), params=arguments,
                                           enable_caching=False, service_account=settings.service_account)
