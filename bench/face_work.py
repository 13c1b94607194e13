"""The face stage's CPU per clip with its early stop and with the full pass it replaces.

    python bench/face_work.py INPUT... [--set KEY=VALUE ...] [--out RESULTS.json]

INPUT: files or folders (searched as `talkcurate run` searches them). Each source goes through
probe, chunk, normalize and scene cut once, in this process with a Ray worker's thread settings
(OMP_NUM_THREADS=1); every clip that reaches the face stage then goes through it twice, back to
back: the full pass (`face.early_stop = false`) and the configured stage (early stop on by
default). Timed per clip: the stage's CPU seconds, and within them the model calls (mediapipe and
RetinaFace detection, the face mesh, the identity model) and the frames each saw. The two passes
must decide every clip alike (status, reason, rejecting stage); the script stops if they do not.
Prints CPU per clip by outcome and writes every number to JSON (default
bench/results/face_work-<timestamp>.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the native libraries load, as in a Ray worker

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compute_floor import CallTimer  # noqa: E402
from results_file import write_results  # noqa: E402

from pipeline.config import RunConfig  # noqa: E402
from pipeline.inputs import discover  # noqa: E402
from pipeline.runner import ChainRunner  # noqa: E402
from schemas.records import CandidateClip, Rejected, Status  # noqa: E402
from stages.face import FaceStage  # noqa: E402

PASSES = ("full", "early stop")
PARTS = {  # timed part: (the tracker's attribute holding the method or None, method, items of one call)
    "mediapipe": ("_mediapipe", "detect", lambda frames: len(frames)),
    "retinaface": ("_retinaface", "detect", lambda frames: len(frames)),
    "mesh": (None, "landmarks", lambda frames, boxes: int(np.isfinite(boxes[:, 0]).sum())),  # boxed frames
}


def timed_stage(stage: FaceStage, timer: CallTimer) -> FaceStage:
    """`stage`, set up, with its model calls timed into `timer` (the stage's own objects, wrapped)."""
    stage.setup()
    tracker = stage._tracker
    for part, (holder, method, count) in PARTS.items():
        owner = tracker if holder is None else getattr(tracker, holder)
        setattr(owner, method, _timed_call(getattr(owner, method), timer, part, count))
    stage._identity.embed = _timed_call(stage._identity.embed, timer, "identity", lambda faces: len(faces))
    return stage


def _timed_call(call, timer: CallTimer, part: str, count):
    def timed(*args):
        with timer(part, count(*args), "frames"):
            return call(*args)

    return timed


def face_rows(stage: FaceStage, clip: CandidateClip) -> tuple[list[CandidateClip], float]:
    """The stage's rows for `clip` (parts included) and the CPU seconds it took."""
    started = time.process_time()
    result = stage.process(clip)
    results = list(result) if isinstance(result, Iterator) else [result]
    spent = time.process_time() - started
    return [r.row(clip, stage.name) if isinstance(r, Rejected) else r for r in results], spent


def candidate_clips(config: RunConfig, uri_source) -> Iterator[CandidateClip]:
    """The clips of one source that reach the face stage, with their analysis frames."""
    ingest = ChainRunner([config.stages[name] for name in ("probe", "chunk")])
    clips = ChainRunner([config.stages[name] for name in ("normalize", "scene_cut")], keep_frames=True)
    for chunk in ingest.run(uri_source):
        for item in clips.run(chunk):
            if isinstance(item, CandidateClip) and item.status is Status.PENDING:
                yield item


def measure(inputs: list[str], overrides: list[str]) -> dict:
    config = RunConfig.load(None, overrides)
    configured: FaceStage = config.stages[FaceStage.name]
    timers = {name: CallTimer() for name in PASSES}
    stages = {
        "full": timed_stage(dataclasses.replace(configured, early_stop=False), timers["full"]),
        "early stop": timed_stage(configured, timers["early stop"]),
    }
    clips = []
    for source in discover(inputs).sources:
        for clip in candidate_clips(config, source):
            record = {"source": source.uri, "start_frame": clip.start_frame, "num_frames": clip.num_frames}
            decisions = {}
            for name in PASSES:
                before = {part: dict(values) for part, values in timers[name].parts.items()}
                rows, cpu = face_rows(stages[name], clip)
                decisions[name] = [(r.start_frame, r.end_frame, r.status, r.reason, r.rejected_by) for r in rows]
                record[name] = {
                    "cpu_s": cpu,
                    "detail": [r.reason_detail for r in rows],
                    "parts": {
                        part: {key: values[key] - before.get(part, {}).get(key, 0) for key in ("items", "cpu_s")}
                        for part, values in timers[name].parts.items()
                    },
                }
            if decisions["full"] != decisions["early stop"]:
                raise SystemExit(f"the passes decided {source.uri} differently: {decisions}")
            record["outcome"] = "+".join(sorted({r[3] or "kept" for r in decisions["full"]}))
            clips.append(record)
            print(
                f"  {Path(source.uri).name[:48]:<48} {clip.num_frames:>4} frames  {record['outcome']:<16}"
                f" {record['full']['cpu_s']:6.2f} -> {record['early stop']['cpu_s']:6.2f} CPU s",
                flush=True,
            )
    return {"inputs": inputs, "overrides": overrides, "clips": clips, "summary": summarize(clips)}


def summarize(clips: list[dict]) -> dict:
    """Per outcome and for all clips: clips, frames, face CPU per clip and per part for each pass."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for clip in clips:
        groups[clip["outcome"]].append(clip)
        groups["all"].append(clip)
    summary = {}
    for outcome, members in groups.items():
        row = {"clips": len(members), "frames": sum(c["num_frames"] for c in members)}
        for name in PASSES:
            parts = defaultdict(float)
            for clip in members:
                for part, values in clip[name]["parts"].items():
                    parts[part] += values["cpu_s"]
                    parts[f"{part} items"] += values["items"]
            row[name] = {
                "cpu_s": sum(c[name]["cpu_s"] for c in members),
                "cpu_s_per_clip": sum(c[name]["cpu_s"] for c in members) / len(members),
                "parts": dict(parts),
            }
        summary[outcome] = row
    return summary


def print_table(summary: dict) -> None:
    print(
        f"\n{'outcome':<18} {'clips':>5} {'frames':>6}  {'CPU s/clip full':>15} {'early stop':>10} {'saved':>6}"
        f"  {'detected frames full':>20} {'early stop':>10}  {'meshed frames':>13}"
    )
    for outcome, row in sorted(summary.items(), key=lambda item: (item[0] == "all", item[0])):
        full, early = row["full"], row["early stop"]
        saved = 1 - early["cpu_s"] / full["cpu_s"] if full["cpu_s"] else 0.0
        print(
            f"{outcome:<18} {row['clips']:>5} {row['frames']:>6}  {full['cpu_s_per_clip']:>15.3f}"
            f" {early['cpu_s_per_clip']:>10.3f} {saved:>6.0%}  {full['parts'].get('mediapipe items', 0):>20.0f}"
            f" {early['parts'].get('mediapipe items', 0):>10.0f}  {early['parts'].get('mesh items', 0):>13.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="files or folders")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a configuration override")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/face_work-<timestamp>.json)")
    args = parser.parse_args()
    results = measure(args.inputs, args.set)
    print_table(results["summary"])
    write_results(results, "face_work", args.out)


if __name__ == "__main__":
    main()
