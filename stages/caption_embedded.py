"""The embedded captioner: one deterministic sentence from what the pipeline measured, no model.

"A close-up of one person speaking English, facing the camera, head still; even lighting, blue
background; static camera." Each part comes from a measurement, and a part whose measurement is
missing is left out rather than guessed:

* Shot size: the tracked face's median box height (`face.size_px`) as a share of the frame's
  height. A face box (brow to chin) is about a ninth of a standing adult's height, so a frame
  showing head and shoulders has the face at about half its height, chest up about a third, waist
  up about a fifth, knees up about an eighth, the whole body about a tenth or less. Thresholds
  (`SHOT_SIZES`): close-up >= 0.42, medium close-up >= 0.27, medium shot >= 0.16, medium long
  shot >= 0.09, wide shot below (GRID: 0.46, the 1080x1920 half-body portrait seated: 0.11).
* People: `face.num_faces`; with several, which one (left, middle, right of the frame) the
  sentence is about: the tracked face, the speaker when the sync stage chose one.
* Speaking: only from the sync stage. It measured an audio-lip offset (it does only when a mouth
  moves with speech present): "speaking", with the transcript's language when there is one;
  it measured no speech or a still mouth: "not speaking"; no sync result: nothing is said.
* Head pose: the face stage's median yaw, pitch and roll. |yaw| < 15 degrees is facing the
  camera, 15-30 turned slightly, beyond turned (the face stage rejects beyond 50); |pitch| >= 20
  looking up or down; |roll| >= 10 head tilted. Sides are the frame's: yaw < 0 is the face
  turned towards the frame's right, roll > 0 the top of the head leaning to the frame's right,
  pitch > 0 the chin down (mediapipe's mesh depth grows away from the camera).
* Head motion: the face-mesh centre's displacement between consecutive keyframes, minus where
  the camera motion (below) moved that point, in face heights per second, median over the pairs:
  < 0.05 still, < 0.25 moving slightly, else moving (GRID 0.01, the portrait 0.11).
* Lighting: dim when the face's median luma (`face.brightness`) is under 70, bright over 180;
  from one side when the two halves of the face (its band from eyes to mouth, on the keyframes)
  differ in mean luma by 15% or more of their sum, the side being the brighter one; else even.
* Background: pixels of the keyframes beside and above the face (rows above the chin, outside
  the face grown by half its size for hair and ears), each named by hue, saturation and value
  (`colour_classes`). One colour covering >= 60% names the background; two covering >= 70% together
  are both named; otherwise it is multicoloured.
* Camera: consecutive keyframes (about a second apart) are registered on the picture outside the
  face: corners (`cv2.goodFeaturesToTrack`, the face grown by a quarter masked out) are tracked
  with pyramidal Lucas-Kanade, kept when tracking back lands within a pixel of the start, and a
  similarity transform (shift, rotation, scale) is fitted to them with RANSAC
  (`cv2.estimateAffinePartial2D`), the usual video-stabilization registration. It gives the
  picture's motion per second: the frame centre's shift as a share of the frame's width and
  height, and the log of the scale. Median over pairs: zooming when the scale changes by 3% a
  second or more, else panning or tilting when the picture shifts by 3% of the frame a second or
  more (the camera turns against the picture's motion: the picture moving left is a pan to the
  right), static when no pair moves that much, else a moving camera. Pairs with fewer than
  `MIN_TRACKED` points agreeing (a plain wall) are not used; with none left, nothing is said.

On a keyframe, "the face" is the extent of the tracked face's mesh landmarks on that frame (the
face stage stores them for every frame) and its centre their mean.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from schemas.records import FPS
from stages.caption_models import CaptionInput
from stages.keyframes import decode_keyframe

SHOT_SIZES = (
    (0.42, "close-up"),
    (0.27, "medium close-up"),
    (0.16, "medium shot"),
    (0.09, "medium long shot"),
    (0.0, "wide shot"),
)
FACING_YAW, TURNED_YAW, PITCHED, TILTED = 15.0, 30.0, 20.0, 10.0  # degrees
HEAD_STILL, HEAD_SLIGHT = 0.05, 0.25  # face heights per second
DIM, BRIGHT, SIDE_LIT = 70.0, 180.0, 0.15
ONE_COLOUR, TWO_COLOURS = 0.6, 0.7
CAMERA_MOTION = 0.03  # share of the frame (or log scale) per second
MIN_TRACKED = 10
NUMBERS = ("one", "two", "three", "four", "five", "six")

# Hue ranges in degrees, upper bounds (red wraps around); sky blues count as blue.
_HUES = (
    (15, "red"),
    (45, "orange"),
    (70, "yellow"),
    (160, "green"),
    (185, "cyan"),
    (255, "blue"),
    (290, "purple"),
    (345, "pink"),
    (361, "red"),
)


@dataclass(frozen=True)
class Motion:
    """The picture's motion between two keyframes, per second: the frame centre's shift as a share
    of the frame's width (`dx`, > 0 rightwards) and height (`dy`, > 0 downwards), and the log of the
    scale change (`zoom`, > 0 growing)."""

    dx: float
    dy: float
    zoom: float
    transform: np.ndarray  # (2, 3) the fitted similarity, in keyframe pixels


@dataclass(frozen=True)
class _Keyframes:
    """A clip's keyframes decoded, with the tracked face on each, in keyframe pixels."""

    frames: list[np.ndarray]  # RGB
    seconds: np.ndarray  # (K - 1,) between consecutive keyframes
    centres: np.ndarray  # (K, 2) the face mesh's mean point
    boxes: np.ndarray  # (K, 4) x0, y0, x1, y1: the face mesh's extent

    @classmethod
    def of(cls, clip: CaptionInput) -> _Keyframes:
        track = clip.face.track
        frames = [decode_keyframe(k) for k in clip.keyframes]
        height, width = frames[0].shape[:2]
        indices = np.array([min(round(k.time_s * FPS), track.num_frames - 1) for k in clip.keyframes])
        points = track.landmarks[indices, :, :2].astype(np.float32) * (width, height)
        boxes = np.clip(
            np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1), 0, (width, height, width, height)
        )
        return cls(frames, np.diff(indices) / FPS, points.mean(axis=1), boxes)


