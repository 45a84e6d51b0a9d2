"""Sora as an MLflow pyfunc: artifacts are Sora's own model directory, loaded with ``Recommender.load``.

Input: a DataFrame with ``user_id`` (string) and optional ``k`` (int, default 10).
Output: one row per recommendation: ``user_id``, ``rank``, ``item_id``, ``title``, ``score``.
Unknown users get no rows (and a warning in the log).
"""

from __future__ import annotations

import logging

import mlflow.pyfunc
import pandas as pd

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["user_id", "rank", "item_id", "title", "score"]


class SoraPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from sora.recommender import Recommender

        self.rec = Recommender.load(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return recommend_frame(self.rec, model_input)


def recommend_frame(rec, model_input: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rec_row in model_input.to_dict("records"):
        uid = str(rec_row["user_id"])
        k = int(rec_row.get("k") or 10)
        if uid not in rec.user_index:
            log.warning("unknown user_id %r: no recommendations", uid)
            continue
        for rank, item in enumerate(rec.recommend(uid, k=k), 1):
            rows.append({"user_id": uid, "rank": rank, **item})
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
