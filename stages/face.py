"""Face: detection, tracks, the speaker's face mesh, masks data, measurements, identity.

Works on the clip's analysis frames (decoded once by normalize, shared in memory). Detection
runs on every `detect_every`-th frame (and the clip's last): mediapipe, plus RetinaFace where
mediapipe found nothing and on every `retinaface_every`-th frame (it finds small and crowded
faces mediapipe misses). Detections are linked into tracks whose boxes are interpolated between
detection frames; short gaps are bridged, so a transition frame without a face is harmless. The
longest track is the tracked face: the face mesh follows it on every frame (mediapipe's own
scheme: a detector now and then, the landmark model in between), its landmarks are what the
sample stores, and the face and lip masks are drawn from them (schemas/face.py). When several faces
count (interviews, two-shots) and `multiple_faces` is `keep`, every face the rules pass gets its
landmarks and measurements as a candidate, and the sync stage keeps the one that speaks; a clip
with one face costs nothing extra. Rejected clips pay for what decided them: detection stops as soon
as no track can reach the coverage minimum (`early_stop`), the mesh runs only on a track that
passed the rules read from its boxes (coverage, size, cut-off), and the identity model (the
stage's costliest call a face) only on a face that passed every other rule: only the
`identity_changed` rule and kept clips (`talkcurate people`) read the identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from core.config import option
from schemas.face import CHIN, FOREHEAD_TOP, FaceResult, FaceTrackData, mouth_opening
from schemas.records import FPS, CandidateClip, Rejected
from stages.base import Resources, Stage
from stages.face_models import ArcFaceOnnx, DlibResNet, IdentityModel, NoIdentity
from stages.face_track import FaceTracker, square_crop

# The 5 points identity models align faces by, in ArcFace's template order: eye on the image's left,
# other eye, nose tip, mouth corners.
IDENTITY_KEYPOINTS = [468, 473, 1, 61, 291]
_EYE_OUTER = (33, 263)  # outer eye corners, the one on the image's left first
_BACKEND = "mediapipe+retinaface"
IDENTITY_BACKENDS = ("dlib-resnet", "none")


def _head_pose(landmarks: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees (0, 0, 0: frontal and upright) from the mesh's 3D landmarks:
    the face's own axes are the eye-corner line and the forehead-chin line."""
    points = landmarks.astype(np.float64) * (width, height, width)  # mesh depth is in units of x
    across = points[_EYE_OUTER[1]] - points[_EYE_OUTER[0]]
    down = points[CHIN] - points[FOREHEAD_TOP]
    across /= np.linalg.norm(across)
    down -= across * (down @ across)
    down /= np.linalg.norm(down)
    rotation = np.stack([across, down, np.cross(across, down)], axis=1)
    yaw = np.degrees(np.arcsin(np.clip(-rotation[2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(rotation[2, 1], rotation[2, 2]))
    roll = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
    return float(yaw), float(pitch), float(roll)


@dataclass
class FaceStage(Stage[CandidateClip, CandidateClip]):
    """Find one clearly visible face per clip, track it, store its landmarks and measure it."""

    name: ClassVar[str] = "face"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)
    uses_frames: ClassVar[bool] = True

    # Detection, tracking and the face mesh: the defaults are FaceTracker's, which lip editing runs as they are.
    min_detection_confidence: float = option(
        FaceTracker.min_detection_confidence, "Detector score below which a face is ignored (mediapipe and RetinaFace)."
    )
    detect_every: int = option(
        FaceTracker.detect_every,
        "Faces are detected on every n-th frame and the clip's last; tracks are interpolated between, and the face "
        "mesh sees every frame.",
    )
    retinaface_every: int = option(
        FaceTracker.retinaface_every,
        "Also run RetinaFace on every n-th frame (a multiple of detect_every), to find faces mediapipe misses (0: "
        "only where mediapipe finds none).",
    )
    retinaface_max_side: int = option(
        FaceTracker.retinaface_max_side, "RetinaFace sees frames downscaled to this long side."
    )
    track_min_iou: float = option(
        FaceTracker.track_min_iou, "Detections on consecutive frames with at least this IoU belong to one track."
    )
    max_gap_frames: int = option(
        FaceTracker.max_gap_frames, "Gaps of up to this many frames without a detection are bridged inside a track."
    )
    min_track_share: float = option(
        0.3, "A track counts as a face in `num_faces` when present on this share of the frames."
    )
    min_face_coverage: float = option(
        0.9, "The tracked face must be present (after bridging) on this share of frames, else `no_face`."
    )
    early_stop: bool = option(
        True,
        "Stop detecting faces on a clip once no track can be present on `min_face_coverage` of its frames any more: "
        "the clip is `no_face` as with a full pass, and its row gives the most frames a face could still be on "
        "instead of the measured coverage and size (`num_faces` counts the faces of the frames seen). false: always "
        "detect on every detection frame.",
    )
    min_face_px: float = option(
        96.0, "Median face box height, in pixels of the stored clip, below which a clip is `face_too_small`."
    )
    max_cut_off_share: float = option(
        0.2, "Share of frames on which the face box may touch the frame's edge before the clip is `face_cut_off`."
    )
    multiple_faces: str = option(
        "keep",
        "When several faces count: `keep` every face the rules pass as a candidate (the sync stage picks the speaker) "
        "or `reject` the clip (reason multiple_faces).",
    )
    max_head_yaw: float = option(
        50.0, "Median |yaw| in degrees above which the face is `profile_face` (turned too far for lip training)."
    )
    min_face_sharpness: float = option(
        10.0, "Median variance of the Laplacian of the 128 px face crop below which a clip is `low_quality` (blurred)."
    )
    face_brightness_range: list = option(
        [30.0, 230.0],
        "Median luma of the face crop outside this range makes a clip `low_quality` (too dark or blown out).",
    )
    crop_scale: float = option(FaceTracker.crop_scale, "The face mesh sees a square crop this many times the face box.")
    mesh_size: int = option(FaceTracker.mesh_size, "Side of the crop the face mesh sees, in pixels.")
    measure_every: int = option(5, "Head pose, sharpness and brightness are measured on every n-th frame.")
    identity_backend: str = option(
        "dlib-resnet",
        "Identity embedding: `dlib-resnet` (dlib's face-recognition ResNet, shipped in face-recognition-models) or "
        "`none`; face.identity_model_path, when set, runs ArcFace instead.",
    )
    identity_model_path: str = option(
        "", "ArcFace ONNX model (insightface format, e.g. w600k_r50.onnx); when set, the identity backend."
    )
    identity_samples: int = option(5, "Frames per clip embedded for identity (evenly spread; at least 2).")
    min_identity_consistency: float = option(
        0.5,
        "ArcFace: lowest identity consistency (the cosine similarity of the clip's mean identity before and after "
        "its worst split between sampled frames) before the clip is `identity_changed`.",
    )
    min_part_s: float = option(
        2.0,
        "A clip whose face changes person is cut where it changes (as if the shot detector had found a cut), and "
        "each part passes the rules on its own; parts shorter than this are `too_short` (as scene_cut.min_clip_s "
        "does for shots).",
    )
    min_identity_consistency_dlib: float = option(
        0.92,
        "dlib-resnet: the same (its embeddings of different people are closer: 0.85 typical, up to 0.95; one "
        "person's clips split no lower than 0.93).",
    )

    def validate(self) -> None:
        if self.multiple_faces not in ("reject", "keep"):
            raise ValueError("face.multiple_faces must be `reject` or `keep`")
        if len(self.face_brightness_range) != 2 or self.face_brightness_range[0] > self.face_brightness_range[1]:
            raise ValueError("face.face_brightness_range must be [low, high]")
        if self.detect_every < 1 or self.detect_every > self.max_gap_frames + 1:
            raise ValueError(
                f"face.detect_every must be between 1 and max_gap_frames + 1 ({self.max_gap_frames + 1}), or tracks "
                "could not span the frames between detections"
            )
        if self.identity_backend not in IDENTITY_BACKENDS:
            raise ValueError(f"face.identity_backend must be one of {IDENTITY_BACKENDS}, not {self.identity_backend!r}")
        if self.identity_samples < 2:
            raise ValueError("face.identity_samples must be at least 2 (consistency compares the clip's parts)")
        if self.retinaface_every % self.detect_every:
            raise ValueError(
                "face.retinaface_every must be 0 or a multiple of face.detect_every (RetinaFace runs on detection "
                "frames)"
            )

    def required_modules(self) -> tuple[str, ...]:
        identity_class, _, _ = self._identity_choice()
        return tuple(dict.fromkeys(("mediapipe", "retinaface", "onnxruntime", *identity_class.modules)))

    def setup(self) -> None:
        self._tracker = self.tracker()
        self._tracker.load()
        self._identity, self._min_consistency = self.identity_model()

    def tracker(self) -> FaceTracker:
        """Detection, tracking and the face mesh as this stage's options set them (detectors not loaded)."""
        return FaceTracker(**{spec.name: getattr(self, spec.name) for spec in dataclasses.fields(FaceTracker)})

    def identity_model(self) -> tuple[IdentityModel, float | None]:
        """The configured identity model, loaded, and its minimum identity consistency."""
        identity_class, arguments, min_consistency = self._identity_choice()
        return identity_class(*arguments), min_consistency

    def _identity_choice(self) -> tuple[type[IdentityModel], tuple, float | None]:
        """The identity model the options choose (ArcFace from a path wins), its arguments and its
        minimum consistency: what `identity_model` loads and `required_modules` checks, decided once."""
        if self.identity_model_path:
            return ArcFaceOnnx, (self.identity_model_path,), self.min_identity_consistency
        if self.identity_backend == "dlib-resnet":
            return DlibResNet, (), self.min_identity_consistency_dlib
        return NoIdentity, (), None

    def process(self, item: CandidateClip) -> CandidateClip | Rejected | Iterator[CandidateClip | Rejected]:
        result = self._face(item)
        if not (isinstance(result, Rejected) and result.reason == "identity_changed"):
            return result
        if not item.can_be_cut:  # checked first: placing the change costs embeddings
            detail = f"{result.detail}; the change was not cut: the clip was encoded as it streamed"
            return dataclasses.replace(result, detail=detail)
        change = self._identity_change(item.frames, result.measured.face)
        if change is None:
            return dataclasses.replace(result, detail=f"{result.detail}; the change could not be placed")
        return self._parts(item, change)

    def _parts(self, item: CandidateClip, change: int) -> Iterator[CandidateClip | Rejected]:
        """The clip cut at frame `change`, where its face becomes another person: each part through
        the rules on its own (and cut again should its face change once more)."""
        min_frames = round(self.min_part_s * FPS)
        for start, end in ((0, change), (change, item.num_frames)):
            part = item.part(start, end)
            if end - start < min_frames:
                seconds = (end - start) / FPS
                detail = f"{seconds:.2f} s of a clip cut where its face changed person, minimum {self.min_part_s} s"
                yield part.reject("too_short", detail, self.name)
                continue
            results = self.process(part)
            for result in results if isinstance(results, Iterator) else (results,):
                yield result.row(part, self.name) if isinstance(result, Rejected) else result

    def _face(self, item: CandidateClip) -> CandidateClip | Rejected:
        frames = item.frames
        if frames is None or len(frames) == 0:
            raise ValueError("the face stage needs the clip's analysis frames (normalize.analysis_long_side > 0)")
        num_frames = len(frames)
        detected = self._tracker.detect(frames, self.min_face_coverage if self.early_stop else 0.0)
        tracks = self._tracker.link(detected.faces)
        dense = [t.dense_boxes(num_frames, self.max_gap_frames) for t in tracks]
        present = [float(np.mean(~np.isnan(b[:, 0]))) for b in dense]
        counted = [i for i, share in enumerate(present) if share >= self.min_track_share]
        result = FaceResult(backend=_BACKEND, num_faces=len(counted))
        if detected.stopped:
            # Every track of a full pass would be under the coverage minimum: the coverage rule
            # rejects the clip (and any other face as a candidate) whatever the later frames hold.
            return Rejected(
                "no_face",
                f"the face is visible on at most {detected.reachable} of {num_frames} frames, minimum "
                f"{self.min_face_coverage:.0%} (detection stopped after {detected.seen} frames)",
                measured=_with_face(item, result),
            )
        if not tracks:
            return Rejected("no_face", "no face detected on any frame", measured=_with_face(item, result))
        main = max(range(len(tracks)), key=lambda i: (present[i], len(tracks[i].frames)))
        clip_height = item.video.height if item.video else frames.shape[1]
        several = len(counted) > 1
        rejected = self._covered(dense[main], present[main], clip_height, result)
        if rejected is None and several and self.multiple_faces == "reject":
            rejected = Rejected(
                "multiple_faces", f"{len(counted)} faces each on at least {self.min_track_share:.0%} of frames"
            )
        if rejected is None:
            rejected = self._examine(frames, tracks[main], dense[main], result)
        if several and self.multiple_faces == "keep":
            # Any of the faces may be the speaker: every one the rules pass is a candidate, and the
            # sync stage picks the one that speaks. The longest track passing them goes first.
            candidates = [] if rejected else [result]
            for i in (i for i in counted if i != main):
                face = FaceResult(backend=_BACKEND, num_faces=len(counted))
                if not (
                    self._covered(dense[i], present[i], clip_height, face)
                    or self._examine(frames, tracks[i], dense[i], face)
                ):
                    candidates.append(face)
            if candidates:
                result = dataclasses.replace(candidates[0], candidates=candidates[1:])
                rejected = None
        faced = _with_face(item, result)
        return faced if rejected is None else dataclasses.replace(rejected, measured=faced)

    def _covered(self, boxes: np.ndarray, share: float, clip_height: int, face: FaceResult) -> Rejected | None:
        """Records where the track is and how tall, then the presence rule. Measurements are
        recorded before the rules, so a rejected row says what was measured."""
        face.coverage = share
        face.size_px = float(np.nanmedian((boxes[:, 3] - boxes[:, 1]) * clip_height))
        if share < self.min_face_coverage:
            return Rejected(
                "no_face", f"the face is visible on {share:.0%} of frames, minimum {self.min_face_coverage:.0%}"
            )
        return None

    def _examine(self, frames: np.ndarray, track, boxes: np.ndarray, face: FaceResult) -> Rejected | None:
        """The rest of the face rules for a track that is present enough, measuring it into `face`."""
        if face.size_px < self.min_face_px:
            return Rejected(
                "face_too_small", f"median face height {face.size_px:.0f} px, minimum {self.min_face_px:.0f} px"
            )
        touching = np.nanmean(
            (boxes[:, 0] < 0.005) | (boxes[:, 1] < 0.005) | (boxes[:, 2] > 0.995) | (boxes[:, 3] > 0.995)
        )
        if touching > self.max_cut_off_share:
            return Rejected("face_cut_off", f"the face touches the frame's edge on {touching:.0%} of frames")
        meshed = self._tracker.landmarks(frames, boxes)
        if meshed is None:
            return Rejected("no_face", "the face mesh found no landmarks on the tracked face")
        landmarks, seen = meshed
        self._measure(frames, boxes, seen, landmarks, face)
        if abs(face.yaw) > self.max_head_yaw:
            return Rejected("profile_face", f"median head yaw {face.yaw:.0f} degrees, maximum {self.max_head_yaw:.0f}")
        if face.sharpness < self.min_face_sharpness:
            return Rejected("low_quality", f"face sharpness {face.sharpness:.1f}, minimum {self.min_face_sharpness}")
        low, high = self.face_brightness_range
        if not low <= face.brightness <= high:
            return Rejected("low_quality", f"face brightness {face.brightness:.0f}, allowed {low:.0f}-{high:.0f}")
        self._identify(frames, landmarks, face)
        if face.identity_consistency is not None and face.identity_consistency < self._min_consistency:
            return Rejected(
                "identity_changed",
                f"identity consistency {face.identity_consistency:.3f}, minimum {self._min_consistency:g} "
                f"({face.identity_backend})",
            )
        return None

    def _measure(self, frames, boxes, seen, landmarks, result: FaceResult) -> None:
        num_frames, height, width = frames.shape[:3]
        pixels = landmarks[..., :2] * np.array([width, height], np.float32)
        sampled = range(0, num_frames, max(1, self.measure_every))
        poses, sharpness, brightness = [], [], []
        for t in sampled:
            poses.append(_head_pose(landmarks[t], width, height))
            box = (
                boxes[t]
                if not np.isnan(boxes[t, 0])
                else np.array([*pixels[t].min(0) / (width, height), *pixels[t].max(0) / (width, height)])
            )
            x0, y0, x1, y1 = square_crop(box, width, height, 1.0)
            grey = cv2.cvtColor(
                cv2.resize(frames[t, y0:y1, x0:x1], (128, 128), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
            )
            sharpness.append(float(cv2.Laplacian(grey, cv2.CV_64F).var()))
            brightness.append(float(grey.mean()))
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1) / np.maximum(boxes[1:, 3] - boxes[1:, 1], 1e-6)
        yaw, pitch, roll = np.median(np.array(poses), axis=0)
        data = FaceTrackData(
            landmarks=landmarks.astype(np.float16),
            boxes=boxes,
            detected=seen,
            mouth_opening=mouth_opening(landmarks, width, height),
            crop_box=self._clip_crop_box(boxes),
        )
        result.yaw, result.pitch, result.roll = float(yaw), float(pitch), float(roll)
        result.jitter = float(np.nanmedian(steps)) if np.isfinite(steps).any() else 0.0
        result.sharpness = float(np.median(sharpness))
        result.brightness = float(np.median(brightness))
        result.track = data

    def _clip_crop_box(self, boxes: np.ndarray) -> np.ndarray:
        """One box around every position of the face in the clip, grown like the mesh crop."""
        union = np.array(
            [np.nanmin(boxes[:, 0]), np.nanmin(boxes[:, 1]), np.nanmax(boxes[:, 2]), np.nanmax(boxes[:, 3])]
        )
        centre, half = (union[:2] + union[2:]) / 2, (union[2:] - union[:2]) * self.crop_scale / 2
        return np.clip(np.concatenate([centre - half, centre + half]), 0.0, 1.0).astype(np.float32)

    def identity_picks(self, num_frames: int) -> np.ndarray:
        """The frames embedded for identity: `identity_samples`, evenly spread, first and last included."""
        return np.linspace(0, num_frames - 1, min(self.identity_samples, num_frames)).round().astype(int)

    def _identify(self, frames, landmarks, result: FaceResult) -> None:
        keypoints = _identity_keypoints(frames, landmarks)
        picks = self.identity_picks(len(frames))
        embeddings = self._identity.embed([(frames[t], keypoints[t]) for t in picks])
        result.identity_backend = self._identity.name
        if embeddings is None:
            return
        mean = embeddings.mean(axis=0)
        mean /= max(np.linalg.norm(mean), 1e-12)
        result.identity_embedding = mean.astype(np.float32)
        result.identity_consistency = identity_consistency(embeddings)

    def _identity_change(self, frames: np.ndarray, face: FaceResult) -> int | None:
        """The first frame of the second person in a clip whose face changed person: between the two
        sampled frames around the worst split, bisected by which side's mean identity each frame is
        closer to (a few embeddings more). None when a frame's face cannot be embedded."""
        keypoints = _identity_keypoints(frames, face.track.landmarks)
        picks = self.identity_picks(len(frames))

        def embed(indices) -> np.ndarray | None:
            return self._identity.embed([(frames[t], keypoints[t]) for t in indices])

        embeddings = embed(picks)
        if embeddings is None:
            return None
        split = int(np.argmin(split_similarities(embeddings)))
        before, after = (_unit(part.mean(axis=0)) for part in (embeddings[: split + 1], embeddings[split + 1 :]))
        first, second = int(picks[split]), int(picks[split + 1])  # the last of the first person, a frame of the second
        while second - first > 1:
            middle = (first + second) // 2
            found = embed([middle])
            if found is None:
                return None
            first, second = (middle, second) if found[0] @ before >= found[0] @ after else (first, middle)
        return second


def _identity_keypoints(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The identity models' 5 keypoints of every frame, in pixels of `frames` (float32)."""
    height, width = frames.shape[1:3]
    return landmarks[:, IDENTITY_KEYPOINTS, :2].astype(np.float32) * np.array([width, height], np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _with_face(item: CandidateClip, face: FaceResult) -> CandidateClip:
    """`item` with `face` and the backends that measured it."""
    backends = {**item.backends, "face": _BACKEND}
    if face.track is not None:
        backends["identity"] = face.identity_backend
    return dataclasses.replace(item, face=face, backends=backends)


def identity_consistency(embeddings: np.ndarray) -> float:
    """How alike the face stays through a clip: over every split of the time-ordered embeddings into
    a before and an after, the lowest cosine similarity of their means. One person measures close to
    the backend's same-person similarity wherever it is split; a change of person, at the split
    nearest the change, the two people's. (The similarity of each frame to the clip's mean cannot tell
    them apart with a model whose different people are already close: half of each person pulls the
    mean to within a few hundredths of both.)"""
    similarities = split_similarities(embeddings)
    return float(similarities.min()) if len(similarities) else 1.0


def split_similarities(embeddings: np.ndarray) -> np.ndarray:
    """For each split of the time-ordered embeddings after row i, the cosine similarity of the
    means before and after it."""
    before = np.cumsum(embeddings, axis=0)[:-1]
    after = embeddings.sum(axis=0) - before
    return (before * after).sum(axis=1) / np.maximum(
        np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1), 1e-12
    )
