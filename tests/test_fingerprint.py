"""The fingerprint stage on real clips after the real chain (probe .. face), and the measures
`talkcurate dedup` decides with: the same footage re-encoded, cropped, scaled or cut elsewhere
matches; other takes of the same speaker look alike but do not; other speakers do not.

Each GRID file is one speaker (four different people); "other takes of one speaker" are the two
halves of one GRID file (1.5 s clips: different words, the same face, room and light).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import cv2
import media
import numpy as np
import pytest

from pipeline.dedup import DedupThresholds
from schemas.fingerprint import Fingerprint, audio_bit_error_rate, min_overlap, motion_correlations
from schemas.fingerprint import look as looks
from schemas.manifest import manifest_row, rows_to_table
from schemas.records import CandidateClip, Status
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.fingerprint import FingerprintStage, audio_fingerprint, phash
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage

THRESHOLDS = DedupThresholds()
SPEAKERS = {path.stem.removeprefix("grid_"): path for path in media.GRID}
TRIM_FRAMES = 15  # the cut-elsewhere copy starts 0.6 s into the original


def fingerprinted(run_chain, path: Path, max_clip_s: float = 10.0) -> list[CandidateClip]:
    stages = [
        NormalizeStage(preset="ultrafast"),
        SceneCutStage(min_clip_s=1.0, max_clip_s=max_clip_s),
        FaceStage(),
        FingerprintStage(),
    ]
    clips = [o for o in run_chain(path, [ProbeStage(), ChunkStage()], stages) if isinstance(o, CandidateClip)]
    assert all(c.status is Status.PENDING for c in clips), [c.reason_detail for c in clips]
    return clips


@pytest.fixture(scope="module")
def prints(run_chain, tmp_path_factory) -> dict[str, Fingerprint]:
    """name -> fingerprint: each speaker's whole clip and its halves (`NAME/0`, `NAME/1`), and the
    first speaker's copies ("crop", "cut")."""
    folder = tmp_path_factory.mktemp("copies")
    media.reencoded_crop(media.GRID[0], folder / "crop.mp4")
    media.cut_elsewhere(media.GRID[0], folder / "cut.mkv", TRIM_FRAMES)
    out = {}
    for name, path in SPEAKERS.items():
        (whole,) = fingerprinted(run_chain, path)
        out[name] = whole.fingerprint
        for i, half in enumerate(fingerprinted(run_chain, path, max_clip_s=1.5)):
            out[f"{name}/{i}"] = half.fingerprint
    for name in ("crop", "cut"):
        (clip,) = fingerprinted(run_chain, next(folder.glob(f"{name}.*")))
        out[name] = clip.fingerprint
    return out


def look(a: Fingerprint, b: Fingerprint) -> int:
    """How many bits the two clips' looks (the majority of their frame hashes) differ in: dedup's look."""
    first, second = looks(
        np.concatenate([a.video_phash, b.video_phash]), np.array([len(a.video_phash), len(b.video_phash)])
    )
    return int(np.bitwise_count(first ^ second))


def audio(a: Fingerprint, b: Fingerprint) -> tuple[float, int]:
    """Lowest bit error rate over every offset, and its offset."""
    return min((audio_bit_error_rate(a.audio, b.audio, o), o) for o in range(-len(b.audio), len(a.audio)))


def motion(a: Fingerprint, b: Fingerprint) -> tuple[float, int]:
    (correlation,), (offset,) = motion_correlations([a.video_motion], [b.video_motion])
    return correlation, offset


def test_a_clip_gets_frame_hashes_mouth_motion_and_audio_bits(prints):
    whole = prints["bbaf2n"]
    assert whole.video_phash.dtype == np.uint64 and len(whole.video_phash) == 8
    assert len(np.unique(whole.video_phash)) > 1  # the frames are hashed, not one frame eight times
    assert whole.video_motion.dtype == np.uint8 and len(whole.video_motion) == 75
    assert 20 <= whole.video_motion.max() <= 120  # the mouth opens to 2-12% of the face height
    assert whole.audio.dtype == np.uint32 and len(whole.audio) == 74
    columns = Fingerprint.from_columns(**whole.columns())
    assert np.array_equal(columns.video_phash, whole.video_phash) and np.array_equal(columns.audio, whole.audio)
    assert np.array_equal(columns.video_motion, whole.video_motion)


def test_manifest_rows_carry_the_fingerprints(run_chain):
    (clip,) = fingerprinted(run_chain, media.GRID[1])
    clip.status = Status.KEPT
    row = rows_to_table([manifest_row(clip, "shards/shard-000000.tar")]).to_pylist()[0]
    assert row["video_phash"] == [int(h) for h in clip.fingerprint.video_phash]
    assert np.array_equal(np.frombuffer(row["audio_fingerprint"], "<u4"), clip.fingerprint.audio)
    assert row["duplicate_of"] is None and row["split"] is None


def test_the_same_footage_reencoded_and_cropped_matches(prints):
    original, crop = prints["bbaf2n"], prints["crop"]
    assert look(original, crop) <= THRESHOLDS.max_phash_bits
    ber, offset = audio(original, crop)
    assert ber <= THRESHOLDS.max_audio_ber / 2 and offset == 0
    correlation, offset = motion(original, crop)
    assert correlation >= THRESHOLDS.min_motion_corr and offset == 0


