"""Records are copy-on-write (stages/base.py): every stage that adds to a clip, run on a real one,
returns a new record and leaves its input as it was, both when it keeps the clip and when it
rejects it; a rejection carries the record as the stage measured it, for the rejected row."""

from __future__ import annotations

import dataclasses

import media
import pytest

from schemas.records import CandidateClip, Rejected, Status
from stages.base import Stage
from stages.caption import CaptionStage
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.fingerprint import FingerprintStage
from stages.keyframes import KeyframesStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from stages.sync import SyncStage
from stages.transcribe import TranscribeStage


def held(record: CandidateClip) -> dict[str, tuple]:
    """Each field's value, with what it holds one level down (a result record's fields, a dict's
    keys and values, a list's items): what a stage changing its input in place would change."""

    def inside(value: object) -> tuple:
        if dataclasses.is_dataclass(value):
            return tuple(getattr(value, f.name) for f in dataclasses.fields(value))
        if isinstance(value, dict):
            return (*value.keys(), *value.values())
        return tuple(value) if isinstance(value, list) else ()

    return {f.name: (getattr(record, f.name), *inside(getattr(record, f.name))) for f in dataclasses.fields(record)}


def assert_unchanged(clip: CandidateClip, before: dict[str, tuple]) -> None:
    """`clip` holds the same objects as it did when `held` gave `before`."""
    after = held(clip)
    for name, values in before.items():
        assert len(after[name]) == len(values) and all(a is b for a, b in zip(after[name], values)), name


def processed(stage: Stage, clip: CandidateClip) -> CandidateClip | Rejected:
    """`stage.process(clip)`, asserting that it left `clip` and everything it holds as they were."""
    before = held(clip)
    result = stage.process(clip)
    assert_unchanged(clip, before)
    assert result is not clip
    return result


def set_up(stage: Stage) -> Stage:
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def cut(run_chain) -> CandidateClip:
    """GRID[3]'s one clip after scene cut, with its analysis frames (the lip-sync model is sure of
    its offset without other clips to pool with, so `settle` keeps it)."""
    out = run_chain(
        media.GRID[3], [ProbeStage(), ChunkStage()], [NormalizeStage(preset="ultrafast"), SceneCutStage()], True
    )
    (clip,) = [o for o in out if isinstance(o, CandidateClip)]
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip


@pytest.fixture(scope="module")
def faced(cut) -> CandidateClip:
    return set_up(FaceStage()).process(cut)


def test_the_face_stage_leaves_its_input_as_it_was(cut):
    kept = processed(set_up(FaceStage()), cut)
    assert kept.face.size_px > 96 and kept.backends == {"face": "mediapipe+retinaface", "identity": "dlib-resnet"}
    rejected = processed(set_up(FaceStage(min_face_px=10_000)), cut)
    assert rejected.reason == "face_too_small"
    assert rejected.measured.face.size_px == kept.face.size_px  # measured before the rule
    assert rejected.measured.backends == {"face": "mediapipe+retinaface"}  # no track, no identity


def test_the_sync_stage_leaves_its_input_as_it_was(faced):
    kept = processed(set_up(SyncStage()), faced)
    assert kept.sync.offset_ms is not None and kept.backends["sync"] == "mouth-audio-cca"
    rejected = processed(set_up(SyncStage(min_confidence_embedded=100.0, pool_chunk=False)), faced)
    assert rejected.reason == "low_sync_confidence"
    assert rejected.measured.sync.confidence == kept.sync.confidence and rejected.measured.sync.audio_shift == 0

    for backend in ("mouth-audio-cca", "lip-sync"):
        pooling = set_up(SyncStage(backend=backend))
        scored = processed(pooling, faced)
        before = held(scored)
        (settled,) = pooling.settle([scored])
        assert_unchanged(scored, before)
        assert settled.sync.pooled_clips == 1 and settled.sync.audio_shift == scored.sync.audio_shift != 0


def test_the_transcribe_stage_leaves_its_input_as_it_was(cut):
    kept = processed(set_up(TranscribeStage()), cut)
    assert kept.transcript.text and kept.backends == {"transcript": "faster-whisper:tiny.en"}
    rejected = processed(set_up(TranscribeStage(min_speech_ratio=1.0)), cut)
    assert rejected.reason == "no_speech" and rejected.measured.transcript.text == kept.transcript.text


def test_the_keyframes_fingerprint_and_caption_stages_leave_their_input_as_it_was(faced):
    with_keyframes = processed(KeyframesStage(), faced)
    assert with_keyframes.keyframes and not faced.keyframes
    assert processed(FingerprintStage(), faced).fingerprint is not None
    captioned = processed(set_up(CaptionStage()), with_keyframes)
    assert captioned.caption.text and captioned.backends["caption"] == "embedded"
