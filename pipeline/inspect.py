"""`talkcurate inspect`: what a run kept and dropped, from its manifest and index; with a query,
the same for the rows a `--where` predicate selects, grouped by columns, histograms of numeric
columns and the rows themselves."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.storage import OutputDir
from pipeline.query import columns_of, select, unknown_column, value_kind
from schemas.manifest import INDEX, MANIFEST

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
    return {
        "count": int(len(values)),
        "mean": float(values.mean()),
        "min": float(p[0]),
        "p10": float(p[1]),
        "p50": float(p[2]),
        "p90": float(p[3]),
        "max": float(p[4]),
    }


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
        "sources": len({r["source_id"] for r in rows}),  # names may repeat (inputs.source_paths)
        "sources_with_kept_clips": len({r["source_id"] for r in kept}),
        "candidate_clips": len(rows),
        "kept": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items(), key=lambda kv: -kv[1])),
        "hours_kept": sum(r["duration_s"] for r in kept) / 3600,
        "hours_rejected": sum(r["duration_s"] for r in rejected) / 3600,
        "shards": [
            {
                "url": e["url"],
                "nsamples": e["nsamples"],
                "filesize": e["filesize"],
                "manifest_rows": per_shard.get(e["url"], 0),
            }
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
        f"kept               {summary['kept']:>8}   {summary['hours_kept'] * 3600:10.1f} s  "
        f"({summary['hours_kept']:.3f} h)",
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
                f"{name:<18} {d['count']:>6} {d['min']:>9.2f} {d['p10']:>9.2f} {d['p50']:>9.2f} {d['p90']:>9.2f} "
                f"{d['max']:>9.2f}"
            )
    return "\n".join(lines)


# -- queries: `inspect --where/--by/--hist/--rows` -------------------------------------------------

GROUP_KINDS = ("number", "string", "bool")
DEFAULT_ROW_COLUMNS = ("key", "status", "reason", "shard", "duration_s")


def _check_columns(table: pa.Table, names: Sequence[str], option: str, kinds: Sequence[str] | None = None) -> None:
    for name in names:
        if name not in table.column_names:
            raise ValueError(f"{option}: {unknown_column(name, table.schema)}")
        kind = value_kind(table.schema.field(name).type)
        if kinds is not None and kind not in kinds:
            usable = [f.name for f in table.schema if value_kind(f.type) in kinds]
            raise ValueError(f"{option}: {name!r} is a {kind} column; use one of: {', '.join(usable)}")


def groups(table: pa.Table, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows, kept, rejected and kept seconds per distinct value of `columns` (null is a value),
    largest group first."""
    _check_columns(table, columns, "--by", GROUP_KINDS)
    kept = pc.equal(table["status"], "kept")
    counted = table.select(list(columns)).append_column("_kept", pc.cast(kept, pa.int64()))
    counted = counted.append_column("_kept_s", pc.if_else(kept, table["duration_s"], 0.0))
    totals = counted.group_by(list(columns), use_threads=False).aggregate(
        [("_kept", "count"), ("_kept", "sum"), ("_kept_s", "sum")]
    )
    result = [
        {
            **{c: row[c] for c in columns},
            "rows": row["_kept_count"],
            "kept": row["_kept_sum"],
            "rejected": row["_kept_count"] - row["_kept_sum"],
            "kept_s": row["_kept_s_sum"],
        }
        for row in totals.to_pylist()
    ]
    return sorted(result, key=lambda g: (-g["rows"], *((g[c] is None, str(g[c])) for c in columns)))


def histogram(table: pa.Table, column: str, bins: int) -> dict[str, Any]:
    """Equal-width bins over the column's values (nulls and NaN counted apart)."""
    _check_columns(table, [column], "--hist", ("number",))
    if bins < 1:
        raise ValueError(f"--bins must be at least 1, not {bins}")
    values = table[column].drop_null().to_numpy(zero_copy_only=False).astype(float)
    finite = values[np.isfinite(values)]
    result: dict[str, Any] = {
        "column": column,
        "count": int(len(finite)),
        "missing": table.num_rows - int(len(finite)),
        "bins": [],
    }
    if len(finite):
        counts, edges = np.histogram(finite, bins=bins)
        result.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()))
        result["bins"] = [
            {"low": float(lo), "high": float(hi), "count": int(n)} for lo, hi, n in zip(edges[:-1], edges[1:], counts)
        ]
    return result


def inspection(
    table: pa.Table,
    index: dict,
    where: str | None = None,
    by: Sequence[str] = (),
    hist: Sequence[str] = (),
    bins: int = 20,
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The summary of the rows `where` selects, with the asked-for groups, histograms and rows
    (`columns`; None: no rows, empty: the default columns and those the predicate names)."""
    selected = select(table, where)
    report = summarize(selected, index)
    if where is not None:
        report["where"] = where
        report["selected_rows"] = selected.num_rows
    if by:
        report["groups"] = {"by": list(by), "groups": groups(selected, by)}
    if hist:
        report["histograms"] = [histogram(selected, column, bins) for column in hist]
    if columns is not None:
        columns = list(columns) or list(
            dict.fromkeys([*DEFAULT_ROW_COLUMNS, *(columns_of(where, table.schema) if where else [])])
        )
        _check_columns(table, columns, "--columns")
        report["rows"] = selected.select(columns).to_pylist()
    return report


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 48 else text[:45] + "..."


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Aligned columns; numbers to the right."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    numeric = [
        bool(rows) and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) or r[i] is None for r in rows)
        for i in range(len(header))
    ]
    return [
        "  ".join(text.rjust(w) if right else text.ljust(w) for text, w, right in zip(line, widths, numeric)).rstrip()
        for line in [list(header), *cells]
    ]


def _render_histogram(h: dict[str, Any], width: int = 40) -> list[str]:
    lines = [f"{h['column']}: {h['count']} values, {h['missing']} missing"]
    if not h["bins"]:
        return lines
    lines[0] += f", mean {h['mean']:.4g}"
    peak = max(b["count"] for b in h["bins"])
    edges = [(f"{b['low']:.4g}", f"{b['high']:.4g}") for b in h["bins"]]
    lo_w, hi_w, n_w = max(len(lo) for lo, _ in edges), max(len(hi) for _, hi in edges), len(str(peak))
    for (lo, hi), b in zip(edges, h["bins"]):
        bar = "#" * round(width * b["count"] / peak) if peak else ""
        lines.append(f"  {lo:>{lo_w}} - {hi:<{hi_w}}  {b['count']:>{n_w}}  {bar}".rstrip())
    return lines


def render_inspection(report: dict[str, Any]) -> str:
    """`render` of the summary, then the selection, groups, histograms and rows a query asked for."""
    lines = [render(report)]
    if "where" in report:
        lines += ["", f"where {report['where']}: {report['selected_rows']} rows"]
    if "groups" in report:
        by = report["groups"]["by"]
        rows = [
            [*(g[c] for c in by), g["rows"], g["kept"], g["rejected"], round(g["kept_s"], 1)]
            for g in report["groups"]["groups"]
        ]
        lines += ["", *_table([*by, "rows", "kept", "rejected", "kept_s"], rows)]
    for h in report.get("histograms", []):
        lines += ["", *_render_histogram(h)]
    if "rows" in report:
        lines += ["", render_rows(report["rows"])]
    return "\n".join(lines)


def render_rows(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned columns, `(no rows)` when there are none."""
    return "\n".join(_table(list(rows[0]), [list(r.values()) for r in rows])) if rows else "(no rows)"
