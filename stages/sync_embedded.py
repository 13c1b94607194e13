"""The embedded lip-sync estimator: works with what ships offline (the face stage's landmarks).

Mouth geometry (lip gaps, mouth width, jaw opening, each over face height, and their rates of
change) is related to the audio's log-mel band energies by canonical correlation analysis, fitted
per clip and per candidate offset, in the spirit of Slaney and Covell's FaceSync. A single
feature such as lip gap against loudness fails on speakers who smile with an open mouth while
silent; CCA learns, for each clip, which mouth movements go with which sounds.

To keep the fit from inventing structure, each candidate offset is scored by held-out
correlation: the projections are fitted on alternate blocks of the clip and evaluated on the
others. Offsets are searched every 10 ms over the configured range on the audio around the clip,
then refined to sub-sample precision. The confidence is the held-out correlation at the best
offset; it is zero when the audio holds no speech-like energy or the mouth does not move.
"""

from __future__ import annotations

import numpy as np

from schemas.face import CHIN, FOREHEAD_TOP, LOWER_LIP_INNER, UPPER_LIP_INNER
from schemas.records import FPS, SAMPLE_RATE
from stages.sync_models import SyncEstimate

FEATURE_RATE = 100  # Hz: 10 ms steps for the offset search
_HOP = SAMPLE_RATE // FEATURE_RATE
_WINDOW = 512
_STEPS_PER_FRAME = FEATURE_RATE // FPS
# Landmark pairs whose distances describe the mouth: inner lip gap, outer lip height, mouth width,
# nose to chin (jaw), nose base to upper lip, inner mouth width.
_MOUTH_PAIRS = ((UPPER_LIP_INNER, LOWER_LIP_INNER), (0, 17), (61, 291), (1, CHIN), (2, 0), (78, 308))
_MEL_BANDS = np.geomspace(150.0, 6000.0, 9)


