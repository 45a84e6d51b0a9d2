"""Training-curve plots (PNG and a self-contained HTML page for the Kubeflow UI)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def training_curves_png(history: list[dict[str, Any]], title: str = "Sora training") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o", ms=3)
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in ("valid_ndcg@10", "valid_recall@10", "valid_recall@20"):
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", ms=3, label=key.removeprefix("valid_"))
    ax2.set(xlabel="epoch", ylabel="valid metric", title="validation (full ranking)")
    if ax2.lines:  # no evaluated epoch (train.eval_every past the last one): nothing to label
        ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def training_curves_html(history: list[dict[str, Any]], title: str = "Sora training") -> str:
    png = base64.b64encode(training_curves_png(history, title)).decode()
    rows = "".join(
        "<tr>" + "".join(f"<td>{h.get(k, ''):.4f}</td>" if isinstance(h.get(k), float) else f"<td>{h.get(k, '')}</td>"
                         for k in ("epoch", "loss", "valid_ndcg@10", "valid_recall@10", "epoch_seconds")) + "</tr>"
        for h in history)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif'><h2>{html.escape(title)}</h2>"
            f"<img alt='training curves' src='data:image/png;base64,{png}'>"
            "<table border=1 cellpadding=3 style='border-collapse:collapse;font-size:12px'><tr><th>epoch</th>"
            f"<th>loss</th><th>valid ndcg@10</th><th>valid recall@10</th><th>seconds</th></tr>{rows}</table></body></html>")
