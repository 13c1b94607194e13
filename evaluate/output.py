"""What `talkcurate evaluate` writes: DIR/NAME.json per video, DIR/summary.json, a table on stdout
and DIR/index.html, a self-contained page (inline SVG, no network) with each video's player and
its curves along time: lip-sync confidence per window and identity similarity per sample."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 560, 150, 34


def file_names(reports: list[dict]) -> list[str]:
    """NAME.json for each report, NAME_2.json, ... where two videos share a name."""
    seen: dict[str, int] = {}
    names = []
    for report in reports:
        count = seen[report["name"]] = seen.get(report["name"], 0) + 1
        names.append(f"{report['name']}.json" if count == 1 else f"{report['name']}_{count}.json")
    return names


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_COLUMNS = (
    "video",
    "s",
    "offset ms",
    "sync conf",
    "conf@0",
    "sync",
    "windows in sync",
    "id mean",
    "id min",
    "face",
    "jitter",
    "mouth std",
    "error",
)


def table_row(report: dict) -> list[str]:
    sync, identity, face = report["sync"], report["identity"], report["face"]
    whole = sync["whole"] if sync else {}
    windows = sync["windows"] if sync else []
    in_sync = sum(w["verdict"] == "in_sync" for w in windows)
    error = report["error"]
    return [
        report["name"],
        _number(report.get("duration_s"), 1),
        _number(whole.get("offset_ms"), 0),
        _number(whole.get("confidence")),
        _number(whole.get("confidence_at_zero")),
        whole.get("verdict", "-"),
        f"{in_sync}/{len(windows)}" if windows else "-",
        _number(identity and identity["mean"], 3),
        _number(identity and identity["min"], 3),
        _number(face and face["found_share"]),
        _number(face and face["jitter"], 4),
        _number(face and face["mouth"]["std"], 3),
        f"{error['reason']}: {error['detail']}" if error else "",
    ]


def summary_table(reports: list[dict]) -> str:
    rows = [list(TABLE_COLUMNS), *(table_row(report) for report in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows
    ).rstrip()


def pooled_line(pooled: dict) -> str:
    """One line on the lip sync of all videos taken together."""
    if not pooled["videos"]:
        return f"lip sync of all videos pooled: {pooled['status']}"
    return (
        f"lip sync of all {pooled['videos']} videos pooled: offset {pooled['offset_ms']:+.0f} ms, confidence "
        f"{pooled['confidence']:.2f}, at offset 0 {pooled['confidence_at_zero']:.2f}, margin {pooled['margin']:.3f}: "
        f"{pooled['verdict']}"
    )


def svg_chart(title: str, points: list[tuple[float, float]], duration: float, low: float, high: float, line=None):
    """A line chart of (time s, value) over [0, duration] s and [low, high], with an optional
    dashed horizontal line (a threshold)."""
    width, height, pad = CHART_WIDTH, CHART_HEIGHT, CHART_PAD
    span = max(high - low, 1e-9)

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * t / max(duration, 1e-9)

    def y(v: float) -> float:
        return height - pad + (2 * pad - height) * (min(max(v, low), high) - low) / span

    path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="{pad}" y="14" font-size="12">{html.escape(title)}</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>',
        f'<text x="2" y="{y(high) + 4:.1f}" font-size="10">{high:g}</text>',
        f'<text x="2" y="{y(low) + 4:.1f}" font-size="10">{low:g}</text>',
        f'<text x="{width - pad}" y="{height - pad + 14}" font-size="10" text-anchor="end">{duration:.1f} s</text>',
    ]
    if line is not None:
        parts.append(
            f'<line x1="{pad}" y1="{y(line):.1f}" x2="{width - pad}" y2="{y(line):.1f}" stroke="#c33" '
            'stroke-dasharray="4 3"/>'
        )
    if points:
        parts.append(f'<polyline fill="none" stroke="#26a" stroke-width="2" points="{path}"/>')
        parts.extend(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="#26a"/>' for t, v in points)
    else:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" font-size="12" text-anchor="middle">not measured</text>')
    return "".join(parts) + "</svg>"


def _charts(report: dict, min_confidence: float) -> str:
    duration = report.get("duration_s") or 0.0
    sync, identity = report["sync"], report["identity"]
    windows = sync["windows"] if sync else []
    confidence = [((w["start_s"] + w["end_s"]) / 2, w["confidence_at_zero"]) for w in windows]
    high = max([min_confidence * 2, *(v for _, v in confidence)])
    samples = [(s["t"], s["similarity"]) for s in identity["samples"]] if identity else []
    low = min([0.8, *(v for _, v in samples)])
    return svg_chart(
        "lip-sync confidence at offset 0, per window (window centre; dashed: the sync stage's threshold)",
        confidence,
        duration,
        min(0.0, *(v for _, v in confidence)) if confidence else 0.0,
        high,
        line=min_confidence,
    ) + svg_chart("identity: cosine similarity to the reference face", samples, duration, low, 1.0)


def _player(report: dict, folder: Path) -> str:
    source = html.escape(os.path.relpath(os.path.abspath(report["video"]), folder))
    audio = (report.get("audio") or {}).get("source", "")
    if not audio.startswith("--audio "):
        return f'<video src="{source}" controls width="320"></video>'
    speech = html.escape(os.path.relpath(os.path.abspath(audio.removeprefix("--audio ")), folder))
    # The evaluated sound is the --audio file: the player's picture runs muted beside it, kept together.
    return (
        f'<video src="{source}" controls muted width="320" data-speech="{speech}"></video>'
        f'<audio src="{speech}" preload="auto"></audio>'
    )


_SCRIPT = """<script>
for (const video of document.querySelectorAll("video[data-speech]")) {
  const audio = video.nextElementSibling;
  video.addEventListener("play", () => { audio.currentTime = video.currentTime; audio.play(); });
  video.addEventListener("pause", () => audio.pause());
  video.addEventListener("seeked", () => { audio.currentTime = video.currentTime; });
}
</script>"""


def html_page(reports: list[dict], names: list[str], folder: Path, summary: dict, min_confidence: float) -> str:
    sections = []
    for report, name in zip(reports, names):
        error = report["error"]
        note = f"<p class=error>{html.escape(error['reason'])}: {html.escape(error['detail'])}</p>" if error else ""
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in table_row(report)[1:-1])
        sections.append(
            f"<section><h2>{html.escape(report['name'])}</h2>{note}"
            f"<table><tr>{''.join(f'<th>{c}</th>' for c in TABLE_COLUMNS[1:-1])}</tr><tr>{cells}</tr></table>"
            f"<div class=row>{_player(report, folder)}<div>{_charts(report, min_confidence)}</div></div>"
            f'<p><a href="{html.escape(name)}">{html.escape(name)}</a></p></section>'
        )
    paper = "".join(
        f"<li>{key.upper()}: {_number(summary[key])} ({html.escape(summary[key + '_status'])})</li>"
        for key in ("fid", "fvd")
    )
    paper += f"<li>{html.escape(pooled_line(summary['sync_pooled']))}</li>"
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>talkcurate evaluate</title><style>"
        "body{font-family:sans-serif;margin:1em 2em}.row{display:flex;gap:1em;align-items:flex-start}"
        "td,th{padding:2px 6px;font-size:13px;text-align:right}.error{color:#b00}section{margin-bottom:2em}"
        f"</style></head><body><h1>talkcurate evaluate: {len(reports)} videos</h1><ul>{paper}</ul>"
        f"{''.join(sections)}{_SCRIPT}</body></html>\n"
    )
