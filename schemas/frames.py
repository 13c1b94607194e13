"""Pictures inside one worker: the decoded frames the normalize stage hands the scene-cut stage, the
encoder settings for the clips cut from them, and the pictures of clips held for the encode stage
(never pickled: the pictures hold decoder memory)."""

from __future__ import annotations

from collections.abc import Iterator
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


class HeldPictures:
    """A clip's pictures held in its worker until the encode stage encodes them, so a clip that a
    later stage rejects costs no encode. They never travel: pickling them is an error, not an encode."""

    def __init__(self, pictures: list[av.VideoFrame], encoder: EncoderSettings):
        self._pictures, self.encoder = pictures, encoder

    def __len__(self) -> int:
        return len(self._pictures)

    def part(self, start: int, end: int) -> HeldPictures:
        """Pictures `start` to `end` (exclusive), held for a part of the clip."""
        return HeldPictures(self._pictures[start:end], self.encoder)

    def take(self) -> Iterator[av.VideoFrame]:
        """Each picture once, in order; its memory goes as soon as the consumer is done with it."""
        pictures, self._pictures = self._pictures, []
        for index in range(len(pictures)):
            picture, pictures[index] = pictures[index], None
            yield picture

    def __reduce__(self):
        raise TypeError("held pictures never leave their worker: the encode stage, last in the group, encodes them")
