"""`talkcurate inspect`: what a run kept and dropped, from its manifest and index."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output import INDEX, MANIFEST
from stages.storage import OutputDir

SCORE_COLUMNS = ("duration_s", "num_faces", "sync_offset_ms", "sync_confidence")


def load(out: OutputDir) -> tuple[pa.Table, dict]:
    if not out.exists(MANIFEST):
        raise FileNotFoundError(f"{out.uri} has no {MANIFEST}: not a talkcurate output, or its run never finished")
    with out.open_read(MANIFEST) as f:
        table = pq.read_table(f)
    index = json.loads(out.read(INDEX)) if out.exists(INDEX) else {"shardlist": []}
    return table, index


def _distribution(values: np.ndarray) -> dict[str, float] | None:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    p = np.percentile(values, [0, 10, 50, 90, 100])
    return {"count": int(len(values)), "mean": float(values.mean()), "min": float(p[0]), "p10": float(p[1]),
            "p50": float(p[2]), "p90": float(p[3]), "max": float(p[4])}


def summarize(table: pa.Table, index: dict) -> dict[str, Any]:
    rows = table.to_pylist()
    kept = [r for r in rows if r["status"] == "kept"]
    rejected = [r for r in rows if r["status"] == "rejected"]
    per_shard = Counter(r["shard"] for r in kept)
    scores = {}
    for column in SCORE_COLUMNS:
        if column in table.column_names:
            values = np.array([r[column] for r in kept if r[column] is not None], dtype=float)
            scores[column] = _distribution(values)
    return {
        "sources": len({r["source"] for r in rows}),
        "sources_with_kept_clips": len({r["source"] for r in kept}),
        "candidate_clips": len(rows),
        "kept": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items(), key=lambda kv: -kv[1])),
        "hours_kept": sum(r["duration_s"] for r in kept) / 3600,
        "hours_rejected": sum(r["duration_s"] for r in rejected) / 3600,
        "shards": [
            {"url": e["url"], "nsamples": e["nsamples"], "filesize": e["filesize"], "manifest_rows": per_shard.get(e["url"], 0)}
            for e in index.get("shardlist", [])
        ],
        "scores": scores,
    }


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"sources            {summary['sources']:>8}   ({summary['sources_with_kept_clips']} with kept clips)",
        f"candidate clips    {summary['candidate_clips']:>8}",
        f"kept               {summary['kept']:>8}   {summary['hours_kept'] * 3600:10.1f} s  ({summary['hours_kept']:.3f} h)",
        f"rejected           {summary['rejected']:>8}   {summary['hours_rejected'] * 3600:10.1f} s",
    ]
    for reason, count in summary["rejected_by_reason"].items():
        lines.append(f"  {reason:<16} {count:>8}")
    lines.append("")
    lines.append(f"{'shard':<28} {'samples':>8} {'size':>10}")
    for shard in summary["shards"]:
        lines.append(f"{shard['url']:<28} {shard['nsamples']:>8} {_bytes(shard['filesize']):>10}")
    scores = {k: v for k, v in summary["scores"].items() if v}
    if scores:
        lines.append("")
        lines.append(f"{'kept clips':<18} {'count':>6} {'min':>9} {'p10':>9} {'p50':>9} {'p90':>9} {'max':>9}")
        for name, d in scores.items():
            lines.append(
                f"{name:<18} {d['count']:>6} {d['min']:>9.2f} {d['p10']:>9.2f} {d['p50']:>9.2f} {d['p90']:>9.2f} {d['max']:>9.2f}"
            )
    return "\n".join(lines)
