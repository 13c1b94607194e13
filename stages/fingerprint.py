"""Fingerprint: the near-duplicate fingerprints of every kept clip (schemas/fingerprint.py).

Last in the group that holds the clip's analysis frames, so it costs no extra decode: a DCT
perceptual hash of a few frames, the face stage's mouth-opening series, and a Haitsma-Kalker audio
fingerprint of the in-sync audio (a few milliseconds per clip). `talkcurate dedup` compares them
across the whole run (pipeline/dedup.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from core.config import option
from schemas.fingerprint import MOTION_SCALE, Fingerprint
from schemas.records import FPS, SAMPLE_RATE, CandidateClip
from stages.base import Resources, Stage
from stages.keyframes import keyframe_indices

_HASH_SIDE = 32  # the frame is reduced to 32x32 grey, whose 8x8 lowest DCT frequencies make the hash
_HASH_FREQUENCIES = 8

_HOP = SAMPLE_RATE // FPS  # one sub-fingerprint per video frame
_WINDOW = 4096  # 256 ms: long windows overlapping much make the bits robust (Haitsma-Kalker use 370 ms)
_BAND_EDGES = np.geomspace(300.0, 2000.0, 34)  # 33 bands, 32 differences: one bit each


def _band_matrix() -> np.ndarray:
    """(33, bins) 0/1: which rFFT bins of a window fall into each band."""
    band = np.digitize(np.fft.rfftfreq(_WINDOW, 1 / SAMPLE_RATE), _BAND_EDGES) - 1
    return (band[None, :] == np.arange(len(_BAND_EDGES) - 1)[:, None]).astype(np.float32)


_BANDS = _band_matrix()
_HANN = np.hanning(_WINDOW).astype(np.float32)


def phash(frame: np.ndarray) -> np.uint64:
    """64-bit DCT perceptual hash of an RGB frame: its 32x32 grey reduction's 8x8 lowest
    frequencies, each bit set when the coefficient is above their median (the constant term left
    out of the median, as in pHash)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(grey, (_HASH_SIDE, _HASH_SIDE), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:_HASH_FREQUENCIES, :_HASH_FREQUENCIES].ravel()
    bits = low > np.median(low[1:])
    return np.packbits(bits).view(">u8")[0].astype(np.uint64)


def audio_fingerprint(audio: np.ndarray) -> np.ndarray:
    """(frames - 1,) uint32 Haitsma-Kalker sub-fingerprints of int16 mono audio at SAMPLE_RATE,
    one per video frame from the second on: a window centred on each frame, its energy in 33 bands,
    bit m (most significant first) set when E[m] - E[m + 1] grew since the previous frame."""
    frames = len(audio) // _HOP
    if frames < 2:
        return np.zeros(0, np.uint32)
    padded = np.pad(audio.astype(np.float32) / 32768, (_WINDOW // 2, _WINDOW // 2))
    starts = np.arange(frames) * _HOP + _HOP // 2
    windows = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[starts] * _HANN
    energy = (np.abs(np.fft.rfft(windows, axis=1)) ** 2).astype(np.float32) @ _BANDS.T
    across = energy[:, :-1] - energy[:, 1:]
    bits = (across[1:] - across[:-1]) > 0
    return np.packbits(bits, axis=1).view(">u4")[:, 0].astype(np.uint32)


def motion_series(mouth_opening: np.ndarray) -> np.ndarray:
    """The mouth-opening series as uint8 thousandths of the face height (frames the face mesh
    missed are interpolated by the face stage; anything else unmeasured counts as closed)."""
    return np.clip(np.round(np.nan_to_num(mouth_opening) * MOTION_SCALE), 0, 255).astype(np.uint8)


@dataclass
class FingerprintStage(Stage[CandidateClip, CandidateClip]):
    """Fingerprint each clip's picture, mouth motion and audio for `talkcurate dedup`."""

    name: ClassVar[str] = "fingerprint"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)
    uses_frames: ClassVar[bool] = True

    video_frames: int = option(8, "Frames per clip given a perceptual hash (evenly spread, first and last included).")

    def validate(self) -> None:
        if self.video_frames < 1:
            raise ValueError("fingerprint.video_frames must be at least 1")

    def process(self, item: CandidateClip) -> CandidateClip:
        frames = item.frames
        if frames is None or len(frames) == 0:
            raise ValueError(
                "the fingerprint stage needs the clip's analysis frames (normalize.analysis_long_side > 0)"
            )
        track = item.face.track if item.face is not None else None
        fingerprint = Fingerprint(
            video_phash=np.array(
                [phash(frames[i]) for i in keyframe_indices(len(frames), FPS, self.video_frames)], np.uint64
            ),
            video_motion=None if track is None else motion_series(track.mouth_opening),
            audio=audio_fingerprint(item.audio),
        )
        return dataclasses.replace(item, fingerprint=fingerprint)
