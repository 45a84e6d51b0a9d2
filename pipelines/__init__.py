"""The Sora training pipeline (installed as ``sora_pipelines``) and how to compile, run, submit, schedule it.

connect → configure → validate → drift → (passed) prepare → embed → train → evaluate → register → compare → (promote) promote → (batch_top_k > 0) batch_score
                     → (failed) fail

Steps share nothing but typed artifacts, URIs and environment variables (``data_uri`` may be an
object-store URI; the Secret mapping gives every step ``MLFLOW_TRACKING_URI`` and the store's
credentials). The train step gets GPU scheduling settings only when ``gpu_count > 0``.

Cluster settings that are not pipeline parameters (GPU node selector, tolerations, the Secret with
MLflow / S3 credentials) are fixed when the pipeline is built, see :class:`ClusterSettings`.
"""

# No `from __future__ import annotations` here: kfp reads the real annotation objects.
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import sora_components as c
from kfp import dsl
from sora_components import TRAINER_IMAGE  # noqa: F401 - re-exported for `sora pipeline submit --distributed`
from sora_pipelines import trainjob

log = logging.getLogger(__name__)

PIPELINE_NAME = "sora-training"


@dataclass
class ClusterSettings:
    """Kubernetes settings applied with kfp-kubernetes (ignored by the local runner)."""

    #: The Secret whose keys become environment variables of every step: the MLflow location and
    #: credentials and the object store's (each client configured by its standard variables).
    mlflow_secret: str = "sora-mlflow"
    secret_env: dict = field(default_factory=lambda: {k: k for k in (
        "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
        "MLFLOW_S3_ENDPOINT_URL")})
    gpu_node_selector: dict = field(default_factory=lambda: dict(trainjob.GPU_NODE_SELECTOR))
    gpu_tolerations: list = field(default_factory=lambda: [dict(t) for t in trainjob.GPU_TOLERATIONS])
    use_secret: bool = True
    #: Kubernetes-only task settings (GPU request from the ``gpu_count`` parameter, node selector,
    #: tolerations, Secrets). kfp.local cannot resolve a parameter inside a resource request, and
    #: ignores the rest, so local runs build the pipeline without them.
    kubernetes: bool = True


