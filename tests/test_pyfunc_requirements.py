"""The pyfunc's pip requirements follow the model: faiss-cpu exactly when the model carries an approximate
top-k index (which its load imports), as logged to MLflow."""

from importlib.metadata import version

import mlflow
import pytest

from sora.config import SoraConfig
from sora.model.ann import INDEX_FILE
from sora.model.text import HashEncoder
from sora.registry import log_and_register
from sora.registry.pyfunc import inference_requirements
from sora.training.train import prepare, train_model
from tests.conftest import make_dataset


def test_faiss_only_for_models_with_an_index(tmp_path):
    assert not any(r.startswith("faiss-cpu") for r in inference_requirements(tmp_path))
    (tmp_path / INDEX_FILE).write_bytes(b"")
    assert f"faiss-cpu=={version('faiss-cpu')}" in inference_requirements(tmp_path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    ds = make_dataset(n_users=40, n_items=80)
    out = {}
    for name, min_items in (("exact", 200_000), ("ann", 10)):  # the index is built at save, from this size on
        cfg = SoraConfig().with_overrides(["text.model=hash:16", "model.dim=8", "train.max_epochs=1",
                                           "train.batch_size=128", "model.history_len=4",
                                           f"serve.ann_min_items={min_items}"])
        split, emb = prepare(ds, cfg, encoder=HashEncoder(16), progress=False)
        train_model(split, emb, ds.items, cfg, progress=False).recommender.save(tmp / name)
        out[name] = tmp / name
    assert (out["ann"] / INDEX_FILE).exists() and not (out["exact"] / INDEX_FILE).exists()
    return out


@pytest.mark.slow
def test_registered_pyfunc_asks_for_faiss_when_the_model_has_an_index(models, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name, model_dir in models.items():
        registered = log_and_register(uri, f"sora-{name}", model_dir, {"valid": {}, "test": {}})
        mlflow.set_tracking_uri(uri)
        reqs = open(mlflow.pyfunc.get_model_dependencies(registered.model_uri)).read().split()
        has_faiss = any(r.startswith("faiss-cpu==") for r in reqs)
        assert has_faiss == (name == "ann"), (name, reqs)
        assert any(r.startswith("torch==") for r in reqs)
