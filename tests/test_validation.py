"""Every kind of broken data is caught by name; MovieLens-100K passes."""

import json
import time

import pandas as pd
import pytest

from sora.cli import main
from sora.data.validation import validate_dataset_dir


def _rules(report, table="interactions"):
    return {f.rule for f in report.tables[table].failures}


def _write(d, name, df):
    df.to_csv(d / f"{name}.csv", index=False)


def test_clean_synthetic_data_passes(tiny_dir):
    report = validate_dataset_dir(tiny_dir)
    assert report.passed, report.summary()


def _broken(tiny_dir, mutate, table="interactions"):
    df = pd.read_csv(tiny_dir / f"{table}.csv", dtype=str)
    df = mutate(df)
    _write(tiny_dir, table, df)
    return validate_dataset_dir(tiny_dir)


@pytest.mark.parametrize("mutate,rule,table,row", [
    (lambda d: d.assign(user_id=d["user_id"].where(d.index != 4, None)), "id_not_null", "interactions", 4),
    (lambda d: d.assign(item_id=d["item_id"].where(d.index != 7, "nope")), "known_item", "interactions", 7),
    (lambda d: d.assign(rating=d["rating"].where(d.index != 2, "7.5")), "rating_in_range", "interactions", 2),
    (lambda d: d.assign(rating=d["rating"].where(d.index != 2, "five")), "rating_numeric", "interactions", 2),
    (lambda d: d.assign(timestamp=d["timestamp"].where(d.index != 3, str(int(time.time()) + 10**7))),
     "timestamp_not_future", "interactions", 3),
    (lambda d: d.assign(timestamp=d["timestamp"].where(d.index != 3, "yesterday-ish")),
     "timestamp_parseable", "interactions", 3),
    (lambda d: pd.concat([d, d.iloc[:20]], ignore_index=True), "duplicate_interactions", "interactions", 0),
    (lambda d: d.iloc[:5], "min_rows", "interactions", None),
    (lambda d: d.assign(title=[""] * len(d)), "text_nonempty_ratio", "items", 0),
    (lambda d: pd.concat([d, d.iloc[:1]], ignore_index=True), "item_id_unique", "items", 0),
])
def test_each_broken_kind_is_caught_by_name(tiny_dir, mutate, rule, table, row):
    report = _broken(tiny_dir, mutate, table)
    assert not report.passed
    failures = {f.rule: f for f in report.tables[table].failures}
    assert rule in failures, report.summary()
    if row is not None:
        assert row in [e["row"] for e in failures[rule].examples]
    assert rule in report.summary()


def test_unknown_items_within_threshold_pass(tiny_dir):
    report = _broken(tiny_dir, lambda d: d.assign(item_id=d["item_id"].where(d.index != 7, "nope")))
    assert not report.passed
    from sora.config import ValidationConfig

    lenient = validate_dataset_dir(tiny_dir, ValidationConfig(max_unknown_item_ratio=0.01))
    assert lenient.passed, lenient.summary()


def test_unreadable_file_and_wrong_columns(tiny_dir):
    (tiny_dir / "items.csv").unlink()
    (tiny_dir / "items.parquet").write_bytes(b"not parquet at all")
    df = pd.read_csv(tiny_dir / "interactions.csv").rename(columns={"user_id": "uid"})
    _write(tiny_dir, "interactions", df)
    report = validate_dataset_dir(tiny_dir)
    assert _rules(report, "items") == {"readable"}
    assert "items.parquet" in report.tables["items"].failures[0].detail
    fails = report.tables["interactions"].failures
    assert [(f.rule, f.column) for f in fails] == [("required_column", "user_id")]


def test_missing_table(tiny_dir):
    (tiny_dir / "items.csv").unlink()
    report = validate_dataset_dir(tiny_dir)
    assert _rules(report, "items") == {"table_present"}


