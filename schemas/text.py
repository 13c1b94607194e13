"""The text side of a sample: what the transcription and captioning stages found, and the Whisper
encoder features a trainer conditions on, with the window of them that belongs to each video frame.

Times are in seconds from the start of the clip (its first video frame), on the corrected,
in-sync audio.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

WHISPER_FEATURE_RATE = 50
"""Whisper encoder rows per second (its 30 s window gives 1500 rows)."""

FEATURE_WINDOW = (-4, 6)
"""Rows [c - 4, c + 6) around row c = frame * 50 / fps belong to a video frame (LatentSync's choice:
10 rows, 200 ms, a little more after the frame than before, where its sound follows)."""


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float
    probability: float


@dataclass
class Transcript:
    """The transcription stage's findings for one clip."""

    backend: str  # e.g. "faster-whisper:tiny.en" or "openai-whisper:<checkpoint file>"
    text: str = ""
    language: str = ""
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = float("nan")  # mean over the decoded segments, weighted by their tokens
    no_speech_prob: float = float("nan")  # highest over the decoded segments
    speech_ratio: float = 0.0  # share of the clip covered by words
    voiced_ratio: float = float("nan")  # share of the clip the voice-activity gate heard speech in
    features: np.ndarray | None = None  # (rows, dims) float16 encoder output at 50 Hz, when stored


@dataclass(frozen=True)
class Keyframe:
    """One frame of a clip for the captioner, as small JPEG bytes (it travels between workers)."""

    time_s: float
    jpeg: bytes


@dataclass
class Caption:
    backend: str  # e.g. "embedded" or "vlm:<model folder name>"
    text: str


def encode_features(features: np.ndarray) -> bytes:
    """`KEY.whisper.npy`: float16 (rows, dims)."""
    buffer = io.BytesIO()
    np.save(buffer, features.astype(np.float16), allow_pickle=False)
    return buffer.getvalue()


def decode_features(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def frame_feature_window(features: np.ndarray, frame: int, fps: float) -> np.ndarray:
    """The encoder rows that belong to video frame `frame`: rows [c - 4, c + 6) with
    c = round(frame * 50 / fps), edge rows repeated where the window runs past the clip.
    Shape (10, dims), whatever the frame."""
    centre = int(round(frame * WHISPER_FEATURE_RATE / fps))
    rows = np.clip(np.arange(centre + FEATURE_WINDOW[0], centre + FEATURE_WINDOW[1]), 0, len(features) - 1)
    return features[rows]
