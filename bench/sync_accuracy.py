"""Accuracy of the sync stage on real footage of people it was not trained or tuned on.

    python bench/sync_accuracy.py [--split test] [--corpus ../shared/media/talking] [--out RESULTS.json]
                                  [--set sync.KEY=VALUE ...] [--shifts -480,-320,...] [--cache DIR]

People and their split come from bench/sync_people.json. For every file of the split's people it
runs probe .. face once for 3 s clips (scene_cut.max_clip_s=3) and once for the default clips
(up to 10 s), then for every shift writes the file with its sound moved that many ms later
(ffmpeg, PCM in Matroska) and gives each clip the shifted file's audio context, as a run would.
The sync stage (with the `--set` options) then keeps or rejects the clips of each file and shift,
taken together as one chunk's (so the embedded backends pool them); a kept clip's offset is compared
with the shift, plus the file's own offset where bench/sync_people.json lists one (files every
backend finds out of sync as published); the rest of the corpus is taken to be in sync.

It also checks what must be rejected: each file dubbed with another person's speech (another
person of the split), with music and with flite's voice (each clip gets the dub's sound at its own
place, and a file's clips are settled together), and a still frame of the face under its own speech;
and the speaker in two-face composites (two people of the split side by side, the sound of one).

Prints per person and shift how many clips were kept right (within 40 ms), kept near (40-80 ms),
kept wrong (beyond 80 ms) and rejected; the totals against the targets; the sync stage's CPU per
clip; and writes everything as JSON (default bench/results/sync-<timestamp>.json).

The stages before sync (decoding, the face mesh, the shifted files' audio) take nearly all the
time and do not depend on the sync options; `--cache DIR` keeps their outputs (clips without their
analysis frames, so not with SyncNet) per file, clip length and shift, and a second run with other
sync options or weights reads them back: minutes instead of most of an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from long_inputs import test_media  # noqa: E402

from bench import RESULTS  # noqa: E402  (bench/bench.py: this folder is first on sys.path)
from pipeline.config import RunConfig  # noqa: E402
from pipeline.runner import ChainRunner, run_in_process  # noqa: E402
from schemas.records import SAMPLES_PER_FRAME, CandidateClip, Status  # noqa: E402
from stages.chunk import ChunkStage  # noqa: E402
from stages.face import FaceStage  # noqa: E402
from stages.normalize import NormalizeStage  # noqa: E402
from stages.probe import ProbeStage  # noqa: E402
from stages.scene_cut import SceneCutStage  # noqa: E402
from stages.sync import SyncStage  # noqa: E402

media = test_media()
PEOPLE = Path(__file__).resolve().parent / "sync_people.json"
CORPUS = ROOT.parent / "shared" / "media" / "talking"
SHIFTS_MS = (-480, -320, -200, -120, -40, 0, 40, 120, 200, 320, 480)
CLIP_LENGTHS = {"3s": {"max_clip_s": 3.0}, "default": {}}
RIGHT_MS, WRONG_MS = 40.0, 80.0


def people(split: str, corpus: Path) -> dict[str, list[Path]]:
    """Person -> files of `split` (demo media by name from demo/media, the rest from `corpus`)."""
    listing = json.loads(PEOPLE.read_text())[split]
    return {
        person: [media.DEMO / f if (media.DEMO / f).exists() else corpus / f for f in files]
        for person, files in listing.items()
    }


def clips(path: Path, scene_cut: dict, with_faces: bool) -> list[CandidateClip]:
    """The clips of `path` still pending after the scene cut (and the face stage)."""
    stages = [NormalizeStage(preset="ultrafast"), SceneCutStage(**scene_cut)] + ([FaceStage()] if with_faces else [])
    out = run_in_process(str(path), [[ProbeStage(), ChunkStage()], stages], keep_frames=with_faces)
    return [o for o in out if isinstance(o, CandidateClip) and o.status is not Status.REJECTED]


class StageCache:
    """The outputs of the stages before sync kept in `folder` (None: not kept), by the source file
    they came from (its name, size and time) and what was made of it; clips are kept without their
    analysis frames or pictures."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def clips(self, source: Path, what: str, make: Callable[[], list[CandidateClip]]) -> list[CandidateClip]:
        if self.folder is None:
            return make()
        stat = source.stat()
        stored = self.folder / f"{source.name} {stat.st_size} {int(stat.st_mtime)} {what}.pkl"
        if stored.exists():
            return pickle.loads(stored.read_bytes())
        made = [_unpictured(c) for c in make()]
        stored.write_bytes(pickle.dumps(made, protocol=pickle.HIGHEST_PROTOCOL))
        return made


