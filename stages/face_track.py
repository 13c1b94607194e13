"""Linking per-frame face detections into tracks (greedy IoU matching), bridging short gaps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.face_models import Detection


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