class EmbeddedCaptioner:
    """Template captions from the pipeline's measurements (see the module docstring)."""

    name = "embedded"

    def caption(self, batch: Sequence[CaptionInput]) -> list[str]:
        return [describe(clip) for clip in batch]


def describe(clip: CaptionInput) -> str:
    face = clip.face
    if face is None or face.track is None:
        raise ValueError("the embedded captioner needs the face stage's tracked face")
    keyframes = _Keyframes.of(clip)
    motions = [
        camera_motion(a, b, keyframes.boxes[i : i + 2], seconds)
        for i, (a, b, seconds) in enumerate(zip(keyframes.frames, keyframes.frames[1:], keyframes.seconds))
    ]
    who = f"A {shot_size(face.size_px / clip.height)} of {_people(face.num_faces)}"
    if face.num_faces > 1:
        who += f", the one {_side(float(np.median(keyframes.centres[:, 0])) / keyframes.frames[0].shape[1])}"
    talking = speaking(clip)
    if talking:
        who += f" {talking}"
    person = [who, head_pose(face.yaw, face.pitch, face.roll), head_motion(keyframes, motions)]
    scene = [lighting(face.brightness, keyframes), background(keyframes)]
    parts = [", ".join(filter(None, person)), ", ".join(filter(None, scene)), camera(motions)]
    return "; ".join(filter(None, parts)) + "."


def shot_size(face_height_share: float) -> str:
    return next(name for threshold, name in SHOT_SIZES if face_height_share >= threshold)


def _people(count: int) -> str:
    return f"{NUMBERS[count - 1] if count <= len(NUMBERS) else count} {'person' if count == 1 else 'people'}"


def speaking(clip: CaptionInput) -> str | None:
    if clip.sync is None:
        return None
    if clip.sync.offset_ms is None:
        return "not speaking"
    return f"speaking {language_name(clip.language)}" if clip.language else "speaking"


