"""The embedded lip-sync estimator: works with what ships offline (the face stage's landmarks).

Mouth geometry (lip gaps, mouth width, jaw, the areas inside the lips) is related to the audio's
energies in three bands (roughly: voicing, first formant, frication) by canonical correlation
analysis, fitted per clip and per candidate offset, in the spirit of Slaney and Covell's FaceSync:
CCA learns, for each clip, which mouth movements go with which sounds, so a speaker who smiles
with an open mouth while silent does not fool it the way a single lip-gap-against-loudness
correlation is fooled.

Both sides are compared as rates of change (the audio smoothed over 130 ms first): what lines
up is the opening and closing of the mouth with the rise and fall of the sound, not the slow
speech-versus-pause envelope every sentence shares, whose broad peak would make the offset
uncertain by a whole word. Offsets are searched every 10 ms over the configured range in the
audio around the clip and refined to sub-step precision.

The confidence says how far the best fit stands above what this clip's own signals reach by
chance: the same search is repeated with the audio circularly rolled beyond the search range
(same sounds, alignment destroyed), and the confidence is the Fisher-z distance of the real peak
above the mean chance peak, scaled by the square root of the clip's length in seconds, so that it
grows with the evidence like a z-score instead of rewarding short clips. It is zero when the audio
holds no speech-like energy or the mouth does not move.

Each search keeps its moments (the sums canonical correlation is computed from, at every offset and
under every chance roll), so the sync stage can pool a source's clips: their moments add up to
those of the clips taken together, and a source cut into many short clips gets one search over all
its seconds.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import numpy as np

from schemas.face import LIPS_INNER, LIPS_OUTER, LOWER_LIP_INNER, UPPER_LIP_INNER, mouth_opening
from schemas.records import FPS, SAMPLE_RATE
from stages.sync_models import SyncEstimate, refined_peak

FEATURE_RATE = 100  # Hz: 10 ms steps for the offset search
_HOP = SAMPLE_RATE // FEATURE_RATE
_WINDOW = 512
_STEPS_PER_FRAME = FEATURE_RATE // FPS
_EYE_OUTER = (33, 263)  # outer eye corners: a face scale the jaw's opening does not change
# Landmark pairs whose distances describe the mouth: inner lip gap, outer lip height, mouth width,
# nose to chin (jaw), nose base to upper lip, inner mouth width.
_MOUTH_PAIRS = ((UPPER_LIP_INNER, LOWER_LIP_INNER), (0, 17), (61, 291), (1, 152), (2, 0), (78, 308))
_BAND_EDGES_HZ = (150.0, 500.0, 1500.0, 5000.0)
_DIGITAL_SILENCE = 1e-8  # band power of all-zero samples (padding past a recording's ends)
_EPSILON = 1e-12  # keeps a covariance of constant features (a window of digital silence) invertible


def mouth_features(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(T, 8): mouth distances and the square roots of the areas inside the inner and outer lip
    contours, all over the distance between the outer eye corners."""
    points = landmarks[..., :2].astype(np.float64) * (width, height)
    scale = np.linalg.norm(points[:, _EYE_OUTER[0]] - points[:, _EYE_OUTER[1]], axis=1)
    columns = [np.linalg.norm(points[:, a] - points[:, b], axis=1) for a, b in _MOUTH_PAIRS]
    columns += [np.sqrt(_polygon_area(points[:, list(contour)])) for contour in (LIPS_INNER, LIPS_OUTER)]
    return np.stack(columns, axis=1) / np.maximum(scale, 1e-6)[:, None]


def _polygon_area(points: np.ndarray) -> np.ndarray:
    """Areas of (T, n, 2) closed polygons (shoelace formula)."""
    x, y = points[..., 0], points[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))


