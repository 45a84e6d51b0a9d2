"""Sora as an MLflow pyfunc that loads anywhere MLflow runs.

The logged model carries Sora's own model directory (artifact ``model_dir``) and the code that reads
it (``code_paths``: the ``sora`` package, so nothing of the project needs to be installed where it is
loaded), and asks only for the inference stack (torch, numpy, pandas, scipy, safetensors, pyarrow,
pyyaml, mlflow, and faiss-cpu when the model carries an approximate top-k index, whose load imports
faiss) — no DGL, kfp, Great Expectations or BentoML.

Input: a DataFrame with a ``user_id`` column (strings). Params (``predict(df, params={...})``):
``k`` (default 10), ``exclude_seen`` (default true), ``fallback`` (default true).
Output: one row per input row — ``user_id``, ``item_ids`` (list), ``scores`` (list), ``fallback``
(true when the user is unknown and the popularity ranking was returned instead; with
``fallback=false`` unknown users get empty lists, still flagged, never dropped). That shape works from
``mlflow.pyfunc.spark_udf`` too.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["user_id", "item_ids", "scores", "fallback"]
DEFAULT_PARAMS = {"k": 10, "exclude_seen": True, "fallback": True}
INFERENCE_PACKAGES = ("torch", "numpy", "pandas", "scipy", "safetensors", "pyarrow", "pyyaml", "pydantic", "mlflow")
#: Needed only by models that carry an approximate top-k index (``ann.faiss``, :mod:`sora.model.ann`): loading
#: one imports faiss.
ANN_PACKAGE = "faiss-cpu"


class SoraPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from sora.model.recommender import Recommender

        self.rec = Recommender.load(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return recommend_frame(self.rec, model_input, **{**DEFAULT_PARAMS, **(params or {})})


def recommend_frame(rec, model_input: pd.DataFrame, k: int = 10, exclude_seen: bool = True,
                    fallback: bool = True) -> pd.DataFrame:
    """One output row per input row (see the module docstring)."""
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if "user_id" not in model_input.columns:
        raise ValueError("model input needs a user_id column")
    popular = None
    rows = []
    for uid in model_input["user_id"].astype(str):
        if uid in rec.user_index:
            items, used_fallback = rec.recommend(uid, k=k, exclude_seen=bool(exclude_seen)), False
        else:
            if fallback and popular is None:
                popular = rec.recommend_popular(k)
            items, used_fallback = (popular if fallback else []), True
        rows.append({"user_id": uid, "item_ids": [it["item_id"] for it in items],
                     "scores": [float(it["score"]) for it in items], "fallback": used_fallback})
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def inference_requirements(model_dir: str | Path | None = None) -> list[str]:
    """Pinned versions of the inference stack as installed here, plus faiss-cpu when the model directory
    holds an approximate top-k index (a model without one does not pull faiss where it is loaded)."""
    from sora.model.ann import INDEX_FILE

    names = list(INFERENCE_PACKAGES)
    if model_dir is not None and (Path(model_dir) / INDEX_FILE).exists():
        names.append(ANN_PACKAGE)
    reqs = []
    for name in names:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            if name == ANN_PACKAGE:  # the model cannot load without it: never log a pyfunc that says otherwise
                raise
            continue
    return reqs


def log_pyfunc(rec, model_dir: str | Path, registered_model_name: str | None):
    """Log the pyfunc (with its code and inference requirements) in the active run; registered under
    ``registered_model_name`` when one is given (``log_and_register`` passes None and creates the version
    itself, once every artifact is uploaded)."""
    from mlflow.models import infer_signature

    import sora

    example = pd.DataFrame({"user_id": list(rec.user_ids[:2])})
    signature = infer_signature(example, recommend_frame(rec, example), params=dict(DEFAULT_PARAMS))
    return mlflow.pyfunc.log_model(
        name="model", python_model=SoraPyfunc(), artifacts={"model_dir": str(model_dir)},
        code_paths=[str(Path(sora.__file__).parent)], signature=signature, input_example=example,
        pip_requirements=inference_requirements(model_dir), registered_model_name=registered_model_name,
    )