@functools.cache
def _language_names() -> dict[str, str]:
    """The codes Whisper reports, with their English names: openai-whisper's table, read from its
    tokenizer module alone, because importing the package loads torch (2.4 s and 240 MB a worker)."""
    package = importlib.util.find_spec("whisper")
    path = Path(package.submodule_search_locations[0]) / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("talkcurate_whisper_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LANGUAGES


def language_name(code: str) -> str:
    name = _language_names().get(code)
    return name.title() if name else code


def _side(x: float) -> str:
    """Where a point at `x` (share of the frame's width) lies."""
    return "on the left" if x < 0.4 else "on the right" if x > 0.6 else "in the middle"


def head_pose(yaw: float, pitch: float, roll: float) -> str:
    side = "right" if yaw < 0 else "left"
    parts = [
        "facing the camera"
        if abs(yaw) < FACING_YAW
        else f"turned slightly to the {side}"
        if abs(yaw) < TURNED_YAW
        else f"turned to the {side}"
    ]
    if abs(pitch) >= PITCHED:
        parts.append("and looking down" if pitch > 0 else "and looking up")
    if abs(roll) >= TILTED:
        parts.append(f"with the head tilted to the {'right' if roll > 0 else 'left'}")
    return " ".join(parts)


def head_motion(keyframes: _Keyframes, motions: list[Motion | None]) -> str | None:
    """Net head displacement between keyframes beyond where the camera's motion took that point
    (where the camera could not be measured, the displacement in the frame)."""
    speeds = []
    for i, (motion, seconds) in enumerate(zip(motions, keyframes.seconds)):
        start = keyframes.centres[i]
        expected = start if motion is None else motion.transform[:, :2] @ start + motion.transform[:, 2]
        height = keyframes.boxes[i, 3] - keyframes.boxes[i, 1]
        speeds.append(float(np.linalg.norm(keyframes.centres[i + 1] - expected)) / height / seconds)
    if not speeds:
        return None
    speed = float(np.median(speeds))
    return "head still" if speed < HEAD_STILL else "head moving slightly" if speed < HEAD_SLIGHT else "head moving"


def lighting(brightness: float, keyframes: _Keyframes) -> str:
    level = "dim " if brightness < DIM else "bright " if brightness > BRIGHT else ""
    contrasts = []
    for frame, (x0, y0, x1, y1) in zip(keyframes.frames, keyframes.boxes):
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        inset, middle = 0.1 * (x1 - x0), (x0 + x1) / 2
        band = grey[int(y0 + 0.25 * (y1 - y0)) : int(y0 + 0.85 * (y1 - y0))]  # eyes to mouth: no hair, no neck
        left = band[:, int(x0 + inset) : int(middle)]
        right = band[:, int(middle) : int(x1 - inset)]
        if left.size and right.size:
            contrasts.append((left.mean() - right.mean()) / max(left.mean() + right.mean(), 1e-6))
    contrast = float(np.median(contrasts)) if contrasts else 0.0
    if abs(contrast) >= SIDE_LIT:
        return f"{level}lighting from the {'left' if contrast > 0 else 'right'}"
    return f"{level or 'even '}lighting"


COLOURS = ("black", "grey", "white", "brown", *dict.fromkeys(name for _, name in _HUES))


def colour_classes(rgb: np.ndarray) -> np.ndarray:
    """An index into `COLOURS` for each RGB pixel (N, 3) uint8: black (value < 0.2), white or grey
    (saturation < 0.2), else by hue (`_HUES`), dark (value < 0.6) reds, oranges and yellows brown."""
    hsv = cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3)
    hue, saturation, value = hsv[:, 0].astype(np.float32) * 360 / 256, hsv[:, 1] / 255, hsv[:, 2] / 255
    bounds, names = zip(*_HUES)
    by_hue = np.array([COLOURS.index(name) for name in names])[np.searchsorted(bounds, hue, side="right")]
    warm = np.isin(by_hue, [COLOURS.index(name) for name in ("red", "orange", "yellow")])
    return np.select(
        [value < 0.2, (saturation < 0.2) & (value > 0.8), saturation < 0.2, warm & (value < 0.6)],
        [COLOURS.index("black"), COLOURS.index("white"), COLOURS.index("grey"), COLOURS.index("brown")],
        by_hue,
    )