def band_energies(audio: np.ndarray, edges_hz=_BAND_EDGES_HZ) -> np.ndarray:
    """(N, len(edges_hz) - 1) log band powers of int16 audio every 10 ms (step n at n * 10 ms)."""
    x = audio.astype(np.float64) / 32768.0
    steps = len(x) // _HOP
    padded = np.pad(x, (_WINDOW // 2, _WINDOW))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[::_HOP][:steps] * np.hanning(_WINDOW)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(_WINDOW, 1 / SAMPLE_RATE)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in zip(edges_hz, edges_hz[1:])]
    return np.log(np.stack(bands, axis=1) + _DIGITAL_SILENCE)


def speech_range_db(audio: np.ndarray) -> float:
    """Spread in dB between loud (90th percentile) and quiet (10th) 10 ms steps of int16 audio:
    speech alternates syllables and pauses, silence and steady noise or hum do not."""
    total_db = 10 * np.log10(np.exp(band_energies(audio, (150.0, 6000.0))[:, 0]))
    return float(np.percentile(total_db, 90) - np.percentile(total_db, 10)) if len(total_db) else 0.0


def mouth_motion(landmarks: np.ndarray, width: int, height: int) -> float:
    """Standard deviation of the inner lip gap over face height: near zero for a still mouth."""
    return float(np.std(mouth_opening(landmarks, width, height)))


def _upsample(features: np.ndarray, steps: int) -> np.ndarray:
    """Frame-rate features at the feature rate; frame k covers [k, k+1) / FPS, sampled at its centre."""
    times = (np.arange(steps) + 0.5) / _STEPS_PER_FRAME - 0.5
    frames = np.arange(len(features))
    return np.stack([np.interp(times, frames, column) for column in features.T], axis=1)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Each column convolved with a normalized Hann window of `width` steps, edges held."""
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    padded = np.pad(x, ((width, width), (0, 0)), mode="edge")
    return np.stack([np.convolve(column, kernel, mode="same")[width:-width] for column in padded.T], axis=1)


def _floor_silence(energies: np.ndarray, percentile: float = 10.0) -> np.ndarray:
    """Each band floored at its quiet level over the steps that are not digital silence: past the
    ends of a recording the context is all zeros, far quieter than any real pause, and the jump
    into it would otherwise look like a sound the mouth should have made."""
    live = energies.sum(axis=1) > energies.shape[1] * (np.log(_DIGITAL_SILENCE) + 1.0)
    if live.sum() < 10:
        return energies
    return np.maximum(energies, np.percentile(energies[live], percentile, axis=0))


@dataclass
class MouthAudioMoments:
    """What canonical correlation is computed from, at every offset of a search: the video's scatter
    about its mean (p, p), each audio window's scatter about its own mean (L, q, q) and their
    cross-products (L, p, q), summed over `steps` steps. Moments of several clips add up to those of
    the clips taken together (each centred on its own means): how a source's clips are pooled."""

    video: np.ndarray
    audio: np.ndarray
    cross: np.ndarray
    steps: int

    @classmethod
    def of(cls, video: np.ndarray, audio: np.ndarray) -> MouthAudioMoments:
        """The moments of `video` (S, p) with every window of S steps of `audio` (S + L - 1, q),
        window l starting at step l.

        The windows' scatters come from running sums and the cross-products from one correlation
        per feature pair: O((S + L) q^2 + S L p q) in C, instead of materializing L centred copies
        of the windows (the search runs 25 times per clip)."""
        steps, q = len(video), audio.shape[1]
        count = len(audio) - steps + 1
        video = video - video.mean(axis=0)
        sums = np.concatenate([np.zeros((1, q)), np.cumsum(audio, axis=0)])
        products = np.concatenate([np.zeros((1, q, q)), np.cumsum(audio[:, :, None] * audio[:, None, :], axis=0)])
        means = (sums[steps:] - sums[:count]) / steps
        scatter = (products[steps:] - products[:count]) - steps * means[:, :, None] * means[:, None, :]
        # The video is centred, so the windows' means drop out of the cross-products.
        cross = np.stack(
            [
                np.stack([np.correlate(audio[:, j], video[:, i], mode="valid") for j in range(q)], axis=1)
                for i in range(video.shape[1])
            ],
            axis=1,
        )
        return cls(video.T @ video, scatter, cross, steps)

    def __add__(self, other: MouthAudioMoments) -> MouthAudioMoments:
        return MouthAudioMoments(
            self.video + other.video, self.audio + other.audio, self.cross + other.cross, self.steps + other.steps
        )

    def correlations(self, ridge: float) -> np.ndarray:
        """(L,): the first canonical correlation at every offset, with ridge regularization (a share
        of each covariance's mean variance added to its diagonal)."""
        cvv, caa, cva = self.video / self.steps, self.audio / self.steps, self.cross / self.steps
        cvv = cvv + (ridge * np.trace(cvv) / len(cvv) + _EPSILON) * np.eye(len(cvv))
        q = caa.shape[1]
        caa = caa + (ridge * np.trace(caa, axis1=1, axis2=2) / q + _EPSILON)[:, None, None] * np.eye(q)
        whiten_video = np.linalg.inv(np.linalg.cholesky(cvv))
        whiten_audio = np.linalg.inv(np.linalg.cholesky(caa))
        return np.linalg.svd(whiten_video[None] @ cva @ np.swapaxes(whiten_audio, 1, 2), compute_uv=False)[:, 0]


def canonical_correlations(video: np.ndarray, audio: np.ndarray, ridge: float) -> np.ndarray:
    """First canonical correlation of `video` (S, p) with every window of S steps of `audio`
    (S + L - 1, q), window l starting at step l."""
    return MouthAudioMoments.of(video, audio).correlations(ridge)


@dataclass
class MouthAudioEvidence:
    """The search of one clip (or, pooled, of several clips of one source): the moments at every
    offset, -reach..reach steps of 10 ms, and the same under each chance roll of the audio."""

    moments: MouthAudioMoments
    chance: list[MouthAudioMoments]
    ridge: float

    @functools.cached_property
    def curve(self) -> np.ndarray:
        return self.moments.correlations(self.ridge)

    @functools.cached_property
    def _chance_peak(self) -> float:
        return float(np.mean([c.correlations(self.ridge).max() for c in self.chance]))

    @property
    def offset_frames(self) -> float:
        return (refined_peak(self.curve) - len(self.curve) // 2) / _STEPS_PER_FRAME

    @property
    def peak(self) -> float:
        return float(self.curve.max())

    @property
    def margin(self) -> None:  # this backend has no rival-peak rule
        return None

    @property
    def significance(self) -> float:
        return self.significance_of(self.peak)

    def significance_of(self, value: float) -> float:
        """Fisher-z distance of `value` above the mean peak of the chance searches, times the square
        root of the evidence's seconds (so it grows with the evidence like a z-score); at least 0."""
        clipped = np.clip([value, self._chance_peak], 0.0, 0.999)
        seconds = self.moments.steps / FEATURE_RATE
        return max(0.0, float((np.arctanh(clipped[0]) - np.arctanh(clipped[1])) * np.sqrt(seconds)))

    def at(self, offset_frames: float) -> float:
        """The curve at an offset (the nearest 10 ms step)."""
        index = round(offset_frames * _STEPS_PER_FRAME) + len(self.curve) // 2
        return float(self.curve[int(np.clip(index, 0, len(self.curve) - 1))])


def pooled(evidence: list[MouthAudioEvidence]) -> MouthAudioEvidence:
    """Several clips' searches taken together, as if their steps were one clip's: their moments
    summed at each offset, and under each chance roll (roll r of every clip: wrong audio under each,
    as a wrong file's would be)."""
    rolls = min(len(e.chance) for e in evidence)
    return MouthAudioEvidence(
        functools.reduce(operator.add, (e.moments for e in evidence)),
        [functools.reduce(operator.add, (e.chance[r] for e in evidence)) for r in range(rolls)],
        evidence[0].ridge,
    )


class MouthAudioScorer:
    """Offset and confidence of a clip's audio against a tracked face, from landmarks alone."""

    name = "mouth-audio-cca"
    pooled = staticmethod(pooled)

    def __init__(
        self,
        ridge: float = 0.1,
        audio_smoothing_s: float = 0.13,
        chance_rolls: int = 24,
        min_mouth_motion: float = 0.005,
        min_speech_range_db: float = 10.0,
    ):
        self.ridge = ridge
        self.smoothing = max(1, round(audio_smoothing_s * FEATURE_RATE))
        self.chance_rolls = chance_rolls
        self.min_mouth_motion = min_mouth_motion
        self.min_speech_range_db = min_speech_range_db

    def score(
        self,
        landmarks: np.ndarray,
        width: int,
        height: int,
        audio_context: np.ndarray,
        context_frames: int,
        max_offset: int,
    ) -> SyncEstimate:
        """`audio_context` covers the clip plus `context_frames` on both sides; offsets are searched
        within +-`max_offset` frames (at most `context_frames`). Positive: the audio lags the video."""
        if max_offset > context_frames:
            raise ValueError(
                f"an offset of {max_offset} frames needs at least that much audio context, not {context_frames}"
            )
        steps = len(landmarks) * _STEPS_PER_FRAME
        video = np.gradient(_upsample(mouth_features(landmarks, width, height), steps), axis=0)
        audio = np.gradient(_smooth(_floor_silence(band_energies(audio_context)), self.smoothing), axis=0)
        reach = max_offset * _STEPS_PER_FRAME
        start = context_frames * _STEPS_PER_FRAME - reach

        def searched(energies: np.ndarray) -> MouthAudioMoments:
            return MouthAudioMoments.of(video, energies[start : start + steps + 2 * reach])

        # Chance: the same search with the audio circularly rolled past the search range (same
        # sounds, alignment destroyed).
        lowest = 2 * reach + FEATURE_RATE // 5  # a roll that leaves the true alignment out of reach
        total = len(audio)
        rolls = (
            np.linspace(lowest, total - lowest, self.chance_rolls).round().astype(int)
            if total - lowest > lowest
            else [total // 2]
        )
        evidence = MouthAudioEvidence(
            searched(audio), [searched(np.roll(audio, roll, axis=0)) for roll in rolls], self.ridge
        )
        clip_audio = audio_context[context_frames * SAMPLE_RATE // FPS :][: len(landmarks) * SAMPLE_RATE // FPS]
        gated = (
            speech_range_db(clip_audio) < self.min_speech_range_db
            or mouth_motion(landmarks, width, height) < self.min_mouth_motion
        )
        per_frame = evidence.curve[::_STEPS_PER_FRAME]  # one value per whole-frame offset, -max_offset..max_offset
        return SyncEstimate(
            offset_frames=evidence.offset_frames,
            confidence=0.0 if gated else evidence.significance,
            distances=1.0 - per_frame,
            evidence=evidence,
        )
