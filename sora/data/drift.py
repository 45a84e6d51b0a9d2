"""Data drift: the new data against the champion's training data (DESIGN.md §3 "drift checks").

The report compares two :class:`~sora.data.contract.Dataset` objects on what a recommender is sensitive to:

- ``item_popularity_js``  which items get the interactions (Jensen–Shannon divergence of the items'
  shares; items present on one side only count with share 0 on the other)
- ``user_activity_js``    how active users are (JS of the interactions-per-user histogram, log2 bins;
  by shape, since the users themselves may be new)
- ``rating_js``           the rating distribution (skipped when either side has no ``rating`` column)
- ``unseen_user_share`` / ``unseen_item_share``  distinct ids of the new data absent from the reference
- ``time_outside_share``  new interactions outside the reference's time range (plus both ranges, for reading)

Jensen–Shannon (base 2) rather than PSI: it is bounded in [0, 1], symmetric, and defined when a bin
is empty on one side (new items, new activity levels) without an arbitrary smoothing constant, so
one threshold means the same on every data set. :class:`~sora.config.DriftConfig` holds a warn and a
fail threshold per metric; the worst check is the report's status. The report is JSON (metrics,
checks) and one self-contained HTML file (the Kubeflow UI shows a single HTML artifact).
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

import numpy as np
import pandas as pd

from sora.config import DriftConfig
from sora.data.contract import Dataset, timestamps_to_seconds, write_text_atomic
from sora.data.validation import finite_json

log = logging.getLogger(__name__)

STATUSES = ("pass", "warn", "fail")
#: The thresholded metrics, in report order (each has ``<name>_warn`` / ``<name>_fail`` in DriftConfig).
CHECKED = ("item_popularity_js", "user_activity_js", "rating_js", "unseen_user_share", "unseen_item_share",
           "time_outside_share")
_TITLES = {
    "item_popularity_js": "item popularity (JS divergence of interaction shares)",
    "user_activity_js": "user activity (JS divergence of interactions-per-user, log2 bins)",
    "rating_js": "ratings (JS divergence of the rating histogram)",
    "unseen_user_share": "share of new users (not in the reference)",
    "unseen_item_share": "share of new items (not in the reference)",
    "time_outside_share": "share of interactions outside the reference time range",
}


@dataclass
class DriftCheck:
    """One thresholded metric. ``status`` is pass, warn, fail, or skipped (not computable)."""

    metric: str
    value: float | None
    warn: float | None
    fail: float | None
    status: str
    detail: str = ""

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4f}"
        limits = ", ".join(f"{name} at {v:g}" for name, v in (("warn", self.warn), ("fail", self.fail))
                           if v is not None) or "no thresholds"
        out = f"[{self.status.upper()}] {self.metric} = {value} ({limits})"
        return f"{out}: {self.detail}" if self.detail else out


@dataclass
class DriftReport:
    """Outcome of :func:`drift_report`: overall ``status``, every metric, and the checks behind the status."""

    status: str
    metrics: dict[str, float]
    checks: list[DriftCheck]
    reference_source: str = ""
    current_source: str = ""
    created_at: float = field(default_factory=time.time)
    #: Side-by-side distributions for the HTML report: {name: {"labels": [...], "reference": [...], "current": [...]}}.
    distributions: dict[str, dict[str, list]] = field(default_factory=dict)
    #: Items whose share of interactions moved most: [{"item_id", "reference", "current"}].
    top_item_changes: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Strict-JSON summary: status, metrics, checks, sources."""
        return finite_json({"status": self.status, "metrics": self.metrics,
                            "checks": [asdict(c) for c in self.checks],
                            "reference": self.reference_source, "current": self.current_source,
                            "created_at": self.created_at})

    def summary(self) -> str:
        """A headline, then one line per check."""
        counts = {s: sum(c.status == s for c in self.checks) for s in (*STATUSES, "skipped")}
        head = f"data drift {self.status.upper()}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        return "\n".join([head, *(f"  {c.describe()}" for c in self.checks)])

    def write(self, json_path: str | Path | None = None, html_path: str | Path | None = None) -> None:
        """Write the JSON summary and/or the HTML report, each through a temporary file and a rename."""
        if json_path:
            write_text_atomic(json_path, json.dumps(self.to_json(), indent=2, allow_nan=False))
        if html_path:
            write_text_atomic(html_path, render_html(self))