def _unpictured(clip: CandidateClip) -> CandidateClip:
    """`clip` without its analysis frames and held pictures (which never leave their worker)."""
    video = clip.video and dataclasses.replace(clip.video, held=None)
    return dataclasses.replace(clip, frames=None, video=video)


@dataclasses.dataclass
class Outcome:
    kept: bool
    offset_ms: float | None
    confidence: float | None
    margin: float | None
    reason: str | None
    cpu_s: float
    pooled_clips: int | None


def synced(stage: SyncStage, clips: list[tuple[CandidateClip, np.ndarray]]) -> list[tuple[Outcome, CandidateClip]]:
    """What the sync stage makes of `clips` (the clips of one file) under their audio contexts,
    taken as one chunk's (settled together when the stage pools a chunk's evidence)."""
    trials = [dataclasses.replace(clip, audio_context=context) for clip, context in clips]
    started = time.process_time()
    outs = {out.start_frame: out for out in ChainRunner([stage], keep_frames=True).run_clips(trials)}
    cpu = (time.process_time() - started) / max(1, len(trials))
    results = []
    for trial in trials:
        out = outs[trial.start_frame]
        sync = out.sync
        results.append(
            (
                Outcome(
                    out.status is not Status.REJECTED,
                    None if sync is None else sync.offset_ms,
                    None if sync is None else sync.confidence,
                    None if sync is None else sync.margin,
                    out.reason,
                    cpu,
                    None if sync is None else sync.pooled_clips,
                ),
                out,
            )
        )
    return results


def shifted_clips(path: Path, shift: int, scene_cut: dict, work: Path) -> list[CandidateClip]:
    """The clips of `path` with its sound `shift` ms later (for their audio contexts)."""
    shifted = work / f"shifted {shift}.mkv"
    media.audio_shifted(path, shifted, shift)
    return clips(shifted, scene_cut, with_faces=False)


def verdict(outcome: Outcome, shift_ms: float) -> str:
    if not outcome.kept:
        return "rejected"
    error = abs(outcome.offset_ms - shift_ms)
    return "right" if error <= RIGHT_MS else "near" if error <= WRONG_MS else "WRONG"


