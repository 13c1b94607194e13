"""SyncStage on real media, after the real chain up to the face stage: shifted audio is measured
and corrected, each rejection reason on media made to need it, the speaker found among two faces,
and the SyncNet backend's path through the stage (random weights in the published format).

Each input runs through probe .. face once per module; each test runs the sync stage on a copy
of the shared clip (as the pipeline's ChainRunner runs it), so the tests never change the clips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import media
import models
import numpy as np
import pytest

from pipeline.config import RunConfig
from pipeline.runner import ChainRunner
from schemas.manifest import manifest_row, sample_metadata
from schemas.records import FPS, SAMPLE_RATE, CandidateClip, Status
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.lip_sync import shipped_model
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from stages.sync import SyncStage
from stages.sync_embedded import MouthAudioScorer

SPEAKER = media.GRID[1]
EMBEDDED = MouthAudioScorer.name
SHIFTS_MS = (0, 200, 480)
TOLERANCE_MS = 40


def faced(run_chain, path: Path) -> CandidateClip:
    """The one clip of `path` after probe, chunk, normalize, scene cut and face, with its analysis frames."""
    out = run_chain(
        path,
        [ProbeStage(), ChunkStage()],
        [NormalizeStage(preset="ultrafast"), SceneCutStage(), FaceStage()],
        keep_frames=True,
    )
    (clip,) = [o for o in out if isinstance(o, CandidateClip)]
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip


def synced(clip: CandidateClip, stage: SyncStage | None = None, **changes) -> CandidateClip:
    """What the sync stage makes of `clip` (with `changes` to its fields), as the only clip of its
    chunk: the clip or its rejected row."""
    (out,) = ChainRunner([stage or SyncStage()], keep_frames=True).run_clips([dataclasses.replace(clip, **changes)])
    return out


def rejected(clip: CandidateClip, reason: str) -> None:
    assert (clip.status, clip.reason, clip.rejected_by) == (Status.REJECTED, reason, "sync"), (
        clip.reason,
        clip.reason_detail,
        clip.sync,
    )
    assert clip.audio_context is None and clip.frames is None  # payloads dropped


def centre_x(clip: CandidateClip) -> float:
    boxes = clip.face.track.boxes
    return float(np.nanmedian(boxes[:, [0, 2]].mean(axis=1)))


@pytest.fixture(scope="module")
def shifted(run_chain, tmp_path_factory) -> dict[int, CandidateClip]:
    """SPEAKER with its audio moved later by each of SHIFTS_MS: shift -> clip after the face stage."""
    folder = tmp_path_factory.mktemp("sync_shifted")
    clips = {}
    for shift_ms in SHIFTS_MS:
        path = folder / f"shifted {shift_ms}.mkv"
        media.audio_shifted(SPEAKER, path, shift_ms)
        clips[shift_ms] = faced(run_chain, path)
    return clips


# -- measuring and correcting -------------------------------------------------------------------


def test_a_shifted_clip_is_kept_and_its_stored_audio_is_in_sync(shifted):
    baseline = synced(shifted[0])
    clip = synced(shifted[200])
    for kept in (baseline, clip):
        assert kept.status is Status.PENDING, kept.reason_detail
        assert kept.backends["sync"] == kept.sync.backend == EMBEDDED
    measured = clip.sync.offset_ms - baseline.sync.offset_ms
    assert abs(measured - 200) <= TOLERANCE_MS, (clip.sync.offset_ms, baseline.sync.offset_ms)
    assert clip.sync.audio_shift == round(clip.sync.offset_ms * SAMPLE_RATE / 1000)
    assert clip.sync.tracks == []  # one face: nothing to choose between

    # The stored audio is the context moved by the correction ...
    start = clip.audio_context_frames * SAMPLE_RATE // FPS
    context = media.shifted_context(clip.audio_context, clip.sync.audio_shift)
    np.testing.assert_array_equal(clip.audio, context[start : start + len(clip.audio)])
    assert not np.array_equal(clip.audio, shifted[200].audio)
    # ... and scored again it is in sync.
    height, width = clip.video.height, clip.video.width
    again = MouthAudioScorer().score(clip.face.track.landmarks, width, height, context, clip.audio_context_frames, 15)
    assert abs(again.offset_frames * 1000 / FPS) <= TOLERANCE_MS, again

    row = manifest_row(clip, "shards/shard-000000.tar")
    assert (row["sync_offset_ms"], row["sync_confidence"], row["sync_backend"]) == (
        clip.sync.offset_ms,
        clip.sync.confidence,
        EMBEDDED,
    )
    assert (
        row["speech_range_db"] > SyncStage().min_speech_range_db and row["mouth_motion"] > SyncStage().min_mouth_motion
    )
    meta = sample_metadata(clip)["sync"]
    assert meta["offset_ms"] == clip.sync.offset_ms and meta["audio_shift"] == clip.sync.audio_shift
    assert meta["backend"] == EMBEDDED


def test_an_offset_beyond_the_correction_bound_is_out_of_sync(shifted):
    stage = RunConfig.load(None, ["sync.max_correction_ms=200"]).section("sync")  # as `--set` gives it
    clip = synced(shifted[480], stage)
    rejected(clip, "out_of_sync")
    assert clip.sync.offset_ms > 200 and clip.sync.audio_shift == 0
    assert manifest_row(clip, None)["sync_offset_ms"] == clip.sync.offset_ms  # what was measured, on the rejected row


def test_measure_mode_records_the_offset_and_keeps_the_audio(shifted):
    """`sync.mode=measure` (footage known to be in sync, such as a corpus to train the sync model
    on): the offset is measured and recorded, nothing is shifted, nothing rejected for sync."""
    stage = RunConfig.load(None, ["sync.mode=measure", "sync.max_correction_ms=200"]).section("sync")
    clip = synced(shifted[480], stage)
    assert clip.status is Status.PENDING, clip.reason_detail
    assert clip.sync.offset_ms > 200 and clip.sync.audio_shift == 0  # beyond the bound, yet kept as it is
    other = np.resize(media.decoded_audio(media.OTHER_SPEECH), shifted[0].audio_context.shape)
    assert synced(shifted[0], stage, audio_context=other).status is Status.PENDING
    with pytest.raises(ValueError, match="sync.mode"):
        RunConfig.load(None, ["sync.mode=guess"])


def test_silence_is_no_speech(run_chain, tmp_path, shifted):
    path = tmp_path / "silent.mp4"
    media.with_silent_audio(SPEAKER, path)
    silent = synced(faced(run_chain, path))
    rejected(silent, "no_speech")
    hiss = np.random.default_rng(0).normal(0, 30, shifted[0].audio_context.shape).astype(np.int16)
    hissing = synced(shifted[0], audio_context=hiss)
    rejected(hissing, "no_speech")
    for clip in (silent, hissing):
        row = manifest_row(clip, None)
        assert row["speech_range_db"] < SyncStage().min_speech_range_db
        assert row["sync_backend"] == EMBEDDED and row["sync_offset_ms"] is None and row["sync_confidence"] is None


def test_a_still_face_over_speech_is_not_talking(run_chain, frozen_face):
    clip = synced(faced(run_chain, frozen_face))
    rejected(clip, "not_talking")
    assert clip.sync.speech_range_db > SyncStage().min_speech_range_db  # the audio is speech
    assert clip.sync.mouth_motion < SyncStage().min_mouth_motion and clip.sync.offset_ms is None


def test_another_speakers_audio_is_low_sync_confidence(shifted):
    """The speaker's face with another speaker reading: speech and a moving mouth, but no sync."""
    other = np.resize(media.decoded_audio(media.OTHER_SPEECH), shifted[0].audio_context.shape)
    clip = synced(shifted[0], audio_context=other)
    rejected(clip, "low_sync_confidence")
    assert clip.sync.confidence < SyncStage().min_confidence_embedded