def mouth_features(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(T, 12) mouth distances over face height and their frame-to-frame change."""
    points = landmarks[..., :2].astype(np.float64) * (width, height)
    face = np.linalg.norm(points[:, FOREHEAD_TOP] - points[:, CHIN], axis=1)[:, None]
    distances = np.stack([np.linalg.norm(points[:, a] - points[:, b], axis=1) for a, b in _MOUTH_PAIRS], axis=1) / face
    return np.concatenate([distances, np.gradient(distances, axis=0)], axis=1)


def band_energies(audio: np.ndarray) -> np.ndarray:
    """(N, 8) log energies of 8 bands between 150 Hz and 6 kHz, every 10 ms (frame n at n * 10 ms)."""
    x = audio.astype(np.float64) / 32768.0
    steps = len(x) // _HOP
    padded = np.pad(x, (_WINDOW // 2, _WINDOW))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[::_HOP][:steps] * np.hanning(_WINDOW)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(_WINDOW, 1 / SAMPLE_RATE)
    bands = [power[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) for lo, hi in zip(_MEL_BANDS, _MEL_BANDS[1:])]
    return np.log(np.stack(bands, axis=1) + 1e-10)


def _upsample(features: np.ndarray, steps: int) -> np.ndarray:
    """Frame-rate features at the feature rate; frame k covers [k, k+1) / FPS, sampled at its centre."""
    times = (np.arange(steps) + 0.5) / _STEPS_PER_FRAME - 0.5
    frames = np.arange(len(features))
    return np.stack([np.interp(times, frames, column) for column in features.T], axis=1)


def _cca_direction(x: np.ndarray, y: np.ndarray, ridge: float):
    """Means and first pair of canonical directions of x and y, with ridge regularization."""
    mx, my = x.mean(0), y.mean(0)
    x, y = x - mx, y - my
    n = len(x)
    cxx, cyy, cxy = x.T @ x / n, y.T @ y / n, x.T @ y / n
    cxx += ridge * np.trace(cxx) / len(cxx) * np.eye(len(cxx))
    cyy += ridge * np.trace(cyy) / len(cyy) * np.eye(len(cyy))
    wx, wy = np.linalg.inv(np.linalg.cholesky(cxx)), np.linalg.inv(np.linalg.cholesky(cyy))
    u, _, vt = np.linalg.svd(wx @ cxy @ wy.T)
    return mx, my, wx.T @ u[:, 0], wy.T @ vt[0]


def heldout_correlation(video: np.ndarray, audio: np.ndarray, block: int, ridge: float) -> float:
    """Canonical correlation fitted on alternate blocks of `block` steps, measured on the others."""
    even = (np.arange(len(video)) // block) % 2 == 0
    scores = []
    for train in (even, ~even):
        mx, my, a, b = _cca_direction(video[train], audio[train], ridge)
        projected_video, projected_audio = (video[~train] - mx) @ a, (audio[~train] - my) @ b
        if projected_video.std() < 1e-12 or projected_audio.std() < 1e-12:
            return 0.0
        scores.append(float(np.corrcoef(projected_video, projected_audio)[0, 1]))
    return float(np.mean(scores))


def speech_range_db(audio: np.ndarray) -> float:
    """Spread in dB between loud (90th percentile) and quiet (10th) 10 ms steps of int16 audio:
    speech alternates syllables and pauses, silence and steady noise or hum do not."""
    total_db = 10 * np.log10(np.exp(band_energies(audio)).sum(axis=1) + 1e-12)
    return float(np.percentile(total_db, 90) - np.percentile(total_db, 10)) if len(total_db) else 0.0


def mouth_motion(landmarks: np.ndarray, width: int, height: int) -> float:
    """Standard deviation of the inner lip gap over face height: near zero for a still mouth."""
    return float(mouth_features(landmarks, width, height)[:, 0].std())


class MouthAudioScorer:
    """Offset and confidence of a clip's audio against its tracked face, from landmarks alone."""

    name = "mouth-audio-cca"

    def __init__(self, ridge: float = 0.1, block_s: float = 0.5, min_mouth_motion: float = 0.005,
                 min_speech_range_db: float = 10.0):
        self.ridge = ridge
        self.block = max(2, round(block_s * FEATURE_RATE))
        self.min_mouth_motion = min_mouth_motion
        self.min_speech_range_db = min_speech_range_db

    def score(self, landmarks: np.ndarray, width: int, height: int, audio_context: np.ndarray,
              context_frames: int, max_offset: int) -> SyncEstimate:
        """`audio_context` covers the clip plus `context_frames` on both sides; offsets are searched
        within +-`max_offset` frames (at most `context_frames`). Positive: the audio lags the video."""
        if max_offset > context_frames:
            raise ValueError(f"an offset of {max_offset} frames needs at least that much audio context, not {context_frames}")
        num_frames = len(landmarks)
        steps = num_frames * _STEPS_PER_FRAME
        video = _upsample(mouth_features(landmarks, width, height), steps)
        audio = band_energies(audio_context)
        centre = context_frames * _STEPS_PER_FRAME
        # Past the ends of the recording the context is digital silence, far quieter than any real
        # pause: floor each band at the clip's own quiet level so those edges do not drive the fit.
        audio = np.maximum(audio, np.percentile(audio[centre : centre + steps], 5, axis=0))
        lags = np.arange(-max_offset * _STEPS_PER_FRAME, max_offset * _STEPS_PER_FRAME + 1)
        curve = np.array([heldout_correlation(video, audio[centre + lag : centre + lag + steps], self.block, self.ridge) for lag in lags])
        best = int(np.argmax(curve))
        refined = float(lags[best])
        if 0 < best < len(curve) - 1:
            below, peak, above = curve[best - 1 : best + 2]
            curvature = below - 2 * peak + above
            if curvature < 0:
                refined += 0.5 * (below - above) / curvature
        clip_audio = audio_context[context_frames * SAMPLE_RATE // FPS :][: num_frames * SAMPLE_RATE // FPS]
        gated = speech_range_db(clip_audio) < self.min_speech_range_db or mouth_motion(landmarks, width, height) < self.min_mouth_motion
        confidence = 0.0 if gated else float(curve[best])
        per_frame = curve[:: _STEPS_PER_FRAME]  # one value per whole-frame offset, -max_offset..max_offset
        return SyncEstimate(offset_frames=refined / _STEPS_PER_FRAME, confidence=max(confidence, 0.0), distances=1.0 - per_frame)
