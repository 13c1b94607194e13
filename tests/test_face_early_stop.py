"""The face stage's early stop decides every clip as the full pass does: on real and generated media
that meet each face rule (no face, a face that leaves, a small face, a face cut by the frame's edge,
two faces under both policies, a turned or blurred face, a face that changes person, talking-face
clips that are kept or rejected), each clip gets the same status, reason and rejecting stage with
`face.early_stop` on (the default) and off. Where detection stopped, the detail gives a bound that
the full pass's measured coverage keeps; everywhere else the face stage's whole record (landmarks,
boxes, mouth opening, measurements, identity, candidates) is bit-identical, so the masks drawn from
the landmarks and what the sync stage reads are too.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from pathlib import Path

import media
import numpy as np
import pytest

from schemas.records import CandidateClip, Rejected, Status
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage

TALKING = Path(__file__).resolve().parents[2] / "shared" / "media" / "talking"  # the development corpus
STOPPED = re.compile(
    r"the face is visible on at most (\d+) of (\d+) frames, minimum 90% \(detection stopped after (\d+) frames\)"
)
WHOLE_SHOT = {"detector": "content", "threshold": 255.0}  # no cut inside the file: the face stage sees it whole


@pytest.fixture(scope="module")
def face_stages():
    """Set-up face stages by (early_stop, options), made once each."""
    made: dict[tuple, FaceStage] = {}

    def stage(early_stop: bool, **options) -> FaceStage:
        key = (early_stop, tuple(sorted(options.items())))
        if key not in made:
            made[key] = FaceStage(early_stop=early_stop, **options)
            made[key].validate()
            made[key].setup()
        return made[key]

    return stage


def face_outcomes(run_chain, face_stages, path: Path, scene_cut: dict | None = None, **options):
    """Each candidate clip of `path` (after probe, chunk, normalize, scene cut) through the face
    stage with the full pass and with early stopping: (full rows, early rows), in clip order."""
    out = run_chain(
        path,
        [ProbeStage(), ChunkStage()],
        [NormalizeStage(preset="ultrafast"), SceneCutStage(**(scene_cut or {}))],
        keep_frames=True,
    )
    clips = [o for o in out if isinstance(o, CandidateClip) and o.status is Status.PENDING]
    assert clips, f"no clip of {path.name} reached the face stage"
    return tuple(
        [row for clip in clips for row in rows(face_stages(early, **options), clip)] for early in (False, True)
    )


def rows(stage: FaceStage, clip: CandidateClip) -> list[CandidateClip]:
    """What the stage makes of `clip`, rejections as rows (as the pipeline's runner writes them)."""
    result = stage.process(clip)
    results = list(result) if isinstance(result, Iterator) else [result]
    return [r.row(clip, stage.name) if isinstance(r, Rejected) else r for r in results]


def assert_identical(a, b, where: str = "face") -> None:
    """Equal to the bit: arrays (NaN where NaN), floats, nested records and lists."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for spec in dataclasses.fields(a):
            assert_identical(getattr(a, spec.name), getattr(b, spec.name), f"{where}.{spec.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def assert_same_decisions(full: list[CandidateClip], early: list[CandidateClip]) -> list[CandidateClip]:
    """Each clip decided alike; returns the early rows whose detection stopped."""
    assert len(full) == len(early)
    stopped = []
    for whole, fast in zip(full, early):
        decision = (whole.start_frame, whole.end_frame, whole.status, whole.reason, whole.rejected_by)
        assert (fast.start_frame, fast.end_frame, fast.status, fast.reason, fast.rejected_by) == decision
        bound = STOPPED.fullmatch(fast.reason_detail or "")
        if bound is None:
            assert fast.reason_detail == whole.reason_detail
            assert_identical(whole.face, fast.face)
            continue
        stopped.append(fast)
        at_most, num_frames, seen = (int(g) for g in bound.groups())
        assert fast.reason == "no_face" and seen < num_frames == whole.num_frames
        assert at_most < FaceStage().min_face_coverage * num_frames
        measured = 0.0 if math.isnan(whole.face.coverage) else whole.face.coverage  # NaN: no face at all
        assert measured <= at_most / num_frames  # the bound holds
        face = fast.face
        assert face.track is None and math.isnan(face.coverage) and math.isnan(face.size_px)
        assert face.num_faces <= whole.face.num_faces  # counted on the frames seen
    return stopped


def test_faceless_clips_stop_early_with_the_same_decision(run_chain, face_stages, black_video, silent_bikes):
    """Black frames stop detection within 10% of the frames (the first detection frames that could
    still reach 90%); bikes' street shots (a small face on some frames) are no_face either way."""
    full, early = face_outcomes(run_chain, face_stages, black_video)
    (stopped,) = assert_same_decisions(full, early)
    assert stopped.reason == "no_face" and full[0].reason_detail == "no face detected on any frame"
    assert int(STOPPED.fullmatch(stopped.reason_detail).group(3)) <= 0.1 * stopped.num_frames + 2
    full, early = face_outcomes(run_chain, face_stages, silent_bikes)
    assert {row.reason for row in full} == {"no_face"}
    assert assert_same_decisions(full, early)


def test_a_face_that_leaves_stops_detection_where_coverage_is_out_of_reach(run_chain, face_stages, tmp_path):
    """GRID[0] with frames 20-74 black in one shot: the face's track covers 19 frames. Detection
    stops once the frames after it can no longer be bridged (past frame 27) and the clip is no_face."""
    path = tmp_path / "leaves.mp4"
    media.blacked_out(media.GRID[0], path, 20, 55)
    full, early = face_outcomes(run_chain, face_stages, path, WHOLE_SHOT)
    (stopped,) = assert_same_decisions(full, early)
    assert full[0].face.coverage < 0.3 and full[0].face.num_faces == 0
    assert 20 < int(STOPPED.fullmatch(stopped.reason_detail).group(3)) <= 30


@pytest.mark.parametrize(
    ("case", "reasons"),
    [
        ("small", {"face_too_small"}),
        ("large", {None}),
        ("cut_off", {"face_cut_off"}),
        ("two_reject", {"multiple_faces"}),
        ("two_keep", {None}),
        ("turned", {"profile_face"}),
        ("blurred", {"low_quality"}),
        ("changes_person", {None}),
    ],
)
def test_faces_that_pass_detection_are_decided_and_measured_alike(
    run_chain, face_stages, shrunk_faces, cut_off_face, two_speakers, tmp_path, case, reasons
):
    """Clips with a face on every frame never stop early: each rule decides as before, and kept
    clips (one face, two candidates, the parts of a clip cut where its face changes person) carry
    bit-identical landmarks, boxes, measurements and identity."""
    if case == "changes_person":
        path = tmp_path / "hard_cut.mp4"
        media.concat_shots(path, [(media.GRID[0], 2.5), (media.GRID[2], 2.5)])
    inputs = {
        "small": (shrunk_faces[0.4], None, {}),
        "large": (shrunk_faces[0.9], None, {}),
        "cut_off": (cut_off_face, None, {}),
        "two_reject": (two_speakers, None, {"multiple_faces": "reject"}),
        "two_keep": (two_speakers, None, {}),
        "turned": (media.GRID[0], None, {"max_head_yaw": 3.0}),
        "blurred": (media.GRID[2], None, {"min_face_sharpness": 1000.0}),
        "changes_person": (tmp_path / "hard_cut.mp4", {"threshold": 1e9}, {}),
    }
    path, scene_cut, options = inputs[case]
    full, early = face_outcomes(run_chain, face_stages, path, scene_cut, **options)
    assert {row.reason for row in full} == reasons
    assert assert_same_decisions(full, early) == []
    if case == "two_keep":
        assert len(full[0].face.candidates) == 1
    if case == "changes_person":
        assert len(full) == 2  # cut into two parts, each kept


TALKING_CLIPS = [
    "JusperLee+IIANet__debate-2faces.mp4",  # split-screen debate: small faces
    "johndpope+face-swap_ss__test-video-03-2faces.mp4",  # a face cut by the frame's edge
    "smeetrs+deep_avsr__lrs2-00009.mp4",  # one speaker, kept
]


@pytest.mark.skipif(not TALKING.is_dir(), reason="the development corpus is not beside the checkout")
@pytest.mark.parametrize("name", TALKING_CLIPS)
def test_talking_face_clips_are_decided_alike(run_chain, face_stages, name):
    path = TALKING / name
    full, early = face_outcomes(run_chain, face_stages, path)
    assert_same_decisions(full, early)