# -- the speaker among two faces ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(run_chain, two_speakers) -> CandidateClip:
    """GRID[0] (left) and GRID[1] (right) side by side with the audio of GRID[0]; both faces are candidates."""
    clip = faced(run_chain, two_speakers)
    assert clip.face.num_faces == 2 and len(clip.face.candidates) == 1
    return clip


def test_the_speaking_face_of_two_is_kept(pair, shifted):
    outcomes = {
        "left": synced(pair),
        "right": synced(
            pair, audio_context=shifted[0].audio_context
        ),  # the same picture, the right-hand speaker's recording
    }
    scores = {
        side: (clip.reason_detail, [(round(t.box_centre[0], 2), t.confidence, t.offset_ms) for t in clip.sync.tracks])
        for side, clip in outcomes.items()
    }
    for side, clip in outcomes.items():
        assert clip.status is Status.PENDING, scores
        assert (centre_x(clip) < 0.5) == (side == "left"), scores
        assert clip.face.num_faces == 2 and clip.face.candidates == []
        assert len(clip.sync.tracks) == 2
        best = max(clip.sync.tracks, key=lambda t: t.confidence)
        assert best.confidence == clip.sync.confidence and (best.box_centre[0] < 0.5) == (side == "left")


# -- the learned backend ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portrait_shifted(run_chain, tmp_path_factory) -> dict[int, CandidateClip]:
    """The demo portrait (10 s) with its sound moved later by 0 and 200 ms: shift -> clip after the face stage."""
    folder = tmp_path_factory.mktemp("sync_portrait")
    clips = {}
    for shift_ms in (0, 200):
        path = folder / f"portrait {shift_ms}.mkv"
        media.audio_shifted(media.PORTRAIT, path, shift_ms)
        clips[shift_ms] = faced(run_chain, path)
    return clips


