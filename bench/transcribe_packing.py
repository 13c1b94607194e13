"""Whisper with clips packed several to a window (`transcribe.pack`) against one window per clip
(today's path), on real speech.

    OMP_NUM_THREADS=1 python bench/transcribe_packing.py [--gaps 1.0,2.0] [--batch 8] [--repeats 2]
                                                         [--set transcribe.KEY=VALUE ...] [--out RESULTS.json]

Clips, 16 kHz mono, cut from ../shared/media: the four GRID sentences (3 s; reference: the file
name in GRID grammar), JFK (11 s; reference in SOURCES.md), the LibriSpeech reading cut into 4, 6
and 7 s pieces and the LatentSync speech track (10 s; no reference shipped: compared between the
paths only), flite's voice reading Harvard sentences (2-8 s; reference: the text), and 10 s of
music (no speech: both paths must reject it).

Each clip goes through the transcribe stage alone (`process`, as without packing) and in batches of
`--batch` with `pack` on (`process_batch`), for each gap. Prints per clip the WER of each path, the
words that differ between the two (word edit distance), the largest and mean |difference| of the
word times the two paths share (start and end; all words, and without each clip's first and last
word, whose edges Whisper's alignment stretches over the silence around them), the decisions, and
how the packed path decided the clip (on its packed result, or alone after a doubtful one). Then per
path: pooled WER, encoder and total CPU ms per clip-second (the best of `--repeats`). JSON goes to
bench/results/transcribe-packing-<timestamp>.json.

With `--demo FOLDER` it instead runs the inputs in FOLDER (e.g. demo/media) through the ingest and
clips groups with the default configuration, then the clips that reach transcription through the
transcribe stage in batches of `--batch`, once without and once with packing (the first gap), and
prints each clip's row (key, status, reason, transcript) where the two differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from long_inputs import test_media  # noqa: E402
from results_file import write_results  # noqa: E402  (this folder is first on sys.path)

from core.media_io import decode_audio  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.definition import PIPELINE  # noqa: E402
from pipeline.inputs import discover  # noqa: E402
from pipeline.runner import ChainRunner, run_in_process  # noqa: E402
from schemas.records import FPS, SAMPLE_RATE, CandidateClip, Rejected, SourceVideo, Status  # noqa: E402
from stages.transcribe import TranscribeStage  # noqa: E402
from stages.whisper_models import voiced_spans  # noqa: E402

media = test_media()
SHARED = ROOT.parent / "shared" / "media"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
FLITE = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well. These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls. The juice of lemons makes fine punch. The box was thrown beside the "
    "parked truck.",
]
LIBRISPEECH_CUTS = [(0.0, 4.0), (4.0, 10.0), (7.0, 14.0)]


def speech_clips(folder: Path) -> list[tuple[str, str | None, np.ndarray, Path]]:
    """(name, reference text or None, int16 audio of whole frames, file) of every clip."""
    clips = []
    for path in sorted(SHARED.glob("grid_*.mpg")):
        code = path.stem.removeprefix("grid_")
        clips.append((f"grid_{code}", media.grid_sentence(code), decode_audio(str(path)), path))
    clips.append(("jfk", JFK_TEXT, decode_audio(str(SHARED / "jfk.flac")), SHARED / "jfk.flac"))
    libri = SHARED / "librispeech_198-209-0000.ogg"
    reading = decode_audio(str(libri))
    for start, end in LIBRISPEECH_CUTS:
        cut = reading[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
        clips.append((f"librispeech_{start:g}-{end:g}s", None, cut, libri))
    portrait = SHARED / "latentsync_demo1_audio.wav"
    clips.append(("latentsync_10s", None, decode_audio(str(portrait)), portrait))
    for index, text in enumerate(FLITE):
        path = folder / f"flite_{index}.wav"
        subprocess.run(["flite", "-t", text, "-o", str(path)], check=True, capture_output=True)
        clips.append((f"flite_{index}", text, decode_audio(str(path)), path))
    music = folder / "music.wav"
    media.music(music, seconds=10.0)
    clips.append(("music", "", decode_audio(str(music)), music))
    whole = SAMPLE_RATE // FPS
    return [(name, text, audio[: len(audio) // whole * whole], path) for name, text, audio, path in clips]


def as_clip(audio: np.ndarray, path: Path) -> CandidateClip:
    frames = len(audio) * FPS // SAMPLE_RATE
    return CandidateClip(
        source=SourceVideo.from_uri(str(path)), chunk_index=0, start_frame=0, end_frame=frames, audio_context=audio
    )


class Meter:
    """CPU seconds in the stage's Whisper encoder, and which (audio length, spans) it decoded."""

    def __init__(self, stage: TranscribeStage):
        self.encoder_s, self.decoded = 0.0, []
        whisper, backend = stage._model._model, stage._model
        encode, transcribe = whisper.encode, backend.transcribe

        def timed_encode(*args, **kwargs):
            started = time.process_time()
            try:
                return encode(*args, **kwargs)
            finally:
                self.encoder_s += time.process_time() - started

        def logged_transcribe(audio, spans=None):
            self.decoded.append((len(audio), spans))
            return transcribe(audio, spans)

        whisper.encode, backend.transcribe = timed_encode, logged_transcribe