def test_cli_exit_codes_json_and_html(tiny_dir, tmp_path, capsys):
    out_json, out_html = tmp_path / "v.json", tmp_path / "v.html"
    assert main(["data", "validate", "--data", str(tiny_dir), "--json", str(out_json), "--report", str(out_html)]) == 0
    assert json.loads(out_json.read_text())["passed"] is True
    _broken(tiny_dir, lambda d: d.assign(user_id=d["user_id"].where(d.index != 4, None)))
    assert main(["data", "validate", "--data", str(tiny_dir), "--json", str(out_json), "--report", str(out_html)]) == 1
    summary = json.loads(out_json.read_text())
    assert summary["passed"] is False
    failure = summary["tables"]["interactions"]["failures"][0]
    assert failure["rule"] == "id_not_null" and failure["column"] == "user_id" and failure["count"] == 1
    html = out_html.read_text()
    assert html.startswith("<!doctype html>") and "id_not_null" in html and "<script" not in html
    assert "id_not_null" in capsys.readouterr().out
    assert main(["data", "validate"]) == 2


def test_user_table_references(tmp_path):
    from tests.conftest import make_dataset

    ds = make_dataset(with_users=True, with_user_edges=True)
    ds.users = ds.users.iloc[2:]
    ds.save(tmp_path)
    report = validate_dataset_dir(tmp_path)
    assert "known_user" in _rules(report)


@pytest.mark.slow
def test_movielens_100k_passes(ml100k_dir):
    report = validate_dataset_dir(ml100k_dir)
    assert report.passed, report.summary()
    assert report.tables["interactions"].rows == 100_000


def test_negative_timestamps_are_caught(tiny_dir):
    report = _broken(tiny_dir, lambda d: d.assign(timestamp=d["timestamp"].where(d.index != 6, "-5")))
    failures = {f.rule: f for f in report.tables["interactions"].failures}
    assert not report.passed and "timestamp_not_negative" in failures
    assert [e["row"] for e in failures["timestamp_not_negative"].examples] == [6]


def test_csv_and_parquet_of_one_table_is_an_error_naming_both(tiny_dir, tiny_dataset):
    tiny_dataset.interactions.to_parquet(tiny_dir / "interactions.parquet", index=False)
    report = validate_dataset_dir(tiny_dir)
    assert not report.passed and _rules(report) == {"single_file"}
    detail = report.tables["interactions"].failures[0].detail
    assert "interactions.csv" in detail and "interactions.parquet" in detail


@pytest.mark.parametrize("with_users", [False, True])
def test_user_edges_naming_unknown_users_fail_with_or_without_users_table(tmp_path, with_users):
    from tests.conftest import make_dataset

    ds = make_dataset(with_users=with_users, with_user_edges=True)
    ds.save(tmp_path)
    assert validate_dataset_dir(tmp_path).passed
    ds.user_edges = pd.concat([ds.user_edges, pd.DataFrame({"src_user_id": ["u1"], "dst_user_id": ["ghost"]})],
                              ignore_index=True)
    ds.save(tmp_path)
    report = validate_dataset_dir(tmp_path)
    failures = report.tables["user_edges"].failures
    assert not report.passed and [(f.rule, f.column, f.count) for f in failures] == [("known_user", "dst_user_id", 1)]
    assert failures[0].examples[0]["dst_user_id"] == "ghost"


def test_json_summary_is_strict_json_even_with_infinite_values(tmp_path):
    from tests.conftest import make_dataset

    ds = make_dataset()
    ds.interactions["rating"] = ds.interactions["rating"].astype(float)
    ds.interactions.loc[3, "rating"] = float("inf")
    ds.interactions.loc[4, "rating"] = float("-inf")
    ds.save(tmp_path / "d")  # parquet keeps the float infinities
    report = validate_dataset_dir(tmp_path / "d")
    assert "rating_in_range" in _rules(report)
    report.write(tmp_path / "v.json")
    text = (tmp_path / "v.json").read_text()
    assert "Infinity" not in text and "NaN" not in text

    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    summary = json.loads(text, parse_constant=no_constants)
    examples = summary["tables"]["interactions"]["failures"][0]["examples"]
    assert {e["rating"] for e in examples} == {"inf", "-inf"}
