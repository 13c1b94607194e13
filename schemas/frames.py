"""What the normalize stage hands the scene-cut stage in the same worker: decoded frames and the
encoder settings for the clips cut from them (never pickled: the pictures hold decoder memory)."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np


@dataclass
class NormalizedFrame:
    index: int  # on the source's 25 fps grid
    picture: av.VideoFrame  # yuv420p at the output size, ready to encode
    small: np.ndarray | None  # BGR at the detection size requested by the consumer
    analysis: np.ndarray | None  # RGB at the analysis size, shared with frame-level stages (faces)


@dataclass(frozen=True)
class EncoderSettings:
    codec: str
    crf: int
    preset: str
