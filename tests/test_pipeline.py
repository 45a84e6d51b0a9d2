"""The pipeline compiles to a valid PipelineSpec and runs end to end with kfp.local."""

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from sora.cli import main
from tests.conftest import make_dataset


def test_compiled_yaml_is_a_pipeline_spec_with_gpu_settings_only_on_the_gpu_branch(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "sora-training"
    executors = docs[0]["deploymentSpec"]["executors"]
    trains = {k: v["container"] for k, v in executors.items() if k.startswith("exec-train")}
    assert len(trains) == 2  # one for gpu_count > 0, one for CPU nodes
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = [k for k, v in trains.items() if "accelerator" in v.get("resources", {})]
    cpu = [k for k in trains if k not in gpu]
    assert len(gpu) == 1 and len(cpu) == 1
    assert "gpu_count" in trains[gpu[0]]["resources"]["accelerator"]["resourceCount"]
    assert platform[gpu[0]]["nodeSelector"] and platform[gpu[0]]["tolerations"]
    assert "nodeSelector" not in platform[cpu[0]] and "tolerations" not in platform[cpu[0]]
    params = spec.root.input_definitions.parameters
    assert {"data_uri", "tracking_uri", "model_name", "promotion_margin", "gpu_count"} <= set(params)
    assert "data_dir" not in params  # data is a URI, never a path shared between pods
    # every step gets the Secret, and the Secret carries MLFLOW_TRACKING_URI and the object store's variables
    for name in executors:
        if not name.startswith(("exec-fail", "exec-configure", "exec-batch-score")):  # parameters/artifacts only
            env = {e["envVar"] for s in platform[name]["secretAsEnv"] for e in s["keyToEnv"]}
            assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"} <= env, name
    images = {e["container"]["image"] for e in executors.values()}
    assert any("sora-trainer" in i for i in images) and any(i.endswith("/sora:0.1.0") for i in images)
    # later steps read the prepared split, never the raw data: only validate, drift and prepare take data_uri
    readers = {name for name, comp in spec.components.items() if "data_uri" in comp.input_definitions.parameters}
    assert readers == {"comp-validate", "comp-drift", "comp-prepare"}


def _run(tmp_path, data, *overrides, margin="0.0"):
    argv = ["pipeline", "run", "--local", "--data", str(data), "--workdir", str(tmp_path / "work"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-baselines", "--margin", margin,
            "--embedding-cache", str(tmp_path / "cache"),
            "--set", "text.model=hash:16", "--set", "train.batch_size=128", "--set", "model.history_len=4",
            "--set", "train.patience=20", "--set", "tune.grid=[]"]  # one training each: these tests are about promotion
    for o in overrides:
        argv += ["--set", o]
    return main(argv)


def _champion(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return str(client.get_model_version_by_alias("sora", "champion").version)


@pytest.mark.slow
def test_local_runs_promote_only_better_models_and_stop_on_bad_data(tmp_path, capsys):
    data = tmp_path / "data"
    make_dataset(n_users=60, n_items=120).save(data, fmt="csv")
    # 1: a small model without the item–item head becomes the first champion (it beats MostPop)
    assert _run(tmp_path, data, "train.max_epochs=3", "model.dim=16", "model.use_item_item_score=false") == 0
    assert _champion(tmp_path) == "1"
    # 2: a deliberately worse one (1 epoch, 2 dims, no text) is registered but not promoted
    assert _run(tmp_path, data, "train.max_epochs=1", "model.dim=2", "model.use_text=false",
                "model.use_item_item_score=false") == 0
    assert _champion(tmp_path) == "1"
    assert "keep champion" in capsys.readouterr().out
    # 3: a better one (four times the epochs, the head on; 0.325 vs 0.246 test NDCG@10, deterministic on CPU) replaces it
    assert _run(tmp_path, data, "train.max_epochs=12", "model.dim=16") == 0
    assert _champion(tmp_path) == "3"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_model_version("sora", "3").tags["previous_champion"] == "1"
    cards = list((tmp_path / "work" / "pipeline_runs").rglob("card"))
    assert cards and any("PROMOTED" in Path(c).read_text() for c in cards)
    # 4: data that fails validation registers nothing and fails the run
    bad = tmp_path / "bad"
    ds = make_dataset(n_users=60, n_items=120)
    ds.interactions.loc[3, "rating"] = 42.0
    ds.save(bad, fmt="csv")
    assert _run(tmp_path, bad, "train.max_epochs=2") == 1
    assert len(client.search_model_versions("name='sora'")) == 3
    reports = list((tmp_path / "work" / "pipeline_runs").rglob("validate/summary"))
    assert any(not json.loads(Path(r).read_text())["passed"] for r in reports)
