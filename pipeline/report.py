"""The run's report: one self-contained HTML page (plots embedded as PNG) a person can open."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

REPORT = "report.html"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _funnel(summary: dict[str, Any]) -> str:
    labels = ["candidate clips", "kept"] + [f"rejected: {r}" for r in summary["rejected_by_reason"]]
    counts = [summary["candidate_clips"], summary["kept"]] + list(summary["rejected_by_reason"].values())
    colours = ["#777777", "#2a9d8f"] + ["#e76f51"] * len(summary["rejected_by_reason"])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1))
    ax.barh(labels[::-1], counts[::-1], color=colours[::-1])
    for y, count in enumerate(counts[::-1]):
        ax.text(count, y, f" {count}", va="center")
    ax.set_xlabel("clips")
    ax.set_title("Funnel")
    return _png(fig)


def _histogram(values: np.ndarray, title: str, xlabel: str) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    if len(values):
        ax.hist(values, bins=min(40, max(5, len(values) // 2)), color="#264653")
    else:
        ax.text(0.5, 0.5, "no kept clips", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    return _png(fig)


def render_report(
    table: pa.Table, summary: dict[str, Any], stage_stats: dict[str, dict] | None, skipped: list[dict] = ()
) -> str:
    kept = table.filter(pa.compute.equal(table["status"], "kept"))
    images = [
        ("Funnel", _funnel(summary)),
        ("Clip length", _histogram(np.array(kept["duration_s"].to_pylist(), float), "Kept clip length", "seconds")),
    ]
    for column in ("sync_confidence", "sync_offset_ms", "num_faces"):
        values = np.array([v for v in kept[column].to_pylist() if v is not None], float)
        if len(values):
            images.append((column, _histogram(values, column, column)))
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(str(r))}</td><td>{c}</td></tr>" for r, c in summary["rejected_by_reason"].items())
    stage_rows = ""
    for name, s in (stage_stats or {}).items():
        speed = s["video_s"] / s["wall_s"] if s["wall_s"] > 0 else float("nan")
        stage_rows += (
            f"<tr><td>{esc(name)}</td><td>{s['items']}</td><td>{s['wall_s']:.1f}</td>"
            f"<td>{s['cpu_s']:.1f}</td><td>{speed:.1f}</td></tr>"
        )
    skipped_rows = "".join(f"<tr><td>{esc(s['path'])}</td><td>{esc(s['reason'])}</td></tr>" for s in skipped)
    skipped_table = (
        "<h2>Files the input scan skipped (last run)</h2>"
        f"<table><tr><th>file</th><th>why</th></tr>{skipped_rows}</table>"
        if skipped
        else ""
    )
    plots = "".join(
        f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,{data}">' for title, data in images
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>talkcurate report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;text-align:left}}</style>
</head><body>
<h1>talkcurate report</h1>
<p>{summary["sources"]} sources, {summary["candidate_clips"]} candidate clips,
<b>{summary["kept"]} kept</b> ({summary["hours_kept"] * 3600:.1f} s of video),
{summary["rejected"]} rejected, in {len(summary["shards"])} shards.</p>
<h2>Rejected by reason</h2><table><tr><th>reason</th><th>clips</th></tr>{rows}</table>
{plots}
<h2>Stages (last run)</h2><table><tr><th>stage</th><th>items</th><th>wall s</th><th>CPU s</th>
<th>video s per wall s</th></tr>{stage_rows}</table>
{skipped_table}
</body></html>
"""