def length_class(clip: CandidateClip, lengths: str) -> str:
    seconds = clip.num_frames / 25
    return "3s" if lengths == "3s" else "8s+" if seconds >= 8.0 else "3-8s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test", help="people of bench/sync_people.json to measure (default test)")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--shifts", default=",".join(map(str, SHIFTS_MS)), help="applied shifts in ms, comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="sync.KEY=VALUE", help="sync stage option")
    parser.add_argument(
        "--no-foreign", action="store_true", help="skip the foreign-audio, still-face and two-face checks"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / f"sync-{time.strftime('%Y%m%d-%H%M%S')}.json")
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep the stages before sync's outputs here, and reuse them (keyed by file, not by code: "
        "empty it after changing a stage before sync)",
    )
    args = parser.parse_args()
    shifts = [int(s) for s in args.shifts.split(",")]
    stage = RunConfig.load(None, args.set).section("sync")
    if args.cache is not None and stage.syncnet_model_path:
        parser.error("--cache keeps clips without their analysis frames, which the SyncNet backend needs")
    cache = StageCache(args.cache)
    stage.setup()
    split = people(args.split, args.corpus)
    reference_ms = json.loads(PEOPLE.read_text())["reference_offsets_ms"]["files"]

    rows, rejections, speakers = [], [], []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        media.synthesized_speech(work / "flite.wav")
        media.music(work / "music.wav")
        others = {
            "music": media.decoded_audio(work / "music.wav"),
            "flite voice": media.decoded_audio(work / "flite.wav"),
        }
        faced_by_person: dict[str, dict[str, list[CandidateClip]]] = defaultdict(dict)  # person: file: clips
        for person, files in split.items():
            for path in files:
                for lengths, scene_cut in CLIP_LENGTHS.items():
                    faced = cache.clips(path, f"{lengths} faces", partial(clips, path, scene_cut, True))
                    if lengths == "default":
                        faced_by_person[person][path.name] = faced
                    for shift in shifts:
                        shifted = partial(shifted_clips, path, shift, scene_cut, work)
                        contexts = {
                            c.start_frame: c.audio_context
                            for c in cache.clips(path, f"{lengths} shifted {shift:+d}", shifted)
                        }
                        trials = [(clip, contexts[clip.start_frame]) for clip in faced if clip.start_frame in contexts]
                        truth = shift + reference_ms.get(path.name, 0.0)
                        for (clip, _), (outcome, _) in zip(trials, synced(stage, trials)):
                            rows.append(
                                {
                                    "person": person,
                                    "file": path.name,
                                    "start_s": clip.start_s,
                                    "seconds": clip.num_frames / 25,
                                    "lengths": length_class(clip, lengths),
                                    "shift_ms": shift,
                                    "truth_ms": truth,
                                    "verdict": verdict(outcome, truth),
                                    **dataclasses.asdict(outcome),
                                }
                            )
                print(f"{person}: {path.name} done", file=sys.stderr, flush=True)
        if not args.no_foreign:
            rejections = foreign_checks(stage, faced_by_person, others)
            speakers = two_face_composites(stage, split, work, cache)

    report(rows, rejections, speakers, shifts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "split": args.split,
                "options": args.set,
                "rows": rows,
                "rejections": rejections,
                "speakers": speakers,
                "summary": summary(rows, rejections, speakers),
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


def foreign_checks(
    stage: SyncStage, faced_by_person: dict[str, dict[str, list[CandidateClip]]], others: dict[str, np.ndarray]
) -> list[dict]:
    """Each file of each person dubbed with another person's speech, with music and with flite's
    voice, and its face frozen into a photo under its own sound: every clip must be rejected. A
    file's clips are settled together, as one chunk's, as the tests of shifted sound are."""
    names = sorted(person for person, files in faced_by_person.items() if any(files.values()))
    rejections = []
    for i, person in enumerate(names):
        other = names[(i + 1) % len(names)]
        speech = np.concatenate([c.audio_context for faced in faced_by_person[other].values() for c in faced])
        for name, faced in faced_by_person[person].items():
            if not faced:
                continue
            trials = {kind: dubbed(faced, audio) for kind, audio in {**others, "another person": speech}.items()}
            trials["still face"] = [
                (dataclasses.replace(c, face=dataclasses.replace(c.face, track=_still(c.face.track))), c.audio_context)
                for c in faced
            ]
            for kind, pairs in trials.items():
                for clip, (outcome, _) in zip(faced, synced(stage, pairs)):
                    rejections.append(
                        {"person": person, "file": name, "start_s": clip.start_s, "audio": kind}
                        | dataclasses.asdict(outcome)
                    )
    return rejections


def dubbed(clips: list[CandidateClip], audio: np.ndarray) -> list[tuple[CandidateClip, np.ndarray]]:
    """The clips of one file, each with its audio context cut from `audio` (repeated as long as the
    file needs) at the clip's own place: the file's sound replaced, as a dub replaces it."""
    place = [c.start_frame * SAMPLES_PER_FRAME for c in clips]
    track = np.resize(audio, max(p + len(c.audio_context) for p, c in zip(place, clips)))
    return [(c, track[p : p + len(c.audio_context)]) for p, c in zip(place, clips)]


def _still(track):
    """The track frozen on its first frame: a photo's landmarks."""
    return dataclasses.replace(track, landmarks=np.repeat(track.landmarks[:1], len(track.landmarks), axis=0))


def two_face_composites(stage: SyncStage, split: dict[str, list[Path]], work: Path, cache: StageCache) -> list[dict]:
    """Pairs of the split's people side by side (scaled to one height), with the sound of one:
    the kept face must be that one's."""
    firsts = [files[0] for files in split.values()]
    rows = []
    for i, left in enumerate(firsts):
        right = firsts[(i + 1) % len(firsts)]
        for speaker, (a, b) in (("left", (left, right)), ("right", (right, left))):
            faced = cache.clips(a, f"beside {b.name} {speaker} speaks", partial(composite_clips, a, b, speaker, work))
            for clip, (outcome, synced_clip) in zip(faced, synced(stage, [(c, c.audio_context) for c in faced])):
                centre = None
                if outcome.kept:
                    boxes = synced_clip.face.track.boxes
                    centre = float(np.nanmedian(boxes[:, [0, 2]].mean(axis=1)))
                kept_side = None if centre is None else "left" if centre < 0.5 else "right"
                rows.append(
                    {
                        "speaker": a.name,
                        "other": b.name,
                        "side": speaker,
                        "kept_side": kept_side,
                        "num_faces": clip.face.num_faces,
                        **dataclasses.asdict(outcome),
                    }
                )
    return rows


def composite_clips(a: Path, b: Path, speaker: str, work: Path) -> list[CandidateClip]:
    """The clips (with faces) of `a` and `b` side by side (scaled to one height) with the sound of
    `a`, which stands on the `speaker` side."""
    out = work / f"pair {a.stem} {speaker}.mp4"
    scaled = [work / f"scaled {j}.mp4" for j in range(2)]
    for src, dst in zip((a, b), scaled):
        media.ffmpeg(
            "-i",
            src,
            "-vf",
            "scale=-2:360,fps=25,setsar=1",
            "-t",
            "6",
            *media.H264,
            *media.AAC,
            dst,
        )
    if speaker == "left":
        media.side_by_side(scaled[0], scaled[1], out)
    else:  # the sound of `a`, which stands on the right
        media.ffmpeg(
            "-i",
            scaled[1],
            "-i",
            scaled[0],
            "-filter_complex",
            "[0:v][1:v]hstack=inputs=2,setsar=1[v]",
            "-map",
            "[v]",
            "-map",
            "1:a",
            *media.H264,
            *media.AAC,
            "-shortest",
            out,
        )
    return clips(out, {}, with_faces=True)


def summary(rows: list[dict], rejections: list[dict], speakers: list[dict]) -> dict:
    def share(selected, what):
        return float(np.mean([r["verdict"] == what for r in selected])) if selected else float("nan")

    out = {}
    for lengths in ("3s", "3-8s", "8s+"):
        selected = [r for r in rows if r["lengths"] == lengths]
        out[f"right_{lengths}"] = share(selected, "right")
        out[f"cases_{lengths}"] = len(selected)
    out["kept_wrong"] = sum(r["verdict"] == "WRONG" for r in rows)
    in_sync = [r for r in rows if r["shift_ms"] == 0]
    out["in_sync_rejected"] = share(in_sync, "rejected")
    out["foreign_rejected"] = float(np.mean([not r["kept"] for r in rejections])) if rejections else float("nan")
    two = [r for r in speakers if r["num_faces"] == 2]
    out["speaker_kept"] = float(np.mean([r["kept_side"] == r["side"] for r in two])) if two else float("nan")
    out["speaker_wrong"] = sum(r["kept_side"] not in (None, r["side"]) for r in two)
    out["sync_cpu_ms_per_clip"] = 1000 * float(np.mean([r["cpu_s"] for r in rows])) if rows else float("nan")
    return out


def report(rows: list[dict], rejections: list[dict], speakers: list[dict], shifts: list[int]) -> None:
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[(r["person"], r["lengths"])][r["shift_ms"]].append(r["verdict"])
    print(f"{'person':<22} {'clips':<6}" + "".join(f"{s:>+8d}" for s in shifts) + "    (right/kept/clips per shift)")
    for (person, lengths), per_shift in sorted(by.items()):
        cells = []
        for s in shifts:
            verdicts = per_shift.get(s, [])
            wrong = "!" if "WRONG" in verdicts else ""
            cells.append(
                f"{verdicts.count('right')}/{sum(v != 'rejected' for v in verdicts)}/{len(verdicts)}{wrong}".rjust(8)
            )
        print(f"{person:<22} {lengths:<6}" + "".join(cells))
    reasons = defaultdict(int)
    for r in rows:
        if not r["kept"]:
            reasons[r["reason"]] += 1
    print("\nrejections: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])))
    if rejections:
        kinds = defaultdict(list)
        for r in rejections:
            kinds[r["audio"]].append(r["kept"])
        print(
            "foreign audio and still faces, kept of clips: "
            + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in kinds.items())
        )
    if speakers:
        print(
            "two-face composites: "
            + ", ".join(f"{r['side']} speaks -> {r['kept_side'] or r['reason']}" for r in speakers)
        )
    s = summary(rows, rejections, speakers)
    print("\n" + "\n".join(f"{k:<24} {v:.3g}" if isinstance(v, float) else f"{k:<24} {v}" for k, v in s.items()))


if __name__ == "__main__":
    main()
