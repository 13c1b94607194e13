"""What the face stage stores per sample, and how a loader turns it into masks.

`KEY.face.npz` holds, for every frame of the clip, the tracked face's 478 mediapipe face-mesh
landmarks as float16 (x, y in [0, 1] of the clip's width and height; z relative depth), its
box, and the mouth-opening series. `face_and_lip_masks` rasterizes a face mask (the face oval)
and a lip mask (the outer lip contour, dilated) for every frame at any resolution: the trainer's
facial mask loss uses exactly this function.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa

NUM_LANDMARKS = 478  # 468 mesh points plus 10 iris points (refine_landmarks)

# Closed contours of the face mesh topology (mediapipe face_mesh_connections), in order.
FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
LIPS_OUTER = (0, 37, 39, 40, 185, 61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267)
LIPS_INNER = (13, 82, 81, 80, 191, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312)
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
FOREHEAD_TOP, CHIN = 10, 152


SAME_PERSON_COSINE = {"dlib-resnet": 0.96, "insightface": 0.5}
"""Cosine similarity of two clips' identity embeddings from which they are one person, per backend.
dlib-resnet, measured on the development corpus's people (mean of 5 frames per clip): one person's
clips 0.985 and up, two people's 0.94 at most; a trained ArcFace: one person's well above 0.5, two
people's near 0."""


def same_person_cosine(backend: str) -> float:
    """SAME_PERSON_COSINE of an identity backend."""
    if backend not in SAME_PERSON_COSINE:
        raise ValueError(
            f"no same-person threshold for identity backend {backend!r} (known: {sorted(SAME_PERSON_COSINE)})"
        )
    return SAME_PERSON_COSINE[backend]


@dataclass
class FaceTrackData:
    """Per-frame data of the tracked face of one clip."""

    landmarks: np.ndarray  # (T, 478, 3) float16: x, y in [0, 1] of the frame; z relative depth
    boxes: np.ndarray  # (T, 4) float32: x0, y0, x1, y1 in [0, 1]; NaN where no face was seen
    detected: np.ndarray  # (T,) bool: the face mesh found the tracked face on this frame (else interpolated)
    mouth_opening: np.ndarray  # (T,) float32: inner-lip gap / face height
    crop_box: np.ndarray  # (4,) float32: one square-ish box around the face for the whole clip, in [0, 1]

    @property
    def num_frames(self) -> int:
        return len(self.landmarks)


FACE_ARRAYS_TYPE = pa.struct(
    [
        pa.field("landmarks", pa.list_(pa.list_(pa.list_(pa.float16())))),
        pa.field("boxes", pa.list_(pa.list_(pa.float32()))),
        pa.field("detected", pa.list_(pa.bool_())),
        pa.field("mouth_opening", pa.list_(pa.float32())),
        pa.field("crop_box", pa.list_(pa.float32())),
    ]
)
"""`KEY.face.npz` as nested lists, for readers that type the members of a sample (a dataset card)."""


def encode_face_npz(data: FaceTrackData) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        landmarks=data.landmarks.astype(np.float16),
        boxes=data.boxes.astype(np.float32),
        detected=data.detected.astype(bool),
        mouth_opening=data.mouth_opening.astype(np.float32),
        crop_box=data.crop_box.astype(np.float32),
    )
    return buffer.getvalue()


def decode_face_npz(data: bytes) -> FaceTrackData:
    with np.load(io.BytesIO(data)) as npz:
        return FaceTrackData(
            **{name: npz[name] for name in ("landmarks", "boxes", "detected", "mouth_opening", "crop_box")}
        )


def mouth_opening(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inner-lip gap divided by face height (forehead to chin), per frame, in pixel geometry."""
    scale = np.array([width, height], np.float32)
    points = landmarks[..., :2].astype(np.float32) * scale
    gap = np.linalg.norm(points[:, UPPER_LIP_INNER] - points[:, LOWER_LIP_INNER], axis=-1)
    face = np.linalg.norm(points[:, FOREHEAD_TOP] - points[:, CHIN], axis=-1)
    return gap / np.maximum(face, 1e-6)


def face_and_lip_masks(
    landmarks: np.ndarray, height: int, width: int, lip_dilation: float = 0.04
) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) uint8 face and lip masks (1 inside) from stored landmarks, at any resolution.

    The lip mask is the outer lip contour grown by `lip_dilation` times the face height, so it
    covers the mouth's surroundings that move with speech, like Hallo3's lip masks.
    """
    scale = np.array([width, height], np.float32)
    points = np.nan_to_num(landmarks[..., :2].astype(np.float32)) * scale
    face = np.zeros((len(points), height, width), np.uint8)
    lips = np.zeros_like(face)
    for t, frame_points in enumerate(points):
        cv2.fillPoly(face[t], [np.round(frame_points[list(FACE_OVAL)]).astype(np.int32)], 1)
        cv2.fillPoly(lips[t], [np.round(frame_points[list(LIPS_OUTER)]).astype(np.int32)], 1)
        face_height = np.linalg.norm(frame_points[FOREHEAD_TOP] - frame_points[CHIN])
        radius = int(round(lip_dilation * face_height))
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            lips[t] = cv2.dilate(lips[t], kernel)
    return face, lips


@dataclass
class FaceResult:
    """The face stage's findings for one clip; also the source of its manifest columns."""

    backend: str  # detector backends that ran, e.g. "mediapipe+retinaface"
    num_faces: int  # tracks present on at least `min_track_share` of the frames
    # Measurements of the tracked face; NaN when the clip was rejected before they were taken.
    coverage: float = float("nan")  # share of frames the tracked face is on (gaps bridged)
    size_px: float = float("nan")  # median face box height in clip pixels
    yaw: float = float("nan")  # median head pose in degrees
    pitch: float = float("nan")
    roll: float = float("nan")
    jitter: float = float("nan")  # median frame-to-frame box centre motion / box height
    sharpness: float = float("nan")  # median variance of the Laplacian of the face crop (128 px)
    brightness: float = float("nan")  # median luma of the face crop, 0-255
    track: FaceTrackData | None = None
    identity_backend: str = "none"
    identity_embedding: np.ndarray | None = None  # (128,) dlib-resnet or (512,) insightface, float32, L2-normalized
    identity_consistency: float | None = None  # stages/face.py identity_consistency: 1 = one face throughout
    # When several faces count and the face stage keeps them: the other faces the rules pass, each
    # with its own track and measurements, for the sync stage to find the speaker among.
    candidates: list[FaceResult] = field(default_factory=list)
