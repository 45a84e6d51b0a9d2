"""Data validation with Great Expectations 1.x (DESIGN.md §3, §10 "Validation defaults").

One expectation suite per table, built in code from :class:`~sora.config.ValidationConfig`.
Derived columns (parsed timestamp seconds, rendered item-text length) are added to a copy of each
table before validation so that every rule is a stock GX expectation. The result is a
:class:`ValidationReport`: pass/fail, every failed rule with counts and example rows, rendered as
JSON and as one self-contained HTML file.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sora.config import DataConfig, ValidationConfig
from sora.data.contract import (
    TABLES,
    DataError,
    find_table,
    item_texts,
    read_table,
    timestamps_to_seconds,
    write_text_atomic,
)

log = logging.getLogger(__name__)


@dataclass
class Failure:
    rule: str
    column: str | None
    count: int
    examples: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""

    def describe(self, table: str) -> str:
        where = f"{table}.{self.column}" if self.column else table
        rows = ", ".join(str(e.get("row")) for e in self.examples if "row" in e)
        out = f"[{self.rule}] {where}: {self.count} offending"
        if self.detail:
            out += f" ({self.detail})"
        if rows:
            out += f"; rows {rows}"
        if self.examples:
            out += f"; e.g. {json.dumps(self.examples[:3], default=str)}"
        return out


@dataclass
class TableReport:
    file: str | None
    rows: int
    failures: list[Failure] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    passed: bool
    tables: dict[str, TableReport]
    data_dir: str = ""
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """The JSON summary (DESIGN.md §10); strict JSON: non-finite numbers become strings."""
        return finite_json({
            "passed": self.passed,
            "data_dir": self.data_dir,
            "tables": {
                name: {
                    "file": t.file,
                    "rows": t.rows,
                    "checked": t.checked,
                    "failures": [asdict(f) for f in t.failures],
                }
                for name, t in self.tables.items()
            },
        })

    def failure_lines(self) -> list[str]:
        return [f.describe(name) for name, t in self.tables.items() for f in t.failures]

    def summary(self) -> str:
        if self.passed:
            counts = ", ".join(f"{n}: {t.rows} rows" for n, t in self.tables.items())
            return f"validation passed ({counts})"
        lines = self.failure_lines()
        return f"validation FAILED: {len(lines)} failed expectation(s)\n" + "\n".join(f"  - {x}" for x in lines)

    def write(self, json_path: str | Path | None = None, html_path: str | Path | None = None) -> None:
        if json_path:
            write_text_atomic(json_path, json.dumps(self.to_json(), indent=2, default=str, allow_nan=False))
        if html_path:
            write_text_atomic(html_path, render_html(self))


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN / ±inf float replaced by ``"nan"`` / ``"inf"`` / ``"-inf"``.

    ``json.dumps`` would otherwise write ``NaN`` / ``Infinity``, which strict JSON readers reject.
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# Suites


@dataclass
class _Rule:
    """One expectation and the name Sora reports it under."""

    name: str
    column: str | None
    expectation: Any
    detail: str = ""


def _rules_for(table: str, df: pd.DataFrame, cfg: ValidationConfig, known: dict[str, set[str]], now: float) -> list[_Rule]:
    import great_expectations as gx

    E = gx.expectations
    rules: list[_Rule] = []
    ids = {"interactions": ["user_id", "item_id"], "items": ["item_id"], "users": ["user_id"],
           "user_edges": ["src_user_id", "dst_user_id"]}[table]
    for col in ids:
        rules.append(_Rule("id_not_null", col, E.ExpectColumnValuesToNotBeNull(column=col)))
    if table == "items":
        rules.append(_Rule("item_id_unique", "item_id", E.ExpectColumnValuesToBeUnique(column="item_id")))
        rules.append(_Rule("title_not_null", "title", E.ExpectColumnValuesToNotBeNull(column="title")))
        rules.append(_Rule(
            "text_nonempty_ratio", "title",
            E.ExpectColumnValuesToBeBetween(column="_text_length", min_value=1, mostly=cfg.min_text_nonempty_ratio),
            f"item text must be non-empty for at least {cfg.min_text_nonempty_ratio:.0%} of items",
        ))
        rules.append(_Rule("min_items", None, E.ExpectTableRowCountToBeBetween(min_value=cfg.min_items),
                           f"at least {cfg.min_items} items"))
    if table == "interactions":
        rules.append(_Rule("min_rows", None, E.ExpectTableRowCountToBeBetween(min_value=cfg.min_interactions),
                           f"at least {cfg.min_interactions} interactions"))
        rules.append(_Rule("min_users", "user_id",
                           E.ExpectColumnUniqueValueCountToBeBetween(column="user_id", min_value=cfg.min_users),
                           f"at least {cfg.min_users} distinct users"))
        rules.append(_Rule("min_items", "item_id",
                           E.ExpectColumnUniqueValueCountToBeBetween(column="item_id", min_value=cfg.min_items),
                           f"at least {cfg.min_items} distinct items"))
        rules.append(_Rule("timestamp_parseable", "timestamp",
                           E.ExpectColumnValuesToNotBeNull(column="_timestamp_s"),
                           "unix seconds or ISO-8601"))
        rules.append(_Rule("timestamp_not_negative", "timestamp",
                           E.ExpectColumnValuesToBeBetween(column="_timestamp_s", min_value=0),
                           "timestamps before 1970 (negative unix seconds) are not plausible"))
        rules.append(_Rule("timestamp_not_future", "timestamp",
                           E.ExpectColumnValuesToBeBetween(column="_timestamp_s", max_value=now + cfg.future_tolerance_s),
                           "timestamps may not lie in the future"))
        rules.append(_Rule(
            "duplicate_interactions", None,
            E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"], mostly=1 - cfg.max_duplicate_ratio),
            f"duplicate (user_id, item_id, timestamp) rows at most {cfg.max_duplicate_ratio:.1%}",
        ))
        if "rating" in df.columns:
            rules.append(_Rule("rating_numeric", "rating", E.ExpectColumnValuesToNotBeNull(column="_rating"),
                               "ratings must be numbers"))
            rules.append(_Rule("rating_in_range", "rating",
                               E.ExpectColumnValuesToBeBetween(column="_rating", min_value=cfg.rating_min, max_value=cfg.rating_max),
                               f"ratings inside [{cfg.rating_min}, {cfg.rating_max}]"))
        if "items" in known:
            rules.append(_Rule("known_item", "item_id",
                               E.ExpectColumnValuesToBeInSet(column="item_id", value_set=sorted(known["items"]),
                                                             mostly=1 - cfg.max_unknown_item_ratio),
                               f"item ids must appear in items (at most {cfg.max_unknown_item_ratio:.1%} unknown)"))
        if "users" in known:
            rules.append(_Rule("known_user", "user_id",
                               E.ExpectColumnValuesToBeInSet(column="user_id", value_set=sorted(known["users"]),
                                                             mostly=1 - cfg.max_unknown_user_ratio),
                               f"user ids must appear in users (at most {cfg.max_unknown_user_ratio:.1%} unknown)"))
    if table == "user_edges" and ("users" in known or "interaction_users" in known):
        # without a users table, the users are those that interact
        users, where = ((known["users"], "users") if "users" in known else (known["interaction_users"], "interactions"))
        for col in ("src_user_id", "dst_user_id"):
            rules.append(_Rule("known_user", col,
                               E.ExpectColumnValuesToBeInSet(column=col, value_set=sorted(users),
                                                             mostly=1 - cfg.max_unknown_user_ratio),
                               f"user ids must appear in {where} (at most {cfg.max_unknown_user_ratio:.1%} unknown)"))
    return rules


def _derived(table: str, df: pd.DataFrame, data_cfg: DataConfig) -> pd.DataFrame:
    out = df.copy()
    if table == "interactions":
        out["_timestamp_s"] = timestamps_to_seconds(df["timestamp"])
        if "rating" in df.columns:
            out["_rating"] = pd.to_numeric(df["rating"], errors="coerce").astype(float)
    if table == "items":
        texts = item_texts(df.fillna({"title": ""}), data_cfg.item_text_template)
        out["_text_length"] = texts.str.len().where(df["title"].notna() & (df["title"].astype(str).str.strip() != ""), 0)
    return out.reset_index(drop=True)


def _run_suite(table: str, df: pd.DataFrame, rules: list[_Rule], n_examples: int) -> list[Failure]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"sora_{table}")
    batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"sora_{table}"))  # adding assigns expectation ids
    for r in rules:
        suite.add_expectation(r.expectation)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failures: list[Failure] = []
    visible = [c for c in df.columns if not c.startswith("_")]
    order = {r.name + str(r.column): k for k, r in enumerate(rules)}
    by_id = {r.expectation.id: r for r in rules}  # GX does not keep the suite's order in its results
    for res in result.results:
        rule = by_id[res.expectation_config.id]
        if res.success:
            continue
        detail = rule.detail
        info = res.result or {}
        if res.exception_info and res.exception_info.get("raised_exception"):
            detail = f"{detail}; GX error: {res.exception_info.get('exception_message')}"
        idx = info.get("unexpected_index_list") or []
        count = int(info.get("unexpected_count") or 0)
        if not idx and "observed_value" in info:
            detail = f"{detail}; observed {info['observed_value']}".strip("; ")
            count = count or 1
        examples = []
        for i in list(idx)[:n_examples]:
            i = i if isinstance(i, int) else (i.get("index") if isinstance(i, dict) else i)
            if isinstance(i, int) and 0 <= i < len(df):
                row = {"row": i}
                row.update({c: _jsonable(df.at[i, c]) for c in visible})
                examples.append(row)
        failures.append(Failure(rule=rule.name, column=rule.column, count=count, examples=examples, detail=detail))
    return sorted(failures, key=lambda f: order[f.rule + str(f.column)])


def _jsonable(v: Any) -> Any:
    if v is None or (not isinstance(v, (list, tuple, str)) and pd.isna(v)):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def validate_dataset_dir(directory: str | Path, cfg: ValidationConfig | None = None, data_cfg: DataConfig | None = None,
                         now: float | None = None) -> ValidationReport:
    """Validate every table of a dataset directory. Unreadable tables and missing columns are failures."""
    cfg = cfg or ValidationConfig()
    data_cfg = data_cfg or DataConfig()
    now = time.time() if now is None else now
    directory = Path(directory)
    tables: dict[str, TableReport] = {}
    frames: dict[str, pd.DataFrame] = {}
    for name, (required, must_exist) in TABLES.items():
        try:
            path = find_table(directory, name)
        except DataError as exc:  # both <name>.csv and <name>.parquet
            tables[name] = TableReport(exc.path, 0, [Failure("single_file", None, 2, detail=str(exc))])
            continue
        if path is None:
            if must_exist:
                tables[name] = TableReport(None, 0, [Failure("table_present", None, 1, detail=(
                    f"{directory}/{name}.csv or {name}.parquet is missing"))])
            continue
        try:
            df = read_table(path)
        except DataError as exc:
            tables[name] = TableReport(str(path), 0, [Failure("readable", None, 1, detail=str(exc))])
            continue
        missing = [c for c in required if c not in df.columns]
        if missing:
            tables[name] = TableReport(str(path), len(df), [
                Failure("required_column", c, 1, detail=f"{path}: column {c!r} missing; found {list(df.columns)}")
                for c in missing])
            continue
        frames[name] = df
        tables[name] = TableReport(str(path), len(df))
    known = {}
    if "items" in frames:
        known["items"] = set(frames["items"]["item_id"].dropna())
    if "users" in frames:
        known["users"] = set(frames["users"]["user_id"].dropna())
    if "interactions" in frames:
        known["interaction_users"] = set(frames["interactions"]["user_id"].dropna())
    for name, df in frames.items():
        rules = _rules_for(name, df, cfg, known, now)
        tables[name].checked = [r.name + (f"({r.column})" if r.column else "") for r in rules]
        tables[name].failures = _run_suite(name, _derived(name, df, data_cfg), rules, cfg.examples)
        log.info("%s: %d rows, %d rules, %d failed", name, len(df), len(rules), len(tables[name].failures))
    passed = all(not t.failures for t in tables.values())
    return ValidationReport(passed=passed, tables=tables, data_dir=str(directory))


# --------------------------------------------------------------------------------------------
# HTML (one self-contained file; the Kubeflow UI shows a single HTML artifact)


def render_html(report: ValidationReport) -> str:
    status = "PASSED" if report.passed else "FAILED"
    colour = "#1a7f37" if report.passed else "#cf222e"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Sora data validation</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #d0d7de;padding:4px 8px;"
        "font-size:13px;text-align:left;vertical-align:top}th{background:#f6f8fa}.ok{color:#1a7f37}"
        ".bad{color:#cf222e;font-weight:600}code{font-size:12px}</style></head><body>",
        f"<h1>Data validation: <span style='color:{colour}'>{status}</span></h1>",
        f"<p>Data: <code>{html.escape(report.data_dir)}</code> &middot; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report.created_at))}</p>",
        "<table><tr><th>table</th><th>file</th><th>rows</th><th>rules checked</th><th>failed</th></tr>",
    ]
    for name, t in report.tables.items():
        cls = "bad" if t.failures else "ok"
        parts.append(f"<tr><td>{name}</td><td><code>{html.escape(str(t.file))}</code></td><td>{t.rows}</td>"
                     f"<td>{len(t.checked)}</td><td class='{cls}'>{len(t.failures)}</td></tr>")
    parts.append("</table>")
    for name, t in report.tables.items():
        parts.append(f"<h2>{name}</h2>")
        if not t.failures:
            parts.append(f"<p class='ok'>All {len(t.checked)} expectations met: "
                         f"{html.escape(', '.join(t.checked))}</p>")
            continue
        parts.append("<table><tr><th>rule</th><th>column</th><th>count</th><th>detail</th><th>example rows</th></tr>")
        for f in t.failures:
            ex = "<br>".join(html.escape(json.dumps(e, default=str)) for e in f.examples) or "&ndash;"
            parts.append(f"<tr><td class='bad'>{f.rule}</td><td>{html.escape(str(f.column or ''))}</td>"
                         f"<td>{f.count}</td><td>{html.escape(f.detail)}</td><td><code>{ex}</code></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
