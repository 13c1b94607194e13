"""Lip editing: a reference video's frames and mouth masks, streamed window by window.

The sampler regenerates only the mouth region of each reference frame and keeps the rest
(train/denoising.py's `known_for`); the finished frames are composited in pixels, so everything
outside the mask is the reference frame itself, as exact as the output's codec allows.

Frames are taken on the 25 fps grid (for output frame n, the last source frame shown at n / 25),
scaled to cover the model's frame size and centre-cropped, as the portrait image is. The mouth
mask comes from the face stage's own detection, tracking and face mesh (`stages.face_track.FaceTracker`,
run on a larger copy of the frame, so the mesh sees enough pixels) and `schemas.face.face_and_lip_masks`,
the function the trainer's lip loss uses, with a wider dilation: the jaw and cheeks move with the lips.
A video shorter than the speech is played again from its start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from core.media_io import open_container
from schemas.face import face_and_lip_masks
from schemas.records import FPS
from stages.face_track import FaceTracker
from stages.normalize import ANALYSIS_LONG_SIDE


def fit_frame(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` (H, W, C) scaled to cover height x width and centre-cropped to it."""
    scale = max(height / image.shape[0], width / image.shape[1])
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y, x = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[y : y + height, x : x + width])


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB -> (T, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


def frames_at_25fps(path: str | Path) -> Iterator[np.ndarray]:
    """The video's frames (RGB) on the 25 fps grid, once through."""
    with open_container(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start, shown, index = None, None, 0
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            start = frame.time if start is None else start
            # every output time before this frame's shows the frame before it
            while shown is not None and index / FPS < frame.time - start - 0.5 / FPS:
                yield shown
                index += 1
            shown = frame.to_ndarray(format="rgb24")
        if shown is not None:
            yield shown


class ReferenceVideo:
    """Frames and mouth masks of a reference video at the model's frame size, read as the
    sampler's windows ask for them; holds only the frames of the current window."""

    def __init__(self, path: str | Path, height: int, width: int, mouth_dilation: float = 0.12):
        self.path, self.height, self.width, self.mouth_dilation = Path(path), height, width, mouth_dilation
        scale = ANALYSIS_LONG_SIDE / max(height, width)
        self.analysis_size = (max(height, round(height * scale)), max(width, round(width * scale)))
        self.faces = FaceTracker()
        self.faces.load()
        self._source = self._looped()
        self._first = 0  # output frame index of the buffer's first entry
        self._frames: deque[np.ndarray] = deque()  # (H, W, 3) uint8 at the model's size
        self._masks: deque[np.ndarray] = deque()  # (H, W) uint8, 1: regenerate

    def _looped(self) -> Iterator[np.ndarray]:
        while True:
            count = 0
            for frame in frames_at_25fps(self.path):
                count += 1
                yield fit_frame(frame, *self.analysis_size)
            if not count:
                raise ValueError(f"{self.path}: no video frames to edit")

    def window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [start, start + length): (T, H, W, 3) uint8 and mouth masks (T, H, W) uint8.
        Windows come in order; frames before `start` are let go."""
        while self._first < start and self._frames:
            self._frames.popleft()
            self._masks.popleft()
            self._first += 1
        missing = start + length - (self._first + len(self._frames))
        if missing > 0:
            self._read(missing)
        offset = start - self._first
        return np.stack(list(self._frames)[offset : offset + length]), np.stack(
            list(self._masks)[offset : offset + length]
        )

    def _read(self, count: int) -> None:
        analysis = np.stack([next(self._source) for _ in range(count)])
        landmarks = self.faces.longest_track_landmarks(analysis)
        if landmarks is None:  # no face: nothing to regenerate, the frames stay as they are
            masks = np.zeros((count, self.height, self.width), np.uint8)
        else:
            masks = face_and_lip_masks(landmarks, self.height, self.width, self.mouth_dilation)[1]
        for frame, mask in zip(analysis, masks):
            self._frames.append(cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA))
            self._masks.append(mask)
