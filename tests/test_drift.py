"""Data drift: the same data passes, a later window with reweighted popularity fails; reports are written whole."""

import json

import numpy as np
import pandas as pd
import pytest

from sora.config import ConfigError, DriftConfig, SoraConfig
from sora.data.contract import Dataset, load_dataset
from sora.data.drift import CHECKED, drift_report, js_divergence
from tests.conftest import make_dataset


def _shifted(ds: Dataset, seed: int = 0) -> Dataset:
    """A later time window in which a tenth of the items take most of the interactions."""
    inter = ds.interactions.copy()
    ts = inter["timestamp"].astype(float)
    inter["timestamp"] = (ts + (ts.max() - ts.min()) + 86_400).astype(int)
    item_no = inter["item_id"].str[1:].astype(int).to_numpy()
    weights = np.where(item_no % 10 == 0, 20.0, 0.2)
    inter = inter.sample(n=len(inter), replace=True, weights=weights, random_state=seed).reset_index(drop=True)
    return Dataset(interactions=inter, items=ds.items, source="shifted")


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_dataset(n_users=60, n_items=80, per_user=15)


def test_js_divergence_properties():
    p = np.array([1.0, 2.0, 3.0])
    assert js_divergence(p, p) == 0.0 and js_divergence(p, 10 * p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint supports: the maximum
    q = np.array([3.0, 2.0, 1.0])
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p)) and 0 < js_divergence(p, q) < 1
    with pytest.raises(ValueError):
        js_divergence([0, 0], [1, 1])


def test_same_data_passes_with_zero_drift(data):
    report = drift_report(data, data, DriftConfig())
    assert report.status == "pass", report.summary()
    assert [c.metric for c in report.checks] == list(CHECKED)
    assert all(report.metrics[m] == pytest.approx(0.0, abs=1e-12) for m in CHECKED)


def test_shifted_copy_fails(data):
    report = drift_report(data, _shifted(data), DriftConfig())
    assert report.status == "fail", report.summary()
    status = {c.metric: c.status for c in report.checks}
    assert status["item_popularity_js"] == "fail" and status["time_outside_share"] == "fail"
    assert report.metrics["time_outside_share"] == 1.0
    assert report.metrics["current_time_min"] > report.metrics["reference_time_max"]
    assert report.top_item_changes[0]["current"] > report.top_item_changes[0]["reference"]


def test_thresholds_in_the_config_decide(data):
    shifted = _shifted(data)
    lenient = SoraConfig().with_overrides(["drift.item_popularity_js_fail=null", "drift.item_popularity_js_warn=0.01",
                                           "drift.time_outside_share_fail=null", "drift.user_activity_js_fail=null"]).drift
    report = drift_report(data, shifted, lenient)
    assert report.status == "warn", report.summary()
    off = DriftConfig(**{f"{m}_{level}": None for m in CHECKED for level in ("warn", "fail")})
    assert drift_report(data, shifted, off).status == "pass"
    with pytest.raises(ConfigError, match="drift.rating_js_warn"):
        SoraConfig().with_overrides(["drift.rating_js_warn=2"])


def test_unseen_users_and_items_are_counted(data):
    cur = data.interactions.copy()
    cur.loc[cur["user_id"] == "u0", "user_id"] = "newcomer"
    cur.loc[cur["item_id"] == "i0", "item_id"] = "new-item"
    report = drift_report(data, Dataset(cur, data.items), DriftConfig())
    assert report.metrics["unseen_user_share"] == pytest.approx(1 / 60)
    n_items = cur["item_id"].nunique()
    assert report.metrics["unseen_item_share"] == pytest.approx(1 / n_items)


def test_missing_ratings_skip_that_check(data):
    no_rating = Dataset(data.interactions.drop(columns="rating"), data.items)
    report = drift_report(data, no_rating, DriftConfig())
    rating = next(c for c in report.checks if c.metric == "rating_js")
    assert rating.status == "skipped" and "rating_js" not in report.metrics and report.status == "pass"
    assert "skipped" in report.summary()


def test_iso_timestamps_and_continuous_ratings(data):
    cur = data.interactions.copy()
    cur["timestamp"] = pd.to_datetime(cur["timestamp"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    cur["rating"] = cur["rating"].astype(float) + np.linspace(0, 0.5, len(cur))  # many distinct values: binned
    report = drift_report(data, Dataset(cur, data.items), DriftConfig())
    assert report.metrics["time_outside_share"] == 0.0
    assert len(report.distributions["ratings"]["labels"]) == DriftConfig().rating_bins


def test_write_json_html_and_summary(data, tmp_path):
    report = drift_report(data, _shifted(data), DriftConfig())
    report.write(tmp_path / "out" / "drift.json", tmp_path / "out" / "drift.html")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["drift.html", "drift.json"]  # no temp files left

    def no_constants(name):
        raise ValueError(name)

    summary = json.loads((tmp_path / "out" / "drift.json").read_text(), parse_constant=no_constants)
    assert summary["status"] == "fail" and set(CHECKED) <= set(summary["metrics"])
    assert {c["metric"]: c["status"] for c in summary["checks"]}["item_popularity_js"] == "fail"
    page = (tmp_path / "out" / "drift.html").read_text()
    assert page.startswith("<!doctype html>") and "FAIL" in page and "<svg" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    lines = report.summary().splitlines()
    assert lines[0].startswith("data drift FAIL") and len(lines) == 1 + len(CHECKED)
    assert all(m in "\n".join(lines) for m in CHECKED)


@pytest.mark.slow
def test_movielens_100k_against_itself_and_a_shifted_copy(ml100k_dir):
    ds = load_dataset(ml100k_dir)
    assert drift_report(ds, ds).status == "pass"
    inter = ds.interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    first = Dataset(inter.iloc[: int(0.9 * len(inter))].reset_index(drop=True), ds.items)
    assert drift_report(first, ds).status == "pass"  # 10% more, newer data: ordinary growth
    shifted = inter.copy()
    span = shifted["timestamp"].max() - shifted["timestamp"].min()
    shifted["timestamp"] = shifted["timestamp"] + span + 86_400
    codes = shifted["item_id"].astype("category").cat.codes.to_numpy()
    shifted = shifted.sample(n=len(shifted), replace=True, weights=np.where(codes % 10 == 0, 10.0, 0.3), random_state=0)
    report = drift_report(ds, Dataset(shifted.reset_index(drop=True), ds.items))
    assert report.status == "fail", report.summary()