def test_the_learned_backend_measures_corrects_and_records_its_margin(portrait_shifted):
    stage = RunConfig.load(None, ["sync.backend=lip-sync"]).section("sync")
    baseline, clip = synced(portrait_shifted[0], stage), synced(portrait_shifted[200], stage)
    for kept in (baseline, clip):
        assert kept.status is Status.PENDING, kept.reason_detail
        assert kept.backends["sync"] == kept.sync.backend == shipped_model().name
        assert kept.sync.confidence >= stage.min_significance and kept.sync.margin >= stage.min_margin
        assert kept.sync.pooled_clips == 1  # the only clip of its chunk: its own evidence
    assert abs(clip.sync.offset_ms - baseline.sync.offset_ms - 200) <= TOLERANCE_MS
    assert clip.sync.audio_shift == round(clip.sync.offset_ms * SAMPLE_RATE / 1000)
    row = manifest_row(clip, "shards/shard-000000.tar")
    assert (row["sync_confidence"], row["sync_margin"], row["sync_backend"], row["sync_pooled_clips"]) == (
        clip.sync.confidence,
        clip.sync.margin,
        shipped_model().name,
        1,
    )
    other = np.resize(media.decoded_audio(media.OTHER_SPEECH), portrait_shifted[0].audio_context.shape)
    rejected(synced(portrait_shifted[0], stage, audio_context=other), "low_sync_confidence")
    with pytest.raises(ValueError, match="sync.backend"):
        RunConfig.load(None, ["sync.backend=guess"])


def test_the_learned_backend_never_keeps_the_silent_face(pair, shifted):
    """Two GRID speakers say sentences of one pattern, so each face fits the other's sound nearly as
    well: the stage keeps the face whose sound it is only when it clearly fits best, else rejects."""
    stage = SyncStage(backend="lip-sync")
    outcomes = {"left": synced(pair, stage), "right": synced(pair, stage, audio_context=shifted[0].audio_context)}
    for side, clip in outcomes.items():
        if clip.status is Status.PENDING:
            assert (centre_x(clip) < 0.5) == (side == "left"), clip.sync.tracks
        else:
            rejected(clip, "multiple_faces")


# -- the SyncNet backend --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def syncnet_path(tmp_path_factory) -> str:
    return str(models.syncnet_checkpoint(tmp_path_factory.mktemp("sync_syncnet") / "syncnet_v2.model"))


def test_the_syncnet_backend_runs_through_the_stage(syncnet_path, shifted, pair):
    """Random weights: what they measure means nothing, so the thresholds are opened and the test
    checks the bookkeeping: backend recorded, whole-frame offsets, the correction from the offset,
    and among two faces the one the network scores higher kept."""
    stage = SyncStage(
        syncnet_model_path=syncnet_path, min_confidence_syncnet=0.0, max_correction_ms=600.0, speaker_margin_syncnet=0.0
    )
    clip = synced(shifted[200], stage)
    assert clip.status is Status.PENDING, clip.reason_detail
    assert clip.backends["sync"] == clip.sync.backend == "syncnet"
    assert clip.sync.offset_ms % (1000 / FPS) == 0 and clip.sync.audio_shift == round(
        clip.sync.offset_ms * SAMPLE_RATE / 1000
    )
    assert manifest_row(clip, "shards/shard-000000.tar")["sync_backend"] == "syncnet"

    two = synced(pair, stage)
    assert two.status is Status.PENDING, two.reason_detail
    assert len(two.sync.tracks) == 2 and all(t.confidence is not None for t in two.sync.tracks)
    best = max(two.sync.tracks, key=lambda t: t.confidence)
    assert (centre_x(two) < 0.5) == (best.box_centre[0] < 0.5) and two.sync.confidence == best.confidence


def test_the_syncnet_backend_needs_the_analysis_frames(syncnet_path, shifted):
    clip = synced(shifted[0], SyncStage(syncnet_model_path=syncnet_path), frames=None)
    assert (clip.reason, clip.rejected_by) == ("error", "sync") and "analysis frames" in clip.reason_detail


# -- configuration --------------------------------------------------------------------------------


def test_the_search_must_fit_in_the_audio_context(shifted):
    with pytest.raises(ValueError, match="audio_context_frames"):
        RunConfig.load(None, ["scene_cut.audio_context_frames=10"])
    RunConfig.load(
        None, ["scene_cut.audio_context_frames=10", "sync.max_offset_frames=10", "sync.max_correction_ms=360"]
    )
    # Clips made with a smaller context than the search needs (another config): an error row each, naming the options.
    clip = synced(shifted[0], SyncStage(max_offset_frames=20, max_correction_ms=400.0))
    assert (clip.reason, clip.rejected_by) == ("error", "sync") and "audio_context_frames" in clip.reason_detail


def test_a_correction_bound_beyond_the_search_is_refused():
    with pytest.raises(ValueError, match="max_correction_ms"):
        SyncStage(max_correction_ms=700.0).validate()
    SyncStage(max_correction_ms=600.0).validate()