def timed(run, meter: Meter, repeats: int) -> tuple[list, float, float]:
    """`run()`'s results and its least CPU seconds over `repeats`, total and in the encoder."""
    best = None
    for _ in range(repeats):
        meter.encoder_s, meter.decoded = 0.0, []
        started = time.process_time()
        results = run()
        total = time.process_time() - started
        if best is None or total < best[1]:
            best = (results, total, meter.encoder_s)
    return best


def word_times(result) -> list[tuple[str, float, float]]:
    transcript = result.measured.transcript if isinstance(result, Rejected) else result.transcript
    if transcript is None:
        return []
    return [(" ".join(media.words_of(w.text)), w.start_s, w.end_s) for w in transcript.words]


def time_differences(alone: list, packed: list, interior: bool) -> list[float]:
    """|start| and |end| differences in ms of the words both paths heard, matched in order."""
    if interior:
        alone, packed = alone[1:-1], packed[1:-1]
    matcher = difflib.SequenceMatcher(a=[w[0] for w in alone], b=[w[0] for w in packed], autojunk=False)
    return [
        1000 * abs(alone[i + k][edge] - packed[j + k][edge])
        for i, j, size in matcher.get_matching_blocks()
        for k in range(size)
        for edge in (1, 2)
    ]


def decision(result) -> str:
    return f"rejected:{result.reason}" if isinstance(result, Rejected) else "kept"


def text(result) -> str:
    transcript = result.measured.transcript if isinstance(result, Rejected) else result.transcript
    return transcript.text if transcript else ""


def compare(clips, alone, packed, decoded_alone) -> list[dict]:
    rows = []
    for (name, reference, audio, _), a, p, by_itself in zip(clips, alone, packed, decoded_alone):
        words_a, words_p = word_times(a), word_times(p)
        every, inner = time_differences(words_a, words_p, False), time_differences(words_a, words_p, True)
        rows.append(
            dict(
                clip=name,
                seconds=len(audio) / SAMPLE_RATE,
                wer_alone=media.wer(reference, text(a)) if reference else None,
                wer_packed=media.wer(reference, text(p)) if reference else None,
                words_differing=media.word_edits(media.words_of(text(a)), media.words_of(text(p))),
                max_dt_ms=max(every, default=0.0),
                mean_dt_ms=float(np.mean(every)) if every else 0.0,
                max_dt_inner_ms=max(inner, default=0.0),
                decision_alone=decision(a),
                decision_packed=decision(p),
                packed_decided="alone" if by_itself else "packed",
                text_alone=text(a),
                text_packed=text(p),
            )
        )
    return rows


def pooled_wer(clips, results) -> float:
    pairs = [(reference, text(r)) for (_, reference, _, _), r in zip(clips, results) if reference]
    edits = sum(media.word_edits(media.words_of(ref), media.words_of(hyp)) for ref, hyp in pairs)
    return edits / sum(len(media.words_of(ref)) for ref, _ in pairs)


def packed_batches(stage: TranscribeStage, records: list[CandidateClip], batch: int) -> list:
    return [out for i in range(0, len(records), batch) for out in stage.process_batch(records[i : i + batch])]


def print_rows(rows: list[dict]) -> None:
    header = f"{'clip':24} {'s':>5} {'WER one':>7} {'WER pk':>6} {'diff':>4} {'max dt':>6} {'mean':>5} {'inner':>5}"
    print(f"{header}  decisions: one / packed, how")
    for row in rows:
        one = "-" if row["wer_alone"] is None else f"{row['wer_alone']:.2f}"
        packed = "-" if row["wer_packed"] is None else f"{row['wer_packed']:.2f}"
        print(
            f"{row['clip']:24} {row['seconds']:5.1f} {one:>7} {packed:>6} {row['words_differing']:4d} "
            f"{row['max_dt_ms']:6.0f} {row['mean_dt_ms']:5.0f} {row['max_dt_inner_ms']:5.0f}  "
            f"{row['decision_alone']} / {row['decision_packed']}, {row['packed_decided']}"
        )