def build_pipeline(settings: ClusterSettings | None = None):
    """Return the ``@dsl.pipeline`` function configured with ``settings``."""
    settings = settings or ClusterSettings()

    def with_secret(task):
        if settings.kubernetes and settings.use_secret and settings.mlflow_secret:
            from kfp import kubernetes

            kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_secret,
                                         secret_key_to_env=dict(settings.secret_env), optional=True)
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

    def _train_and_promote(data_uri, validated, config, uri, model_name, promotion_margin, gpu_count,
                           embedding_cache, run_baselines, batch_top_k):
        """prepare → embed → train → evaluate → register → compare → (promote), inside the gates."""
        prepared = with_secret(c.prepare(data_uri=data_uri, data_fingerprint=validated.outputs["fingerprint"],
                                         config=config))
        split = prepared.outputs["split"]
        embedded = with_secret(c.embed(cache_uri=embedding_cache, config=config, split=split))
        embeddings = embedded.outputs["embeddings"]
        if settings.kubernetes:
            with dsl.If(gpu_count > 0, name="on-gpu"):
                gpu = on_gpu(with_secret(c.train(config=config, split=split, embeddings=embeddings)), gpu_count)
                gpu.set_cpu_request("2").set_memory_request("8G")
            with dsl.Else(name="on-cpu"):
                cpu = with_secret(c.train(config=config, split=split, embeddings=embeddings))
                cpu.set_cpu_request("2").set_memory_request("8G")
            model = dsl.OneOf(gpu.outputs["model"], cpu.outputs["model"])
            curves = dsl.OneOf(gpu.outputs["curves"], cpu.outputs["curves"])
        else:
            trained = c.train(config=config, split=split, embeddings=embeddings)
            model, curves = trained.outputs["model"], trained.outputs["curves"]
        evaluated = with_secret(c.evaluate(run_baselines=run_baselines, model=model, split=split,
                                           embeddings=embeddings))
        registered = with_secret(c.register(
            tracking_uri=uri, model_name=model_name, model=model, split=split,
            report=evaluated.outputs["report"], validation_report=validated.outputs["report"], curves=curves))
        registered.set_caching_options(False)  # cheap, and deduplicated by the model's content hash
        compared = with_secret(c.compare(
            tracking_uri=uri, model_name=model_name, version=registered.output, promotion_margin=promotion_margin,
            model=model, split=split, report=evaluated.outputs["report"]))
        compared.set_caching_options(False)
        with dsl.If(compared.outputs["Output"] == True, name="challenger-wins"):  # noqa: E712
            promoted = with_secret(c.promote(tracking_uri=uri, model_name=model_name, version=registered.output))
            promoted.set_caching_options(False)
            # k == 0 is checked inside the step: kfp.local skips a parameter condition nested this deep
            c.batch_score(k=batch_top_k, model=model).after(promoted)

    @dsl.pipeline(name=PIPELINE_NAME, description="Validate, embed, train, evaluate, register and (if better) "
                  "promote the Sora graph + text recommender.")
    def sora_training(data_uri: str, config_overrides: str = "", tracking_uri: str = "",
                      model_name: str = "sora", promotion_margin: float = 0.0, gpu_count: int = 0,
                      embedding_cache: str = "", run_baselines: bool = True, reference_data_uri: str = "", batch_top_k: int = 0):
        connected = with_secret(c.connect(tracking_uri=tracking_uri))
        connected.set_caching_options(False)  # the registry is checked on every run, first
        uri = connected.output
        config = c.configure(config_overrides=config_overrides).after(connected).outputs["config"]
        validated = with_secret(c.validate(data_uri=data_uri, config=config))
        validated.set_caching_options(False)  # data may change under the same URI
        with dsl.If(validated.outputs["passed"] == True, name="data-valid"):  # noqa: E712 - kfp condition
            drifted = with_secret(c.drift(data_uri=data_uri, reference_uri=reference_data_uri, tracking_uri=uri,
                                          model_name=model_name, config=config))
            drifted.set_caching_options(False)
            with dsl.If(drifted.outputs["Output"] != "fail", name="no-drift-failure"):
                _train_and_promote(data_uri, validated, config, uri, model_name, promotion_margin, gpu_count,
                                   embedding_cache, run_baselines, batch_top_k)
            with dsl.Else(name="drift-failure"):
                c.fail(message="data drift gate failed (see the drift report)").set_caching_options(False)
        with dsl.Else(name="data-invalid"):
            c.fail(message=validated.outputs["message"]).set_caching_options(False)

    return sora_training


def compile_pipeline(path: str | Path, settings: ClusterSettings | None = None) -> Path:
    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(settings), str(path))
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
           experiment: str = "sora", run_name: str | None = None, settings: ClusterSettings | None = None):
    """Compile and start one run on a Kubeflow Pipelines endpoint."""
    kfp_client = client(host, token, namespace)
    return kfp_client.create_run_from_pipeline_func(build_pipeline(settings), arguments=arguments,
                                                    experiment_name=experiment, run_name=run_name,
                                                    namespace=namespace)


def schedule(host: str, cron: str, arguments: dict, package_path: str | Path, token: str | None = None,
             namespace: str | None = None, experiment: str = "sora", job_name: str = "sora-retrain"):
    """A recurring run (cron in Kubeflow's 6-field form, seconds first)."""
    kfp_client = client(host, token, namespace)
    exp = kfp_client.create_experiment(experiment, namespace=namespace)
    return kfp_client.create_recurring_run(experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron,
                                           pipeline_package_path=str(package_path), params=arguments,
                                           enable_caching=False)
