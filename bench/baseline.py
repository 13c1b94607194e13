"""The staged baseline (../shared/tools/staged_baseline.py: one pass per stage over intermediate
files, a process pool per stage, LatentSync's structure) on the same inputs, in this environment;
where each clip it keeps lies in its input, and how talkcurate's manifest rows cover those clips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGED_BASELINE = ROOT.parent / "shared" / "tools" / "staged_baseline.py"
FPS = 25  # the baseline resamples every input to 25 fps


def run_staged_baseline(input_dir: str, out: Path, workers: int) -> dict:
    """Wall time of one staged-baseline run over `input_dir`, with its own per-stage times and counts."""
    if not STAGED_BASELINE.is_file():
        return {"error": f"{STAGED_BASELINE} not found"}
    shutil.rmtree(out, ignore_errors=True)
    # Its stages call the `scenedetect` command, which lives next to this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(STAGED_BASELINE), input_dir, str(out), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode:
        tail = done.stdout.decode(errors="replace").strip().splitlines()[-5:]
        return {"wall_s": wall, "error": f"exit {done.returncode}: " + " | ".join(tail)}
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": wall,
        "stage_wall_s": summary["stage_wall_s"],
        "clips_after_segment": summary["clips_after_segment"],
        "clips_kept": summary["clips_kept"],
        "kept_seconds": summary["kept_seconds"],
        "children_cpu_s": summary["children_cpu_s"],
        "kept_spans": kept_spans(out, input_dir),
    }


def _frames(path: Path) -> int:
    """Frames of a 25 fps clip the baseline wrote (from its container's header, else its duration)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return stream.frames
        seconds = float(stream.duration * stream.time_base) if stream.duration else container.duration / av.time_base
        return round(seconds * FPS)


def kept_spans(out: Path, input_dir: str) -> list[dict]:
    """Where each clip the staged baseline kept lies in its input: source (named relative to
    `input_dir`, as talkcurate's manifest names it), clip, start_s and end_s. The baseline names a clip
    `<input id>_shot_<shot>_<segment>` (scenedetect's split of the 25 fps input, then the segment
    muxer's) and records no times, so a clip starts after the frames of its input's earlier shots and
    of its shot's earlier segments."""
    sources = {
        record["id"]: os.path.relpath(record["input"], os.path.abspath(input_dir)).replace(os.sep, "/")
        for record in json.loads((out / "0_checked.json").read_text())
    }
    shot_start: dict[str, int] = {}  # shot file name -> its first frame in the input
    for vid in sources:
        frame = 0
        for shot in sorted((out / "2_shots").glob(f"{vid}_shot_*.mp4")):
            shot_start[shot.stem] = frame
            frame += _frames(shot)
    spans = []
    for clip in sorted(p.stem for p in (out / "5_synced").glob("*.mp4")):
        shot, _, segment = clip.rpartition("_")
        start = shot_start[shot]
        for earlier in range(int(segment)):
            start += _frames(out / "3_segmented" / f"{shot}_{earlier:03d}.mp4")
        end = start + _frames(out / "3_segmented" / f"{clip}.mp4")
        source = sources[shot.rsplit("_shot_", 1)[0]]
        spans.append({"source": source, "clip": clip, "start_s": start / FPS, "end_s": end / FPS})
    return spans


def baseline_coverage(spans: list[dict], rows: list[dict], min_overlap_s: float = 0.04) -> dict:
    """How talkcurate's manifest rows (source, start_s, end_s, status, reason) cover the clips the
    staged baseline keeps (`kept_spans`): a baseline clip is kept when a kept row of its source
    overlaps it by more than `min_overlap_s` (a frame: spans that only touch do not count), else
    rejected for the reason of the rejected row that overlaps it most, else not covered."""
    by_source = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row)
    kept, rejected, not_covered = 0, Counter(), []
    for span in spans:
        overlapping = [
            (overlap, row)
            for row in by_source[span["source"]]
            if (overlap := min(span["end_s"], row["end_s"]) - max(span["start_s"], row["start_s"])) > min_overlap_s
        ]
        reasons = [
            (overlap, row["reason"]) for overlap, row in overlapping if row["status"] != "kept" and row["reason"]
        ]
        if any(row["status"] == "kept" for _, row in overlapping):
            kept += 1
        elif reasons:
            rejected[max(reasons)[1]] += 1
        else:
            not_covered.append(span)
    return {
        "baseline_kept": len(spans),
        "kept": kept,
        "rejected_by_reason": dict(sorted(rejected.items())),
        "not_covered": not_covered,
    }
