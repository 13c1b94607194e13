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


def look(video_phash: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Each clip's look: the bitwise majority of its frame hashes (a bit is set when more than half
    of the clip's frames have it). `video_phash` holds the clips' hashes one after the other,
    `frames[k]` of clip k; (clips,) uint64."""
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)
    looks = np.zeros(len(frames), np.uint64)
    if len(video_phash) == 0:
        return looks
    hashed = frames > 0  # a clip without hashes has look 0
    for bit in range(64):
        votes = np.add.reduceat(((video_phash >> np.uint64(bit)) & np.uint64(1)).astype(np.int32), starts[hashed])
        looks[hashed] |= (2 * votes > frames[hashed]).astype(np.uint64) << np.uint64(bit)
    return looks


def motion_correlations(first: list[np.ndarray], second: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For each pair of mouth-opening series (first[k], second[k]): the highest Pearson correlation
    over every offset with enough overlap, and that offset (frame n of the second against n + offset
    of the first); -1 and 0 where no offset has motion on both sides."""
    series = [*first, *second]
    lengths = np.array([len(s) for s in series], np.int64)
    values = np.concatenate([np.zeros(0, np.uint8), *series])
    count = len(first)
    return series_correlations(values, lengths, np.arange(count), count + np.arange(count))


def series_correlations(
    values: np.ndarray, lengths: np.ndarray, first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """motion_correlations of the pairs (series first[k], series second[k]), where series k is
    `lengths[k]` values of `values`, after those of series 0..k-1.

    Only the cross term, sum of x * y over the overlap at each offset, needs a cross-correlation
    (by FFT, float32); the other sums (of x, x^2, y, y^2) are differences of prefix sums, as each
    overlap is a contiguous range of each series. Series are centred first (the correlation does
    not change), which keeps float32's error in the cross term near 1e-6 of the correlation. Pairs
    are taken longest first in batches of similar length, and each series of a batch is
    transformed once, however many of its pairs the batch holds."""
    starts = series_starts(lengths)
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    correlations, offsets = np.full(len(first), -1.0), np.zeros(len(first), np.int64)
    for batch in correlation_batches(lengths, first, second):
        correlations[batch], offsets[batch] = batch_correlations(values, starts, lengths, first[batch], second[batch])
    return correlations, offsets


_CORRELATION_BATCH = 512  # pairs at once: their arrays stay in the CPU caches (2048 took twice as long)


def series_starts(lengths: np.ndarray) -> np.ndarray:
    """Where each series begins in `values` (series_correlations)."""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def correlation_batches(lengths: np.ndarray, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
    """The batches series_correlations measures, as positions in `first` and `second`: longest
    pairs first, similar lengths together. A batch's transform size is its longest series', so the
    same batches give the same bits wherever they are measured."""
    order = np.argsort(-np.maximum(lengths[first], lengths[second]), kind="stable")
    return np.array_split(order, -(-len(order) // _CORRELATION_BATCH)) if len(order) else []


def batch_correlations(
    values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """series_correlations of one batch of pairs (correlation_batches), with series_starts."""
    series, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    a, b = inverse[: len(first)], inverse[len(first) :]
    len_x, len_y = lengths[first], lengths[second]
    longest = max(int(lengths[series].max()), 1)
    size = 1 << (2 * longest - 1).bit_length()
    frame = np.arange(longest)
    inside = frame < lengths[series][:, None]
    padded = np.where(inside, values[np.minimum(starts[series][:, None] + frame, len(values) - 1)], 0).astype(float)
    means = padded.sum(1) / np.maximum(lengths[series], 1)
    centred = np.where(inside, padded - means[:, None], 0.0)
    spectra = np.fft.rfft(centred.astype(np.float32), size)
    cross = np.fft.irfft(spectra[a] * np.conj(spectra[b]), size)  # [o % size]: sum of x[n + o] * y[n]

    need = np.maximum(MIN_OVERLAP_FRAMES, np.ceil(MIN_OVERLAP_SHARE * np.minimum(len_x, len_y)).astype(np.int64))
    first_offset = need - len_y  # offsets with enough overlap: first_offset .. len_x - need
    width = max(int((len_x + len_y - 2 * need + 1).max()), 1)
    offset = first_offset[:, None] + np.arange(width)
    # prefix sums padded with 2 * longest on each side: index 2 * longest + t holds the sum of the first t
    sums = [_padded_prefix(centred, longest), _padded_prefix(centred * centred, longest)]
    sx, sxx = (
        _window(p, a, 2 * longest + len_y + first_offset, width) - _window(p, a, 2 * longest + first_offset, width)
        for p in sums
    )
    # y's overlap runs backwards as the offset grows: read its prefix sums reversed
    sy, syy = (
        _window(p[:, ::-1], b, 3 * longest - len_x + first_offset, width)
        - _window(p[:, ::-1], b, 3 * longest + first_offset, width)
        for p in sums
    )
    sxy = _window(np.concatenate([cross, cross[:, :width]], axis=1), np.arange(len(first)), first_offset % size, width)
    length = np.minimum(len_x[:, None], len_y[:, None] + offset) - np.maximum(0, offset)
    valid = length >= need[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        covariance = sxy - sx * sy / length
        spread = np.sqrt(np.maximum(sxx - sx * sx / length, 0) * np.maximum(syy - sy * sy / length, 0))
        correlation = np.where(valid & (spread > 1e-6), covariance / spread, -1.0)
    best = np.argmax(correlation, axis=1)
    rows = np.arange(len(first))
    values_at_best = correlation[rows, best]
    return values_at_best, np.where(values_at_best > -1, offset[rows, best], 0)


def _padded_prefix(series: np.ndarray, longest: int) -> np.ndarray:
    """(count, 5 * longest + 1): 2 * longest zeros, the prefix sums from 0, then the total repeated."""
    prefix = np.cumsum(series, axis=1)
    return np.concatenate(
        [np.zeros((len(series), 2 * longest + 1)), prefix, np.repeat(prefix[:, -1:], 2 * longest, axis=1)], axis=1
    )


def _window(rows: np.ndarray, which: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """rows[which[k], start[k] : start[k] + width] for each k."""
    return np.lib.stride_tricks.sliding_window_view(rows, width, axis=1)[which, start]