def print_summary(summary: dict[str, dict]) -> None:
    print(
        f"\n{'path':18} {'WER':>5} {'encoder ms/s':>12} {'total ms/s':>10}  other words (clips), decisions differing,"
    )
    print(f"{'':52}decided alone")
    for path, row in summary.items():
        extra = (
            f"  {row['words_differing']} ({row['clips_with_other_words']}), {row['decisions_differing']}, "
            f"{row['decided_alone']}"
            if "words_differing" in row
            else ""
        )
        print(f"{path:18} {row['wer']:5.3f} {row['encoder_ms_per_s']:12.0f} {row['total_ms_per_s']:10.0f}{extra}")


def demo_rows(folder: str, options: dict, batch: int) -> dict:
    """key -> (status, reason, transcript) of every clip of `folder`'s inputs, without and with packing."""
    config = RunConfig.load(None, [])
    ingest, clips = ([config.stages[cls.name] for cls in group.stages] for group in PIPELINE[:2])
    rows = [out for source in discover([folder]).sources for out in run_in_process(source.uri, [ingest, clips])]
    reaching = [row for row in rows if isinstance(row, CandidateClip) and row.status is Status.PENDING]
    decided = {}
    for pack in (False, True):
        runner = ChainRunner([TranscribeStage(**{**options, "pack": pack})])
        out = [o for i in range(0, len(reaching), batch) for o in runner.run_batch(reaching[i : i + batch])]
        decided[pack] = {o.key: (o.status.value, o.reason, o.transcript.text) for o in out}
    print(f"{len(rows)} records from {folder}, {len(reaching)} clips reach transcription, batches of {batch}")
    for key in decided[False]:
        same = decided[False][key] == decided[True][key]
        print(
            f"{key}: {'same' if same else 'DIFFERENT'} {decided[False][key]}"
            + ("" if same else f" / {decided[True][key]}")
        )
    return {str(pack): rows for pack, rows in decided.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gaps", default="1.0", help="pack_gap_s values to measure, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="clips per process_batch call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="transcribe.KEY=VALUE")
    parser.add_argument("--demo", help="compare the decisions on this folder's inputs instead")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configured = RunConfig.load(None, args.set).section("transcribe")
    options = {field.name: getattr(configured, field.name) for field in dataclasses.fields(configured)}
    options["pack_gap_s"] = float(args.gaps.split(",")[0])
    if args.demo:
        demo = {"demo": args.demo, "options": options, "rows": demo_rows(args.demo, options, args.batch)}
        write_results(demo, "transcribe-packing", args.out)
        return
    with tempfile.TemporaryDirectory() as folder:
        clips = speech_clips(Path(folder))
    records = [as_clip(audio, path) for _, _, audio, path in clips]
    seconds = sum(len(audio) for _, _, audio, _ in clips) / SAMPLE_RATE
    own_spans = [voiced_spans(r.audio) if options["vad"] else None for r in records]  # what a clip alone decodes
    print(
        f"{len(clips)} clips, {seconds:.1f} s; batches of {args.batch}; CPU ms per clip-second, best of {args.repeats}"
    )

    stage = TranscribeStage(**{**options, "pack": False})
    stage.setup()
    alone, total_s, encoder_s = timed(lambda: [stage.process(r) for r in records], Meter(stage), args.repeats)
    summary = {
        "one window a clip": dict(
            wer=pooled_wer(clips, alone),
            encoder_ms_per_s=1000 * encoder_s / seconds,
            total_ms_per_s=1000 * total_s / seconds,
        )
    }
    report = {"clips": len(clips), "clip_seconds": seconds, "batch": args.batch, "options": options, "gaps": {}}
    for gap in (float(g) for g in args.gaps.split(",")):
        stage = TranscribeStage(**{**options, "pack": True, "pack_gap_s": gap})
        stage.setup()
        meter = Meter(stage)
        packed, total_s, encoder_s = timed(lambda: packed_batches(stage, records, args.batch), meter, args.repeats)  # noqa: B023
        rows = compare(clips, alone, packed, [(len(r.audio), s) in meter.decoded for r, s in zip(records, own_spans)])
        print(f"\npack_gap_s = {gap:g}")
        print_rows(rows)
        summary[f"packed, gap {gap:g} s"] = dict(
            wer=pooled_wer(clips, packed),
            encoder_ms_per_s=1000 * encoder_s / seconds,
            total_ms_per_s=1000 * total_s / seconds,
            words_differing=sum(r["words_differing"] for r in rows),
            clips_with_other_words=sum(r["words_differing"] > 0 for r in rows),
            decisions_differing=sum(r["decision_alone"] != r["decision_packed"] for r in rows),
            decided_alone=sum(r["packed_decided"] == "alone" for r in rows),
        )
        report["gaps"][str(gap)] = rows
    print_summary(summary)
    report["summary"] = summary
    write_results(report, "transcribe-packing", args.out)


if __name__ == "__main__":
    main()