# --------------------------------------------------------------------------------------------
# Metrics


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two non-negative weight vectors over the same bins."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("both distributions need positive mass")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))


def _aligned_counts(ref: pd.Series, cur: pd.Series) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    a, b = ref.value_counts(), cur.value_counts()
    index = a.index.union(b.index)
    return index, a.reindex(index, fill_value=0).to_numpy(float), b.reindex(index, fill_value=0).to_numpy(float)


def _activity_bins(users: pd.Series) -> pd.Series:
    """Interactions per user → log2 bin label (1, 2-3, 4-7, …)."""
    counts = users.value_counts().to_numpy()
    return pd.Series(np.floor(np.log2(np.maximum(counts, 1))).astype(int))


def _bin_label(k: int) -> str:
    lo, hi = 2**k, 2 ** (k + 1) - 1
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _ratings(ds: Dataset) -> pd.Series | None:
    if "rating" not in ds.interactions.columns:
        return None
    r = pd.to_numeric(ds.interactions["rating"], errors="coerce").astype(float)
    r = r[np.isfinite(r)]
    return r if len(r) else None


def _rating_hist(ref: pd.Series, cur: pd.Series, bins: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    values = np.union1d(ref.unique(), cur.unique())
    if len(values) <= bins:  # discrete scale (stars): one bin per value
        a = ref.value_counts().reindex(values, fill_value=0).to_numpy(float)
        b = cur.value_counts().reindex(values, fill_value=0).to_numpy(float)
        return [f"{v:g}" for v in values], a, b
    edges = np.linspace(values.min(), values.max(), bins + 1)
    a, _ = np.histogram(ref, edges)
    b, _ = np.histogram(cur, edges)
    return [f"{lo:.3g}–{hi:.3g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)], a.astype(float), b.astype(float)


def _timestamps(ds: Dataset) -> np.ndarray:
    ts = timestamps_to_seconds(ds.interactions["timestamp"]).to_numpy(float)
    return ts[np.isfinite(ts)]


def _status(value: float | None, warn: float | None, fail: float | None) -> str:
    if value is None:
        return "skipped"
    if fail is not None and value >= fail:
        return "fail"
    if warn is not None and value >= warn:
        return "warn"
    return "pass"


def drift_report(reference: Dataset, current: Dataset, cfg: DriftConfig | None = None) -> DriftReport:
    """Compare ``current`` (the new data) with ``reference`` (the champion's training data).

    Pure: reads only the two datasets' interaction tables; thresholds come from ``cfg``.
    """
    cfg = cfg or DriftConfig()
    ri, ci = reference.interactions, current.interactions
    metrics: dict[str, float] = {}
    values: dict[str, float | None] = dict.fromkeys(CHECKED)
    details: dict[str, str] = {}
    dists: dict[str, dict[str, list]] = {}
    top: list[dict[str, Any]] = []
    for side, df in (("reference", ri), ("current", ci)):
        metrics[f"{side}_interactions"] = float(len(df))
        metrics[f"{side}_users"] = float(df["user_id"].nunique())
        metrics[f"{side}_items"] = float(df["item_id"].nunique())

    r_items, c_items = ri["item_id"].astype(str), ci["item_id"].astype(str)
    r_users, c_users = ri["user_id"].astype(str), ci["user_id"].astype(str)
    if len(ri) and len(ci):
        index, a, b = _aligned_counts(r_items, c_items)
        values["item_popularity_js"] = js_divergence(a, b)
        shift = b / b.sum() - a / a.sum()
        for k in np.argsort(-np.abs(shift), kind="stable")[:15]:
            top.append({"item_id": str(index[k]), "reference": float(a[k] / a.sum()), "current": float(b[k] / b.sum())})
        bins_idx, ha, hb = _aligned_counts(_activity_bins(r_users), _activity_bins(c_users))
        values["user_activity_js"] = js_divergence(ha, hb)
        dists["interactions per user"] = {"labels": [_bin_label(int(k)) for k in bins_idx],
                                          "reference": (ha / ha.sum()).tolist(), "current": (hb / hb.sum()).tolist()}
        for kind, ref_ids, cur_ids in (("user", r_users, c_users), ("item", r_items, c_items)):
            distinct = pd.Index(cur_ids.unique())
            new_ids = int((~distinct.isin(ref_ids.unique())).sum())
            values[f"unseen_{kind}_share"] = new_ids / len(distinct)
            details[f"unseen_{kind}_share"] = f"{new_ids} of {len(distinct)} {kind}s"
    else:
        for name in ("item_popularity_js", "user_activity_js", "unseen_user_share", "unseen_item_share"):
            details[name] = "no interactions on one side"

    rr, cr = _ratings(reference), _ratings(current)
    if rr is not None and cr is not None:
        labels, a, b = _rating_hist(rr, cr, cfg.rating_bins)
        values["rating_js"] = js_divergence(a, b)
        dists["ratings"] = {"labels": labels, "reference": (a / a.sum()).tolist(), "current": (b / b.sum()).tolist()}
        metrics["reference_rating_mean"], metrics["current_rating_mean"] = float(rr.mean()), float(cr.mean())
    else:
        details["rating_js"] = "no numeric ratings in " + " and ".join(
            s for s, r in (("the reference", rr), ("the new data", cr)) if r is None)

    rt, ct = _timestamps(reference), _timestamps(current)
    if len(rt) and len(ct):
        lo, hi = float(rt.min()), float(rt.max())
        values["time_outside_share"] = float(np.mean((ct < lo) | (ct > hi)))
        metrics.update(reference_time_min=lo, reference_time_max=hi, current_time_min=float(ct.min()),
                       current_time_max=float(ct.max()))
        details["time_outside_share"] = f"reference {_day(lo)}..{_day(hi)}, new {_day(ct.min())}..{_day(ct.max())}"
    else:
        details["time_outside_share"] = "no parseable timestamps on one side"

    checks = []
    for name in CHECKED:
        warn, fail = getattr(cfg, f"{name}_warn"), getattr(cfg, f"{name}_fail")
        value = values[name]
        if value is not None:
            metrics[name] = value
        checks.append(DriftCheck(name, value, warn, fail, _status(value, warn, fail), details.get(name, "")))
    ranks = {s: k for k, s in enumerate(STATUSES)}
    status = max((c.status for c in checks if c.status in ranks), key=ranks.__getitem__, default="pass")
    report = DriftReport(status=status, metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
                         checks=checks, reference_source=reference.source, current_source=current.source,
                         distributions=dists, top_item_changes=top)
    log.info("data drift %s: %s", status, ", ".join(f"{c.metric}={c.value:.3f}" for c in checks if c.value is not None))
    return report


def _day(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(seconds)))


# --------------------------------------------------------------------------------------------
# HTML (one self-contained file: inline CSS and SVG, no scripts, nothing loaded from the network)

_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skipped": "#57606a"}


def _bars(title: str, d: dict[str, list]) -> str:
    """Grouped horizontal bars, reference (grey) vs current (blue), as inline SVG."""
    labels, ref, cur = d["labels"], d["reference"], d["current"]
    top = max([*ref, *cur, 1e-12])
    row, width, left = 22, 360, 90
    h = row * len(labels) + 24
    parts = [f"<figure><figcaption>{html.escape(title)} (share; grey = reference, blue = new)</figcaption>",
             f"<svg xmlns='http://www.w3.org/2000/svg' width='{left + width + 110}' height='{h}' role='img'>"]
    for k, (lab, a, b) in enumerate(zip(labels, ref, cur, strict=True)):
        y = 4 + k * row
        parts.append(f"<text x='{left - 6}' y='{y + 14}' text-anchor='end' font-size='12'>{html.escape(str(lab))}</text>")
        parts.append(f"<rect x='{left}' y='{y + 2}' width='{width * a / top:.1f}' height='8' fill='#8c959f'/>")
        parts.append(f"<rect x='{left}' y='{y + 10}' width='{width * b / top:.1f}' height='8' fill='#0969da'/>")
        parts.append(f"<text x='{left + width * max(a, b) / top + 4:.1f}' y='{y + 16}' font-size='11'>"
                     f"{a:.1%} / {b:.1%}</text>")
    parts.append("</svg></figure>")
    return "".join(parts)


def render_html(report: DriftReport) -> str:
    """The report as one self-contained HTML page."""
    colour = _COLOURS[report.status]
    m = report.metrics
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Sora data drift</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #d0d7de;padding:4px 8px;"
        "font-size:13px;text-align:left}th{background:#f6f8fa}code{font-size:12px}"
        "figure{margin:1em 0}figcaption{font-size:13px;margin-bottom:4px}</style></head><body>",
        f"<h1>Data drift: <span style='color:{colour}'>{report.status.upper()}</span></h1>",
        f"<p>New data <code>{html.escape(report.current_source or '(in memory)')}</code> against the reference "
        f"<code>{html.escape(report.reference_source or '(in memory)')}</code> &middot; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report.created_at))}</p>",
        "<table><tr><th></th><th>reference</th><th>new</th></tr>",
    ]
    for label, key in (("interactions", "interactions"), ("users", "users"), ("items", "items")):
        parts.append(f"<tr><td>{label}</td><td>{int(m.get(f'reference_{key}', 0))}</td>"
                     f"<td>{int(m.get(f'current_{key}', 0))}</td></tr>")
    if "reference_time_min" in m:
        parts.append(f"<tr><td>time range</td><td>{_day(m['reference_time_min'])} .. {_day(m['reference_time_max'])}</td>"
                     f"<td>{_day(m['current_time_min'])} .. {_day(m['current_time_max'])}</td></tr>")
    if "reference_rating_mean" in m:
        parts.append(f"<tr><td>mean rating</td><td>{m['reference_rating_mean']:.3f}</td>"
                     f"<td>{m['current_rating_mean']:.3f}</td></tr>")
    parts.append("</table><h2>Checks</h2><table><tr><th>check</th><th>metric</th><th>value</th><th>warn at</th>"
                 "<th>fail at</th><th>status</th><th>detail</th></tr>")
    for c in report.checks:
        value = "n/a" if c.value is None else f"{c.value:.4f}"
        limit = lambda v: "&ndash;" if v is None else f"{v:g}"  # noqa: E731
        parts.append(f"<tr><td>{html.escape(_TITLES.get(c.metric, c.metric))}</td><td><code>{c.metric}</code></td>"
                     f"<td>{value}</td><td>{limit(c.warn)}</td><td>{limit(c.fail)}</td>"
                     f"<td style='color:{_COLOURS[c.status]};font-weight:600'>{c.status}</td>"
                     f"<td>{html.escape(c.detail)}</td></tr>")
    parts.append("</table><h2>Distributions</h2>")
    for title, d in report.distributions.items():
        parts.append(_bars(title, d))
    if report.top_item_changes:
        parts.append("<h2>Items whose share of interactions moved most</h2><table><tr><th>item_id</th>"
                     "<th>reference share</th><th>new share</th><th>change</th></tr>")
        for row in report.top_item_changes:
            parts.append(f"<tr><td><code>{html.escape(row['item_id'])}</code></td><td>{row['reference']:.3%}</td>"
                         f"<td>{row['current']:.3%}</td><td>{row['current'] - row['reference']:+.3%}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
