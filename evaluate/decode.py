"""Reading a video to evaluate as the pipeline reads its sources: the probe stage opens it, the
normalize stage decodes it to RGB analysis frames on the 25 fps grid and 16 kHz mono audio placed
on the same grid (stream start times and edit lists honoured), so the models see what they see
when they curate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.media_io import decode_audio
from schemas.records import SAMPLES_PER_FRAME, Rejected, SourceChunk, SourceVideo
from stages.normalize import ANALYSIS_LONG_SIDE, NormalizeStage
from stages.probe import ProbeStage


class EvaluationError(Exception):
    """A video that cannot be evaluated: `reason` is a stable snake_case category, as a manifest's."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Decoded:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, long side ANALYSIS_LONG_SIDE (scaled either way)
    audio: np.ndarray | None  # (T * 640,) int16 on the frames' grid (zeros where the input has none); None: silent
    audio_coverage: float  # share of the frames' span the input's own audio covers
    source_size: tuple[int, int]  # (width, height) of the video as displayed

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return self.frames.shape[2], self.frames.shape[1]


def decode(path: str | Path, max_frames: int | None = None) -> Decoded:
    """The video's frames and its own audio (None for a video without an audio stream); at most
    `max_frames` frames from its start. Raises EvaluationError for what the probe rejects."""
    source = SourceVideo.from_uri(str(path))
    probed = ProbeStage(require_audio=False).process(source)
    if isinstance(probed, Rejected):
        raise EvaluationError(probed.reason, probed.detail)
    chunk = SourceChunk(source, probed.probe, 0, 1, 0, max(1, probed.num_frames))
    stream = NormalizeStage(analysis_long_side=ANALYSIS_LONG_SIDE).process(chunk)
    frames, decoding = [], stream.frames()
    try:
        for frame in decoding:
            frames.append(frame.analysis)
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        decoding.close()  # closes the container now, not when the generator is collected
    if not frames:
        raise EvaluationError("decode_error", "the video decodes to no frames")
    silent = not probed.probe.audio_codec
    audio, coverage = (None, 0.0) if silent else stream.audio(0, len(frames))
    source_size = (probed.probe.width, probed.probe.height)
    return Decoded(analysis_sized(np.stack(frames)), audio, coverage, source_size)


def analysis_sized(frames: np.ndarray) -> np.ndarray:
    """Frames smaller than the analysis size scaled up to it (a generated 64x64 or a 160x160 crop),
    as lip editing scales a reference video's, so the face mesh sees enough pixels."""
    height, width = frames.shape[1:3]
    scale = ANALYSIS_LONG_SIDE / max(height, width)
    if scale <= 1:
        return frames
    size = (round(width * scale), round(height * scale))
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR) for frame in frames])


def speech_on_grid(path: str | Path, num_frames: int) -> tuple[np.ndarray, float]:
    """A speech file (any format FFmpeg reads) as int16 16 kHz mono on `num_frames` frames of the
    25 fps grid from its start, as `talkcurate sample` reads the speech it is given: cut or padded
    with zeros, with the share of the span it covers."""
    try:
        speech = decode_audio(str(path))
    except Exception as exc:  # whatever FFmpeg says, the video cannot be evaluated with it
        raise EvaluationError("unreadable", f"--audio {path}: {exc}") from exc
    out = np.zeros(num_frames * SAMPLES_PER_FRAME, np.int16)
    used = speech[: len(out)]
    out[: len(used)] = used
    return out, len(used) / max(1, len(out))
