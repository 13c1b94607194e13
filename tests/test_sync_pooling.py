"""The sync stage's pooling, with both embedded backends, on a person neither was trained or tuned on,
from the development corpus (../shared/media/talking; a `test` person of bench/sync_people.json): one
source made of several shots of one person, its sound shifted by one amount for the whole file, and
a shot dubbed with another person's speech. Pooled over the chunk, every kept clip gets the file's
offset, the dubbed shot is rejected, and pooling keeps more than each clip alone would."""

from __future__ import annotations

from pathlib import Path

import media
import pytest

from pipeline.runner import ChainRunner
from schemas.records import CandidateClip, Status
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from stages.sync import SyncStage

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "media" / "talking"
PERSON = [
    CORPUS / f"yiranran+Audio-driven-TalkingFace-HeadPose__data-31-{part}.mp4" for part in "ab"
]  # a `test` person
SHOTS_S = (15.0, 9.0, 3.0)  # the two recordings, then the dubbed shot
SHIFT_MS = 120
TOLERANCE_MS = 40

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason="the development corpus is not beside the checkout (../shared/media/talking)"
)


@pytest.fixture(scope="module")
def interview(run_chain, tmp_path_factory) -> list[CandidateClip]:
    """Three shots of one person (two recordings, then 3 s of the first one under another speaker's
    voice), the sound of the whole file moved 120 ms later, cut into 3 s clips: the clips after the
    face stage."""
    folder = tmp_path_factory.mktemp("sync_pooling")
    dubbed = folder / "dubbed.mkv"
    media.dubbed(PERSON[0], media.OTHER_SPEECH, dubbed, start_s=5.0, seconds=SHOTS_S[2])
    joined, shifted = folder / "interview.mp4", folder / "interview shifted.mkv"
    media.concat_shots(joined, list(zip([*PERSON, dubbed], SHOTS_S)), size=(720, 406))
    media.audio_shifted(joined, shifted, SHIFT_MS)
    out = run_chain(
        shifted,
        [ProbeStage(), ChunkStage()],
        [NormalizeStage(preset="ultrafast"), SceneCutStage(max_clip_s=3.0), FaceStage()],
    )
    clips = [o for o in out if isinstance(o, CandidateClip) and o.status is Status.PENDING]
    assert len(clips) == 9, [(o.start_s, o.reason_detail) for o in out if isinstance(o, CandidateClip)]
    return clips


def synced(clips: list[CandidateClip], stage: SyncStage) -> list[CandidateClip]:
    """What `stage` makes of `clips`, taken as one chunk's, in their order."""
    outs = {o.start_frame: o for o in ChainRunner([stage]).run_clips(clips)}
    return [outs[c.start_frame] for c in clips]


BACKENDS = pytest.mark.parametrize("backend", ["mouth-audio-cca", "lip-sync"])


@BACKENDS
def test_every_kept_clip_of_a_shifted_source_gets_its_offset_and_the_dubbed_shot_none(interview, backend):
    outs = synced(interview, SyncStage(backend=backend))
    details = [
        (o.start_s, o.status.value, o.sync.offset_ms, o.sync.confidence, o.sync.pooled_clips, o.reason_detail)
        for o in outs
    ]
    dubbed_from = round((SHOTS_S[0] + SHOTS_S[1]) * 25)
    own = [o for o in outs if o.start_frame < dubbed_from]
    kept = [o for o in own if o.status is Status.PENDING]
    assert len(kept) >= 4, details
    for clip in kept:
        assert abs(clip.sync.offset_ms - SHIFT_MS) <= TOLERANCE_MS, details
        assert clip.sync.audio_shift == round(clip.sync.offset_ms * 16)
    assert max(c.sync.pooled_clips for c in kept) == len(interview), details  # the chunk's evidence decided
    for clip in outs:
        if clip.start_frame >= dubbed_from:  # another person's voice: no offset fits it
            assert (clip.status, clip.reason) == (Status.REJECTED, "low_sync_confidence"), details


@BACKENDS
def test_pooling_keeps_clips_that_are_unsure_alone(interview, backend):
    pooled = synced(interview, SyncStage(backend=backend))
    alone = synced(interview, SyncStage(backend=backend, pool_chunk=False))
    kept_pooled = {o.start_frame for o in pooled if o.status is Status.PENDING}
    kept_alone = {o.start_frame for o in alone if o.status is Status.PENDING}
    assert kept_alone <= kept_pooled and len(kept_pooled) > len(kept_alone), (kept_alone, kept_pooled)
    assert all(o.sync.pooled_clips is None for o in alone)
