"""A clip's near-duplicate fingerprints: what the fingerprint stage computes, how the manifest stores
them, and how two of them compare (`talkcurate dedup` decides with these measures).

- `video_phash`: a 64-bit DCT perceptual hash of each of a few frames spread over the clip. It
  says what the picture looks like (who, where, framing) and survives re-encoding, scaling and mild
  crops, but it cannot tell two takes of one speaker in one place apart: their frames look alike.
- `video_motion`: the tracked face's mouth opening on every frame (inner-lip gap over face height,
  in thousandths, uint8). It is the same whatever the crop, scale or codec, and it is what differs
  between two takes: what the mouth does, frame by frame.
- `audio_fingerprint`: one 32-bit Haitsma-Kalker sub-fingerprint per video frame (40 ms) of the
  clip's in-sync audio; bit m of frame n is set when the energy difference of bands m and m + 1
  grew from frame n - 1 to n (33 bands spaced logarithmically over 300-2000 Hz, 256 ms windows).
  Frame n of the fingerprint belongs to video frame n + 1.

Alignments: two clips of the same footage rarely start on the same frame (another upload is cut
elsewhere), so the audio and motion measures are taken at the best offset in whole frames, over an
overlap of at least half the shorter clip and at least one second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOTION_SCALE = 1000
"""`video_motion` holds round(mouth opening * MOTION_SCALE), clipped to 0..255."""

MIN_OVERLAP_FRAMES = 25  # one second of the clips' 25 fps
MIN_OVERLAP_SHARE = 0.5


@dataclass
class Fingerprint:
    video_phash: np.ndarray  # (frames,) uint64
    video_motion: np.ndarray | None  # (T,) uint8; None without a tracked face
    audio: np.ndarray  # (T - 1,) uint32

    def columns(self) -> dict[str, object]:
        """The manifest's columns (the same names)."""
        return {
            "video_phash": [int(h) for h in self.video_phash],
            "video_motion": None if self.video_motion is None else self.video_motion.tobytes(),
            "audio_fingerprint": self.audio.astype("<u4").tobytes(),
        }

    @classmethod
    def from_columns(cls, video_phash: list[int], video_motion: bytes | None, audio_fingerprint: bytes) -> Fingerprint:
        return cls(
            video_phash=np.asarray(video_phash, np.uint64),
            video_motion=None if video_motion is None else np.frombuffer(video_motion, np.uint8),
            audio=np.frombuffer(audio_fingerprint, "<u4").astype(np.uint32),
        )


def min_overlap(len_a: int, len_b: int) -> int:
    """Frames two series must share at an offset for a comparison to count."""
    return max(MIN_OVERLAP_FRAMES, int(np.ceil(MIN_OVERLAP_SHARE * min(len_a, len_b))))


def audio_bit_error_rate(a: np.ndarray, b: np.ndarray, offset: int) -> float:
    """Share of differing bits with sub-fingerprint n of `b` against n + `offset` of `a` (1.0 when
    the overlap is too short)."""
    start_a, start_b = max(0, offset), max(0, -offset)
    length = min(len(a) - start_a, len(b) - start_b)
    if length < min_overlap(len(a), len(b)):
        return 1.0
    differing = np.bitwise_count(a[start_a : start_a + length] ^ b[start_b : start_b + length]).sum()
    return float(differing) / (32 * length)


def motion_correlations(first: list[np.ndarray], second: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For each pair of mouth-opening series (first[k], second[k]): the highest Pearson correlation
    over every offset with enough overlap, and that offset (frame n of the second against n + offset
    of the first); -1 and 0 where no offset has motion on both sides. All pairs and offsets at once:
    every sum over an overlap (of x, x^2, y, y^2, xy and of ones: its length) is a cross-correlation
    with the other series or with its support, computed by FFT."""
    count = len(first)
    if count == 0:
        return np.zeros(0), np.zeros(0, int)
    longest = max(max(len(x) for x in first), max(len(y) for y in second))
    x, y = np.zeros((count, longest)), np.zeros((count, longest))
    x_support, y_support = np.zeros_like(x), np.zeros_like(y)
    for k in range(count):
        x[k, : len(first[k])], y[k, : len(second[k])] = first[k], second[k]
        x_support[k, : len(first[k])], y_support[k, : len(second[k])] = 1, 1
    size = 1 << (2 * longest - 1).bit_length()
    offsets = np.arange(-(longest - 1), longest)

    def overlap_sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """sum over k of a[k + offset] * b[k], for every offset (count, offsets)."""
        return np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)[:, offsets % size]

    length = np.round(overlap_sums(x_support, y_support))
    sx, sxx = overlap_sums(x, y_support), overlap_sums(x * x, y_support)
    sy, syy = overlap_sums(x_support, y), overlap_sums(x_support, y * y)
    with np.errstate(divide="ignore", invalid="ignore"):
        covariance = overlap_sums(x, y) - sx * sy / length
        spread = np.sqrt(np.maximum(sxx - sx * sx / length, 0) * np.maximum(syy - sy * sy / length, 0))
        correlation = np.where(spread > 1e-6, covariance / spread, -1.0)
    needed = [min_overlap(len(a), len(b)) for a, b in zip(first, second)]
    correlation[length < np.array(needed)[:, None]] = -1.0
    best = np.argmax(correlation, axis=1)
    values = correlation[np.arange(count), best]
    return values, np.where(values > -1, offsets[best], 0)
