"""Accuracy of the embedded lip-sync estimator on real media with known audio shifts.

    python bench/sync_accuracy.py [INPUT ...] [--shifts -320,-200,...] [--out RESULTS.json]

For each input (default: the demo GRID clips and the LatentSync portrait) it runs probe .. face on
the input once, then for every shift writes the input with its sound moved that many ms later
(ffmpeg, PCM in Matroska) and runs probe .. scene cut on it for the shifted audio context. Each
shift is measured against the unshifted baseline; the audio is then corrected by the estimate and
measured again (the residual should be near zero). The same faces are also scored with audio that
is not theirs (another speaker, flite's voice, music). Prints tables, writes JSON (default
bench/results/sync-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import RESULTS  # noqa: E402  (bench/bench.py: this folder is first on sys.path)
from long_inputs import test_media  # noqa: E402
from pipeline.runner import run_in_process  # noqa: E402
from schemas.records import FPS, SAMPLE_RATE, CandidateClip, Status  # noqa: E402
from stages.chunk import ChunkStage  # noqa: E402
from stages.face import FaceStage  # noqa: E402
from stages.normalize import NormalizeStage  # noqa: E402
from stages.probe import ProbeStage  # noqa: E402
from stages.scene_cut import SceneCutStage  # noqa: E402
from stages.sync import SyncStage  # noqa: E402
from stages.sync_embedded import MouthAudioScorer  # noqa: E402

media = test_media()
SHIFTS_MS = (-320, -200, -120, 0, 120, 200, 480)


def clips(path: Path, with_faces: bool) -> list[CandidateClip]:
    """The clips the pipeline keeps so far from `path` (up to the face stage, or the scene cut)."""
    stages = [NormalizeStage(preset="ultrafast"), SceneCutStage()] + ([FaceStage()] if with_faces else [])
    out = run_in_process(str(path), [[ProbeStage(), ChunkStage()], stages], keep_frames=with_faces)
    return [o for o in out if isinstance(o, CandidateClip) and o.status is not Status.REJECTED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path, default=[*media.GRID, media.PORTRAIT])
    parser.add_argument("--shifts", default=",".join(map(str, SHIFTS_MS)), help="applied shifts in ms, comma-separated (0 is added)")
    parser.add_argument("--out", type=Path, default=RESULTS / f"sync-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()
    shifts = sorted({0, *(int(s) for s in args.shifts.split(","))})
    scorer, threshold = MouthAudioScorer(), SyncStage().min_confidence_embedded
    max_offset = SyncStage().max_offset_frames

    def measure(clip: CandidateClip, context: np.ndarray):
        started = time.perf_counter()
        result = scorer.score(clip.face.track.landmarks, clip.video.width, clip.video.height, context,
                              clip.audio_context_frames, max_offset)
        return result.offset_frames * 1000 / FPS, result.confidence, time.perf_counter() - started

    rows, foreign_rows = [], []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        media.synthesized_speech(work / "flite.wav")
        media.music(work / "music.wav")
        foreign = {"other speaker": media.decoded_audio(media.OTHER_SPEECH),
                   "flite voice": media.decoded_audio(work / "flite.wav"), "music": media.decoded_audio(work / "music.wav")}
        for path in args.inputs:
            faced = clips(path, with_faces=True)
            contexts = {}
            for shift in shifts:
                shifted = work / f"shifted {shift}.mkv"
                media.audio_shifted(path, shifted, shift)
                contexts[shift] = {c.start_frame: c.audio_context for c in clips(shifted, with_faces=False)}
            for clip in faced:
                baseline = measure(clip, contexts[0][clip.start_frame])[0]
                for shift in shifts:
                    context = contexts[shift][clip.start_frame]
                    offset, confidence, seconds = measure(clip, context)
                    corrected = media.shifted_context(context, round(offset * SAMPLE_RATE / 1000))
                    rows.append({"input": path.name, "clip_start_s": clip.start_s, "clip_s": clip.end_s - clip.start_s,
                                 "shift_ms": shift, "offset_ms": offset, "measured_ms": offset - baseline, "error_ms": offset - baseline - shift,
                                 "confidence": confidence, "residual_ms": measure(clip, corrected)[0], "score_s": seconds})
                for kind, audio in foreign.items():
                    confidence = measure(clip, np.resize(audio, clip.audio_context.shape))[1]
                    foreign_rows.append({"input": path.name, "clip_start_s": clip.start_s, "audio": kind, "confidence": confidence})

    print(f"{'input':<28} {'clip s':>6} {'shift':>6} {'offset':>7} {'measured':>9} {'error':>6} {'conf':>5} {'residual':>9}")
    for r in rows:
        print(f"{r['input']:<28} {r['clip_s']:6.1f} {r['shift_ms']:+6d} {r['offset_ms']:+7.0f} {r['measured_ms']:+9.0f} {r['error_ms']:+6.0f} "
              f"{r['confidence']:5.2f} {r['residual_ms']:+9.0f}")
    errors = np.abs([r["error_ms"] for r in rows])
    summary = {
        "within_40ms": float(np.mean(errors <= 40)), "max_error_ms": float(errors.max()),
        "max_residual_ms": float(np.max(np.abs([r["residual_ms"] for r in rows]))),
        "min_confidence": float(min(r["confidence"] for r in rows)), "threshold": threshold,
        "max_foreign_confidence": float(max(r["confidence"] for r in foreign_rows)),
        "mean_score_s": float(np.mean([r["score_s"] for r in rows])),
    }
    print(f"\n{'input':<28} {'audio':<14} {'conf':>5}")
    for r in foreign_rows:
        print(f"{r['input']:<28} {r['audio']:<14} {r['confidence']:5.2f}")
    print("\n" + ", ".join(f"{k} {v:.3g}" for k, v in summary.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "shifts": rows, "foreign": foreign_rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
