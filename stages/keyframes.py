"""Keyframes: a few small JPEG frames of each clip, for the caption stage.

Captioning runs in a later worker group than the one that holds the clip's analysis frames, and
those frames (about 110 MB for a 10 s clip) must not travel between workers. This stage, last in
the group that holds them, samples a handful at about `fps` and JPEG-encodes them at most
`max_side` pixels on the long side (a few tens of KB each), so only clips kept so far pay for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from core.config import option
from schemas.records import FPS, CandidateClip
from schemas.text import Keyframe
from stages.base import Resources, Stage


def keyframe_indices(num_frames: int, fps: float, max_frames: int) -> np.ndarray:
    """Frames about `1 / fps` seconds apart, evenly spread from the first frame to the last: at
    least three (first, middle, last) and at most `max_frames`, never more than the clip has."""
    wanted = max(3, 1 + int(num_frames / FPS * fps))
    count = min(wanted, max_frames, num_frames)
    return np.unique(np.linspace(0, num_frames - 1, count).round().astype(int))


def encode_keyframe(frame: np.ndarray, time_s: float, max_side: int, quality: int) -> Keyframe:
    """An RGB frame as a JPEG keyframe, scaled down (area interpolation) to `max_side` on the long side."""
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a {width}x{height} frame")
    return Keyframe(time_s=time_s, jpeg=data.tobytes())


def decode_keyframe(keyframe: Keyframe) -> np.ndarray:
    """A keyframe's picture as an RGB array (h, w, 3) uint8."""
    picture = cv2.imdecode(np.frombuffer(keyframe.jpeg, np.uint8), cv2.IMREAD_COLOR)
    if picture is None:
        raise ValueError(f"the keyframe at {keyframe.time_s:.2f} s is not a readable JPEG")
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)


@dataclass
class KeyframesStage(Stage[CandidateClip, CandidateClip]):
    """Sample a few analysis frames of each clip as small JPEGs for the caption stage."""

    name: ClassVar[str] = "keyframes"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)
    uses_frames: ClassVar[bool] = True

    fps: float = option(1.0, "Keyframes per second of clip (evenly spread, first and last frame included).")
    max_frames: int = option(8, "At most this many keyframes per clip (at least 3: first, middle and last).")
    max_side: int = option(448, "Long side of the keyframes in pixels (the analysis frames are scaled down to it).")
    quality: int = option(85, "JPEG quality of the keyframes (1-100).")

    def validate(self) -> None:
        if self.fps <= 0:
            raise ValueError("keyframes.fps must be positive")
        if self.max_frames < 3:
            raise ValueError("keyframes.max_frames must be at least 3 (first, middle and last frame)")
        if self.max_side < 16 or not 1 <= self.quality <= 100:
            raise ValueError("keyframes.max_side must be at least 16 and keyframes.quality between 1 and 100")

    def process(self, item: CandidateClip) -> CandidateClip:
        frames = item.frames
        if frames is None or len(frames) == 0:
            raise ValueError("the keyframes stage needs the clip's analysis frames (normalize.analysis_long_side > 0)")
        keyframes = [
            encode_keyframe(frames[i], i / FPS, self.max_side, self.quality)
            for i in keyframe_indices(len(frames), self.fps, self.max_frames)
        ]
        return dataclasses.replace(item, keyframes=keyframes)
