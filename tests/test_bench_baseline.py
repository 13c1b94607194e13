"""bench/baseline.py's coverage check: where the staged baseline's kept clips lie in their inputs
(from the files it writes, here real clips cut from a GRID video), and how talkcurate's manifest
rows cover them (hand-made spans)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from media import GRID, ffmpeg

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from baseline import baseline_coverage, kept_spans  # noqa: E402


def span(source: str, start_s: float, end_s: float, clip: str = "c") -> dict:
    return {"source": source, "clip": clip, "start_s": start_s, "end_s": end_s}


def row(source: str, start_s: float, end_s: float, reason: str | None = None) -> dict:
    status = "kept" if reason is None else "rejected"
    return {"source": source, "start_s": start_s, "end_s": end_s, "status": status, "reason": reason}


def test_coverage_counts_kept_rejected_and_uncovered_clips():
    rows = [
        row("a.mp4", 0.0, 4.0),
        row("a.mp4", 4.0, 7.0, "face_cut_off"),
        row("a.mp4", 7.0, 12.0, "no_face"),
        row("b/c.mp4", 0.0, 3.0, "too_short"),
        row("b/c.mp4", 3.0, 9.0),
    ]
    spans = [
        span("a.mp4", 0.0, 5.0, "kept beside a rejected row"),
        span("a.mp4", 5.0, 10.0, "mostly no_face"),
        span("b/c.mp4", 0.0, 2.5, "too_short"),
        span("b/c.mp4", 9.0, 11.0, "after the last row"),
        span("a.mp4", 11.98, 15.0, "one frame's overlap does not count"),
        span("d.mp4", 0.0, 5.0, "a source talkcurate has no row for"),
    ]
    coverage = baseline_coverage(spans, rows)
    assert coverage["baseline_kept"] == 6
    assert coverage["kept"] == 1
    assert coverage["rejected_by_reason"] == {"no_face": 1, "too_short": 1}
    assert [s["clip"] for s in coverage["not_covered"]] == [
        "after the last row",
        "one frame's overlap does not count",
        "a source talkcurate has no row for",
    ]


def test_a_rejected_row_without_a_reason_does_not_cover():
    coverage = baseline_coverage([span("a.mp4", 0.0, 5.0)], [row("a.mp4", 0.0, 5.0, "")])
    assert coverage["kept"] == 0 and coverage["rejected_by_reason"] == {}
    assert len(coverage["not_covered"]) == 1


def test_kept_spans_add_up_earlier_shots_and_segments(tmp_path):
    """The baseline's layout: input ids in 0_checked.json, shots, their segments, kept clips in
    5_synced. A clip starts after its input's earlier shots and its shot's earlier segments."""
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    out = tmp_path / "out"
    for folder in ("2_shots", "3_segmented", "5_synced"):
        (out / folder).mkdir(parents=True)
    records = [
        {"input": str(inputs / "sub" / "talk.mp4"), "id": "0000_talk", "ok": True},
        {"input": str(inputs / "other.mp4"), "id": "0001_other", "ok": True},
    ]
    (out / "0_checked.json").write_text(json.dumps(records))

    def clip(path: Path, frames: int) -> None:
        ffmpeg("-i", GRID[0], "-r", "25", "-frames:v", str(frames), "-an", "-c:v", "libx264", path)

    clip(out / "2_shots" / "0000_talk_shot_001.mp4", 50)
    clip(out / "2_shots" / "0000_talk_shot_002.mp4", 60)
    clip(out / "3_segmented" / "0000_talk_shot_002_000.mp4", 40)
    clip(out / "3_segmented" / "0000_talk_shot_002_001.mp4", 20)
    (out / "5_synced" / "0000_talk_shot_002_001.mp4").write_bytes(b"")  # only its name is read
    clip(out / "2_shots" / "0001_other_shot_001.mp4", 30)
    clip(out / "3_segmented" / "0001_other_shot_001_000.mp4", 30)
    (out / "5_synced" / "0001_other_shot_001_000.mp4").write_bytes(b"")

    spans = kept_spans(out, str(inputs))
    assert spans == [
        {"source": "sub/talk.mp4", "clip": "0000_talk_shot_002_001", "start_s": 3.6, "end_s": pytest.approx(4.4)},
        {"source": "other.mp4", "clip": "0001_other_shot_001_000", "start_s": 0.0, "end_s": 1.2},
    ]
