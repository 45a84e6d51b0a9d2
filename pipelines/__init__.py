"""The Sora training pipeline (installed as ``sora_pipelines``) and how to compile, run, submit, schedule it.

validate → (passed) prepare, embed → train → evaluate → register → compare → (promote) promote
          → (failed) fail

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

log = logging.getLogger(__name__)

PIPELINE_NAME = "sora-training"


@dataclass
class ClusterSettings:
    """Kubernetes settings applied with kfp-kubernetes (ignored by the local runner)."""

    mlflow_secret: str = "sora-mlflow"  # keys below become env vars of the steps that talk to MLflow / S3
    secret_env: dict = field(default_factory=lambda: {
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"})
    gpu_node_selector: dict = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list = field(default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                           "effect": "NoSchedule"}])
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

    @dsl.pipeline(name=PIPELINE_NAME, description="Validate, embed, train, evaluate, register and (if better) "
                  "promote the Sora graph + text recommender.")
    def sora_training(data_dir: str, config_overrides: str = "", tracking_uri: str = "",
                      model_name: str = "sora", promotion_margin: float = 0.0, gpu_count: int = 0,
                      embedding_cache: str = "", run_baselines: bool = True):
        validated = c.validate(data_dir=data_dir, config_overrides=config_overrides)
        validated.set_caching_options(False)  # data may change under the same path
        with dsl.If(validated.outputs["passed"] == True, name="data-valid"):  # noqa: E712 - kfp condition
            fp = validated.outputs["fingerprint"]
            prepared = c.prepare(data_dir=data_dir, config_overrides=config_overrides, data_fingerprint=fp)
            embedded = c.embed(data_dir=data_dir, config_overrides=config_overrides, data_fingerprint=fp,
                               cache_dir=embedding_cache)
            trained = c.train(data_dir=data_dir, config_overrides=config_overrides,
                              split=prepared.outputs["split"], embeddings=embedded.outputs["embeddings"])
            if settings.kubernetes:
                from kfp import kubernetes

                trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count)
                trained.set_cpu_request("2").set_memory_request("8G")
                for key, value in settings.gpu_node_selector.items():
                    kubernetes.add_node_selector(trained, label_key=key, label_value=value)
                for tol in settings.gpu_tolerations:
                    kubernetes.add_toleration(trained, **tol)
            evaluated = c.evaluate(data_dir=data_dir, run_baselines=run_baselines, model=trained.outputs["model"])
            registered = with_secret(c.register(
                tracking_uri=tracking_uri, model_name=model_name, model=trained.outputs["model"],
                report=evaluated.outputs["report"], validation_report=validated.outputs["report"],
                curves=trained.outputs["curves"]))
            registered.set_caching_options(False)
            compared = with_secret(c.compare(
                tracking_uri=tracking_uri, model_name=model_name, version=registered.output, data_dir=data_dir,
                promotion_margin=promotion_margin, model=trained.outputs["model"], report=evaluated.outputs["report"]))
            compared.set_caching_options(False)
            with dsl.If(compared.outputs["Output"] == True, name="challenger-wins"):  # noqa: E712
                promoted = with_secret(c.promote(tracking_uri=tracking_uri, model_name=model_name,
                                                 version=registered.output))
                promoted.set_caching_options(False)
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