def test_the_same_footage_cut_elsewhere_is_found_at_its_offset(prints):
    original, cut = prints["bbaf2n"], prints["cut"]
    assert look(original, cut) <= THRESHOLDS.max_phash_bits
    ber, offset = audio(original, cut)
    assert ber <= THRESHOLDS.max_audio_ber and offset == TRIM_FRAMES
    correlation, offset = motion(original, cut)
    assert correlation >= THRESHOLDS.min_motion_corr and abs(offset - TRIM_FRAMES) <= 1


@pytest.mark.parametrize("name", list(SPEAKERS))
def test_other_takes_of_one_speaker_look_alike_but_do_not_match(prints, name):
    first, second = prints[f"{name}/0"], prints[f"{name}/1"]
    assert look(first, second) <= THRESHOLDS.max_phash_bits  # the frame hash alone would call them duplicates
    assert audio(first, second)[0] > THRESHOLDS.max_audio_ber
    assert motion(first, second)[0] < THRESHOLDS.min_motion_corr


def test_different_speakers_do_not_match(prints):
    for a, b in itertools.combinations(SPEAKERS, 2):
        assert look(prints[a], prints[b]) > THRESHOLDS.max_phash_bits, (a, b)
        assert audio(prints[a], prints[b])[0] > THRESHOLDS.max_audio_ber, (a, b)


def pearson_at_every_offset(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """The definition, one offset at a time: the best Pearson correlation and its offset."""
    best = (-1.0, 0)
    for offset in range(-(len(y) - 1), len(x)):
        start_x, start_y = max(0, offset), max(0, -offset)
        length = min(len(x) - start_x, len(y) - start_y)
        a, b = x[start_x : start_x + length].astype(float), y[start_y : start_y + length].astype(float)
        if length >= min_overlap(len(x), len(y)) and a.std() * b.std() * length > 1e-6:
            correlation = float(np.corrcoef(a, b)[0, 1])
            best = max(best, (correlation, offset), key=lambda found: found[0])  # the first offset of a tie
    return best


def test_motion_correlations_are_pearson_at_the_best_offset():
    """Prefix sums and one FFT per pair give the definition's correlations and offsets: random
    series of 10-250 frames (some too short to compare), copies cut later with noise, a flat one."""
    rng = np.random.default_rng(3)
    first = [rng.integers(0, 120, int(n)).astype(np.uint8) for n in rng.integers(10, 251, 60)]
    second = [rng.integers(0, 120, int(n)).astype(np.uint8) for n in rng.integers(10, 251, 50)]
    second += [np.clip(x[7:] + rng.normal(0, 20, len(x) - 7), 0, 255).astype(np.uint8) for x in first[50:59]]
    second.append(np.full(100, 40, np.uint8))
    correlations, offsets = motion_correlations(first, second)
    expected = [pearson_at_every_offset(x, y) for x, y in zip(first, second)]
    assert np.allclose(correlations, [c for c, _ in expected], atol=1e-5)
    assert offsets.tolist() == [o for _, o in expected]
    copies = [k for k in range(50, 59) if len(first[k]) >= 60]  # long enough that noise cannot hide the match
    assert (correlations[copies] > 0.7).all() and (offsets[copies] == 7).all() and correlations[59] == -1


def test_a_look_is_the_majority_of_the_frame_hashes():
    frames = np.array([0b0111, 0b0011, 0b0001, 0b1111, 0b1000], np.uint64)
    # 2 of 3 have bit 1; a tie of 1 in 2 is not a majority; a clip without hashes looks like nothing
    assert looks(frames, np.array([3, 0, 2, 0])).tolist() == [0b0011, 0, 0b1000, 0]
    assert looks(np.zeros(0, np.uint64), np.zeros(0, np.int64)).tolist() == []


def test_identical_input_gives_identical_bits():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (288, 360, 3), np.uint8)
    assert phash(frame) == phash(frame.copy())
    speech = media.decoded_audio(media.OTHER_SPEECH)[: 3 * 16000]
    assert np.array_equal(audio_fingerprint(speech), audio_fingerprint(speech.copy()))
    assert len(audio_fingerprint(speech[:639])) == 0  # less than a frame: no sub-fingerprint


def test_the_stage_costs_a_few_milliseconds(run_chain):
    (clip,) = [
        o
        for o in run_chain(
            media.GRID[2],
            [ProbeStage(), ChunkStage()],
            [NormalizeStage(preset="ultrafast"), SceneCutStage(), FaceStage()],
            keep_frames=True,
        )
        if isinstance(o, CandidateClip)
    ]
    stage = FingerprintStage()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in a Ray worker, which runs one thread per CPU it was given
    try:
        started = time.process_time()
        for _ in range(5):
            stage.process(clip)
        cost = (time.process_time() - started) / 5
    finally:
        cv2.setNumThreads(threads)
    assert cost < 0.03  # measured 4 ms for this 3 s clip (9 ms for the 10 s portrait)


def test_the_stage_needs_analysis_frames(run_chain):
    (clip,) = [
        o
        for o in run_chain(
            media.GRID[2], [ProbeStage(), ChunkStage()], [NormalizeStage(preset="ultrafast"), SceneCutStage()]
        )
        if isinstance(o, CandidateClip)
    ]
    with pytest.raises(ValueError, match="analysis frames"):
        FingerprintStage().process(clip)
