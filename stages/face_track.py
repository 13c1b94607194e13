"""Following faces through frames: detections (mediapipe, RetinaFace) linked into tracks by greedy
IoU matching with short gaps bridged, and the face mesh's landmarks along a track. Detection can stop
early, once no track could cover enough of the frames any more."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from stages.face_models import Detection, FaceDetector, FaceMesh, MediapipeDetector, RetinaFaceDetector, quiet_stderr


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def merge_backends(primary: list[Detection], secondary: list[Detection], same_face_iou: float = 0.3) -> list[Detection]:
    """The primary detector's faces plus the secondary's that overlap none of them."""
    return primary + [d for d in secondary if all(iou(d.box, p.box) < same_face_iou for p in primary)]


@dataclass
class Track:
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]

    def dense_boxes(self, num_frames: int, max_gap: int) -> np.ndarray:
        """(T, 4) boxes with gaps of at most `max_gap` frames interpolated; NaN elsewhere."""
        boxes = np.full((num_frames, 4), np.nan, np.float32)
        for (f0, b0), (f1, b1) in zip(zip(self.frames, self.boxes), zip(self.frames[1:], self.boxes[1:])):
            boxes[f0] = b0
            if 1 < f1 - f0 <= max_gap + 1:
                for f in range(f0 + 1, f1):
                    w = (f - f0) / (f1 - f0)
                    boxes[f] = (1 - w) * b0 + w * b1
        boxes[self.frames[-1]] = self.boxes[-1]
        return boxes


def link(detections: list[list[Detection]], min_iou: float, max_gap: int) -> list[Track]:
    """Greedy frame-to-frame matching by IoU; a track unseen for more than `max_gap` frames ends."""
    active: list[Track] = []
    finished: list[Track] = []
    for frame, faces in enumerate(detections):
        for track in [t for t in active if frame - t.last_frame > max_gap + 1]:
            active.remove(track)
            finished.append(track)
        pairs = sorted(
            (
                (iou(track.boxes[-1], face.box), ti, fi)
                for ti, track in enumerate(active)
                for fi, face in enumerate(faces)
            ),
            reverse=True,
        )
        used_tracks, used_faces = set(), set()
        for overlap, ti, fi in pairs:
            if overlap < min_iou:
                break
            if ti in used_tracks or fi in used_faces:
                continue
            active[ti].frames.append(frame)
            active[ti].boxes.append(faces[fi].box)
            used_tracks.add(ti)
            used_faces.add(fi)
        for fi, face in enumerate(faces):
            if fi not in used_faces:
                active.append(Track([frame], [face.box]))
    return finished + active


class ReachableFrames:
    """How many of a clip's frames a face track can still cover while detection goes through the
    detection frames in order. A track covers its detection frames and the frames between two of
    them at most `max_gap` + 1 apart, so a frame is out of reach once no face found on or before it
    can be bridged to a face on or after it. Whatever the frames not yet seen hold, no track of the
    full pass covers more than `count` frames."""

    def __init__(self, num_frames: int, max_gap: int):
        self.count = num_frames
        self._num_frames = num_frames
        self._max_gap = max_gap
        self._settled = 0  # the frames before this one are counted in or out for good
        self._last_face: int | None = None

    def add(self, frame: int, found: bool, next_frame: int | None) -> None:
        """Detection saw `frame` (`found`: a face on it); `next_frame` is the next detection frame,
        None after the last. Detection frames are at most `max_gap` + 1 apart."""
        if found:
            # Frames still pending since the last face were in reach of this one, which bridges them.
            self._settled, self._last_face = frame + 1, frame
            return
        end = self._num_frames if next_frame is None else next_frame
        if next_frame is None or self._last_face is None or next_frame - self._last_face > self._max_gap + 1:
            self.count -= end - self._settled
            self._settled = end


@dataclass
class FaceDetections:
    """The faces detection found on a clip's frames (empty between detection frames and after
    `seen`), and at most how many frames a track of them can cover."""

    faces: list[list[Detection]]
    seen: int  # detection looked at the frames before this one: all of them, unless it stopped early
    reachable: int

    @property
    def stopped(self) -> bool:
        return self.seen < len(self.faces)


def square_crop(box: np.ndarray, width: int, height: int, scale: float) -> tuple[int, int, int, int]:
    """A square around the box in pixels, `scale` times its larger side, clipped to the frame."""
    cx, cy = (box[0] + box[2]) / 2 * width, (box[1] + box[3]) / 2 * height
    half = max((box[2] - box[0]) * width, (box[3] - box[1]) * height) * scale / 2
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(width, cx + half)), int(min(height, cy + half))
    return x0, y0, max(x1, x0 + 2), max(y1, y0 + 2)


@dataclass
class FaceTracker:
    """The face stage's detection, tracking and face mesh, without its clip rules, so lip editing
    finds a reference video's mouth as the face stage finds a clip's. The defaults are the face
    stage's; its options of the same names say what each does. `load` before `tracks`."""

    min_detection_confidence: float = 0.5
    detect_every: int = 2
    retinaface_every: int = 6
    retinaface_max_side: int = 320
    track_min_iou: float = 0.3
    max_gap_frames: int = 8
    crop_scale: float = 1.6
    mesh_size: int = 256

    def load(self) -> None:
        """Load the detectors (once per worker)."""
        self._mediapipe = MediapipeDetector(self.min_detection_confidence)
        self._retinaface = RetinaFaceDetector(self.min_detection_confidence, self.retinaface_max_side)

    def tracks(self, frames: np.ndarray) -> list[Track]:
        """The faces on `frames` (RGB, T x H x W x 3) linked into tracks."""
        return self.link(self.detect(frames).faces)

    def detect(self, frames: np.ndarray, min_coverage: float = 0.0) -> FaceDetections:
        """The faces on `frames`, with the loaded detectors; see `detect_faces`."""
        return self.detect_faces(frames, self._mediapipe, self._retinaface, min_coverage)

    def link(self, faces: list[list[Detection]]) -> list[Track]:
        """Per-frame detections linked into tracks."""
        return link(faces, self.track_min_iou, self.max_gap_frames)

    def longest_track_landmarks(self, frames: np.ndarray) -> np.ndarray | None:
        """(T, 478, 3) landmarks of the longest face track in `frames`, or None without a face: the
        sampler's editing mode masks a video's mouth with them, as the trainer's masks come from the
        stored ones."""
        tracks = self.tracks(frames)
        if not tracks:
            return None
        main = max(tracks, key=lambda track: len(track.frames))
        meshed = self.landmarks(frames, main.dense_boxes(len(frames), self.max_gap_frames))
        return None if meshed is None else meshed[0]

    def detection_frames(self, num_frames: int) -> list[int]:
        """The frames the detectors see: every `detect_every`-th and the last, so a track's boxes
        reach the clip's end."""
        picks = list(range(0, num_frames, self.detect_every))
        return picks + [num_frames - 1] if picks and picks[-1] != num_frames - 1 else picks

    def detect_faces(
        self, frames: Sequence[np.ndarray], mediapipe: FaceDetector, retinaface: FaceDetector, min_coverage: float = 0.0
    ) -> FaceDetections:
        """Per frame, the faces found; empty on the frames between detection frames. RetinaFace
        also looks at every `retinaface_every`-th frame and where mediapipe found nothing. Detection
        stops once no track can be present on `min_coverage` of the frames any more. The detectors
        are arguments so the benchmark's floor can time each one."""
        picks = self.detection_frames(len(frames))
        detections: list[list[Detection]] = [[] for _ in range(len(frames))]
        reach = ReachableFrames(len(frames), self.max_gap_frames)
        for n, index in enumerate(picks):
            faces = mediapipe.detect([frames[index]])[0]
            if not faces or (self.retinaface_every and index % self.retinaface_every == 0):
                faces = merge_backends(faces, retinaface.detect([frames[index]])[0])
            detections[index] = faces
            reach.add(index, bool(faces), picks[n + 1] if n + 1 < len(picks) else None)
            if reach.count / len(frames) < min_coverage:
                return FaceDetections(detections, index + 1, reach.count)
        return FaceDetections(detections, len(frames), reach.count)

    def landmarks(self, frames: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(T, 478, 3) landmarks in [0, 1] of the frame of the face in `boxes` (T, 4), and on which
        frames the mesh found the face; the frames it misses are interpolated."""
        num_frames, height, width = frames.shape[:3]
        landmarks = np.full((num_frames, 478, 3), np.nan, np.float32)
        with quiet_stderr():
            mesh = FaceMesh(self.min_detection_confidence)
            try:
                for t in range(num_frames):
                    if np.isnan(boxes[t, 0]):
                        continue
                    crop, (x0, y0, x1, y1) = self.mesh_crop(frames[t], boxes[t])
                    points = mesh.landmarks(crop)
                    if points is not None:
                        landmarks[t, :, 0] = (x0 + points[:, 0] * (x1 - x0)) / width
                        landmarks[t, :, 1] = (y0 + points[:, 1] * (y1 - y0)) / height
                        landmarks[t, :, 2] = points[:, 2] * (x1 - x0) / width  # depth in the same units as x
            finally:
                mesh.close()
        found = ~np.isnan(landmarks[:, 0, 0])
        if not found.any():
            return None
        times = np.arange(num_frames)
        flat = landmarks.reshape(num_frames, -1)
        for column in range(flat.shape[1]):
            flat[:, column] = np.interp(times, times[found], flat[found, column])
        return flat.reshape(num_frames, 478, 3), found

    def mesh_crop(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """What the face mesh sees of `frame` for the face in `box`: a `mesh_size` square crop, and
        where it lies in the frame (x0, y0, x1, y1 in pixels)."""
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = square_crop(box, width, height, self.crop_scale)
        crop = cv2.resize(frame[y0:y1, x0:x1], (self.mesh_size, self.mesh_size), interpolation=cv2.INTER_LINEAR)
        return crop, (x0, y0, x1, y1)