def background(keyframes: _Keyframes) -> str | None:
    """The colours beside and above the face: rows above the chin, outside the face grown by half
    its size (hair, ears). Every second pixel of every second row is enough."""
    pixels = []
    for frame, (x0, y0, x1, y1) in zip(keyframes.frames, keyframes.boxes):
        grow_x, grow_y = 0.5 * (x1 - x0), 0.5 * (y1 - y0)
        beside = np.ones(frame.shape[:2], bool)
        beside[int(y1) :] = False  # below the chin: the body
        beside[int(max(0, y0 - grow_y)) :, int(max(0, x0 - grow_x)) : int(x1 + grow_x)] = False
        pixels.append(frame[::2, ::2][beside[::2, ::2]])
    pixels = np.concatenate(pixels)
    if not len(pixels):
        return None
    counts = np.bincount(colour_classes(pixels), minlength=len(COLOURS))
    order = np.argsort(-counts, kind="stable")
    shares = counts[order] / len(pixels)
    if shares[0] >= ONE_COLOUR:
        return f"{COLOURS[order[0]]} background"
    if shares[0] + shares[1] >= TWO_COLOURS:
        return f"{COLOURS[order[0]]} and {COLOURS[order[1]]} background"
    return "multicoloured background"


def camera_motion(first: np.ndarray, second: np.ndarray, faces: np.ndarray, seconds: float) -> Motion | None:
    """The picture's motion from `first` to `second` outside the face boxes `faces` (2, 4) in pixels
    (see the module docstring); None when too few points agree."""
    height, width = first.shape[:2]
    mask = np.full((height, width), 255, np.uint8)
    for x0, y0, x1, y1 in faces:
        grow_x, grow_y = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
        cv2.rectangle(mask, (int(x0 - grow_x), int(y0 - grow_y)), (int(x1 + grow_x), int(y1 + grow_y)), 0, -1)
    grey_first, grey_second = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (first, second))
    corners = cv2.goodFeaturesToTrack(grey_first, maxCorners=200, qualityLevel=0.01, minDistance=8, mask=mask)
    if corners is None or len(corners) < MIN_TRACKED:
        return None
    flow = dict(winSize=(21, 21), maxLevel=4)
    moved, found, _ = cv2.calcOpticalFlowPyrLK(grey_first, grey_second, corners, None, **flow)
    back, found_back, _ = cv2.calcOpticalFlowPyrLK(grey_second, grey_first, moved, None, **flow)
    good = (found[:, 0] == 1) & (found_back[:, 0] == 1) & (np.linalg.norm(back - corners, axis=2)[:, 0] < 1.0)
    if good.sum() < MIN_TRACKED:
        return None
    transform, inliers = cv2.estimateAffinePartial2D(
        corners[good], moved[good], method=cv2.RANSAC, ransacReprojThreshold=2.0
    )
    if transform is None or inliers.sum() < MIN_TRACKED:
        return None
    centre = np.array([width / 2, height / 2])
    shift = transform[:, :2] @ centre + transform[:, 2] - centre
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    return Motion(shift[0] / width / seconds, shift[1] / height / seconds, float(np.log(scale)) / seconds, transform)


def camera(motions: list[Motion | None]) -> str | None:
    measured = [m for m in motions if m is not None]
    if not measured:
        return None
    dx, dy, zoom = (float(np.median([getattr(m, axis) for m in measured])) for axis in ("dx", "dy", "zoom"))
    if abs(zoom) >= CAMERA_MOTION:
        return "camera zooming in" if zoom > 0 else "camera zooming out"
    if max(abs(dx), abs(dy)) >= CAMERA_MOTION:  # the camera turns against the picture's motion
        if abs(dx) >= abs(dy):
            return f"camera panning {'left' if dx > 0 else 'right'}"
        return f"camera tilting {'up' if dy > 0 else 'down'}"
    if all(max(abs(m.dx), abs(m.dy), abs(m.zoom)) < CAMERA_MOTION for m in measured):
        return "static camera"
    return "moving camera"
