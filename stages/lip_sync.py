"""The learned lip-sync model: the embedded default of the sync stage, shipped as a small weight
file and retrained with `talkcurate train-sync` (train/sync_training.py) on any run's shards.

An audio-to-mouth regressor, learned once across many people. The mouth's shape per 25 fps frame
(lip and jaw landmarks, aligned to a canonical face so head pose, face size and the person's own
mouth drop out) is reduced to its few main components of motion; a ridge regression predicts
those components from the log-mel spectrum of the 140 ms of audio around the frame. A clip's offset
curve is how well the observed mouth correlates with the mouth predicted from audio `o` frames
later, for each `o` in the search range.

Why a linear regressor and not a deep two-stream network: the development corpus holds minutes,
not hours, of talking faces. A SyncNet-style network trained on it (this module's first version)
learned its training people by heart and measured new people barely above chance; the regressor
has a few thousand weights, fits in a second, and held-out people's offsets come out the same at
every applied shift (the README gives the measurements).

Why it can say when it is unsure (`SyncEvidence`): besides the curve's peak, it measures the best
rival peak at least `RIVAL_FRAMES` away (rhythmic speech such as GRID's makes a comb of peaks one
word apart), and what the same mouth reaches against other people's speech (chance: the mouth
predicted from the training audio, stored with the weights). The sync stage decides on those
numbers; this module only measures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.face import LIPS_INNER, LIPS_OUTER
from schemas.records import SAMPLE_RATE, SAMPLES_PER_FRAME
from stages.sync_models import SyncEstimate, refined_peak

FORMAT = "talkcurate-lip-sync-v2"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "models" / "lip_sync.npz"

# Points that move with the head but not with speech: forehead, nose bridge and tip, eye corners,
# cheek sides. The per-frame similarity transform that maps them onto the template removes pose.
RIGID_POINTS = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 130, 359, 127, 356, 234, 454)
# Lip contours and the chin and jaw below them.
MOUTH_POINTS = LIPS_OUTER + LIPS_INNER + (152, 148, 377, 176, 400, 149, 378)
VIDEO_FEATURES = 2 * len(MOUTH_POINTS)

MEL_BANDS = 40
MEL_PER_FRAME = 4  # 10 ms steps per 25 fps frame
POOLED_STEP = 2  # the regressor reads 20 ms steps...
POOLED_BANDS = 2  # ...of bands pooled in pairs: 20 bands
STEPS_PER_FRAME = MEL_PER_FRAME // POOLED_STEP
_HOP = SAMPLES_PER_FRAME // MEL_PER_FRAME  # 160 samples
_WINDOW = 400  # 25 ms
_FFT = 512
RIVAL_FRAMES = 3  # a rival peak is at least this many frames from the best one


def _mel_filters() -> np.ndarray:
    """(MEL_BANDS, _FFT // 2 + 1) triangular filters on the HTK mel scale, 50 Hz to 7.6 kHz."""
    mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    edges_hz = 700.0 * (10 ** (np.linspace(mel(50.0), mel(7600.0), MEL_BANDS + 2) / 2595.0) - 1.0)
    freqs = np.fft.rfftfreq(_FFT, 1 / SAMPLE_RATE)
    lo, centre, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    return np.maximum(0.0, np.minimum((freqs - lo) / (centre - lo), (hi - freqs) / (hi - centre))).astype(np.float32)


_MEL = _mel_filters()


def log_mel(audio: np.ndarray) -> np.ndarray:
    """(len // 160, MEL_BANDS) log-mel of int16 16 kHz audio, step n centred on sample 160 n,
    normalized over the whole input (each band's mean removed, one overall scale), so that
    loudness and the microphone's colour drop out."""
    x = audio.astype(np.float32) / 32768.0
    steps = len(x) // _HOP
    padded = np.pad(x, (_WINDOW // 2, _WINDOW))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[::_HOP][:steps] * np.hanning(_WINDOW).astype(
        np.float32
    )
    power = np.abs(np.fft.rfft(frames, n=_FFT, axis=1)) ** 2
    mel = np.log(power @ _MEL.T + 1e-6)
    mel -= mel.mean(axis=0)
    return (mel / (mel.std() + 1e-3)).astype(np.float32)


def _filled(points: np.ndarray) -> np.ndarray:
    """Frames without landmarks (NaN) take the nearest frame's that has them."""
    bad = np.isnan(points).any(axis=(1, 2))
    if not bad.any() or bad.all():
        return np.nan_to_num(points)
    good = np.flatnonzero(~bad)
    frames = np.arange(len(points))
    after = np.searchsorted(good, frames)  # the first good frame at or after each frame
    later, earlier = good[np.minimum(after, len(good) - 1)], good[np.maximum(after - 1, 0)]
    return points[np.where(frames - earlier < later - frames, earlier, later)]


def pixel_points(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(T, 478, 3) landmarks in pixel units (z is on the x scale, as the face mesh gives it)."""
    return _filled(landmarks[..., :3].astype(np.float64) * (width, height, width))


def align(points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """`points` (T, 478, 3) moved per frame by the similarity transform (Umeyama) that best maps
    its RIGID_POINTS onto `template`'s (len(RIGID_POINTS), 3)."""
    rigid = points[:, RIGID_POINTS]
    mean = rigid.mean(axis=1, keepdims=True)
    centred = rigid - mean
    target = template - template.mean(axis=0)
    u, s, vt = np.linalg.svd(np.einsum("tki,kj->tij", centred, target))
    sign = np.sign(np.linalg.det(u @ vt))
    s[:, -1] *= sign
    u[:, :, -1] *= sign[:, None]
    rotation = u @ vt  # applied as row vectors: p @ rotation
    scale = s.sum(axis=1) / np.maximum((centred**2).sum(axis=(1, 2)), 1e-9)
    return (points - mean) @ rotation * scale[:, None, None] + template.mean(axis=0)


def mouth_shape(landmarks: np.ndarray, width: int, height: int, template: np.ndarray) -> np.ndarray:
    """(T, VIDEO_FEATURES) float32: the mouth's aligned x, y per frame, less the clip's mean mouth
    (the person's own lips), over the template's scale."""
    aligned = align(pixel_points(landmarks, width, height), template)[:, MOUTH_POINTS, :2]
    aligned -= aligned.mean(axis=0)
    scale = np.linalg.norm(template - template.mean(axis=0)) / np.sqrt(len(template))
    return (aligned.reshape(len(aligned), -1) / scale).astype(np.float32)


def audio_features(audio: np.ndarray, context_steps: int) -> np.ndarray:
    """(len // 640, (2 * context_steps + STEPS_PER_FRAME) * 20) float32: per 25 fps frame of int16
    16 kHz audio, the pooled log-mel steps of the frame and `context_steps` on each side."""
    frames = len(audio) // SAMPLES_PER_FRAME
    mel = log_mel(audio[: frames * SAMPLES_PER_FRAME])[: frames * MEL_PER_FRAME]
    pooled = mel.reshape(-1, POOLED_STEP, MEL_BANDS // POOLED_BANDS, POOLED_BANDS).mean(axis=(1, 3))
    padded = np.pad(pooled, ((context_steps, context_steps), (0, 0)))
    span = 2 * context_steps + STEPS_PER_FRAME
    # (frames, bands, span): each frame's steps and those around it
    windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=0)[::STEPS_PER_FRAME][:frames]
    return np.ascontiguousarray(windows.transpose(0, 2, 1)).reshape(frames, -1)


def _standardized(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.mean(axis=axis, keepdims=True)
    return x / np.maximum(x.std(axis=axis, keepdims=True), 1e-6)


@dataclass
class SyncEvidence:
    """What the model measured on one face against one clip's audio context (or, pooled, on several
    clips of one source)."""

    curve: np.ndarray  # mean agreement at each offset -max_offset..max_offset (frames); > 0: audio lags
    chance_curves: np.ndarray  # (windows, offsets): the same search against other people's speech
    frames: int  # the evidence's length: what pooling weighs it by

    @functools.cached_property
    def _best(self) -> int:
        return int(np.argmax(self.curve))

    @property
    def max_offset(self) -> int:
        return len(self.curve) // 2

    @property
    def peak(self) -> float:
        return float(self.curve[self._best])

    @property
    def offset_frames(self) -> float:
        """The peak, refined between frames by the parabola through it and its neighbours."""
        return refined_peak(self.curve) - self.max_offset

    @property
    def rival(self) -> float:
        """The curve's maximum at least RIVAL_FRAMES from the peak."""
        far = np.abs(np.arange(len(self.curve)) - self._best) >= RIVAL_FRAMES
        return float(self.curve[far].max()) if far.any() else float(self.curve.min())

    @property
    def margin(self) -> float:
        """How far the peak stands above its best rival."""
        return self.peak - self.rival

    @property
    def significance(self) -> float:
        """How far the peak stands above what other people's speech reaches, in units of its spread."""
        return self.significance_of(self.peak)

    def significance_of(self, value: float) -> float:
        chance = self.chance_curves.max(axis=1)
        return (value - float(chance.mean())) / max(float(chance.std()), 1e-3)

    def at(self, offset_frames: float) -> float:
        """The curve at an offset (the nearest whole frame)."""
        return float(self.curve[int(np.clip(round(offset_frames) + self.max_offset, 0, len(self.curve) - 1))])


def pooled(evidence: list[SyncEvidence]) -> SyncEvidence:
    """The evidence of several clips of one source taken together, each weighed by its length (as if
    their frames were one clip's): the weighted means of the curves, and of the chance curves window
    by window (each clip's window r is its own stretch of other speech: wrong audio under every clip,
    as a wrong file's would be)."""
    weights = np.array([e.frames for e in evidence], np.float64)
    windows = min(len(e.chance_curves) for e in evidence)
    curve = np.average([e.curve for e in evidence], axis=0, weights=weights)
    chance = np.average([e.chance_curves[:windows] for e in evidence], axis=0, weights=weights)
    return SyncEvidence(curve, chance, int(weights.sum()))


class LipSyncModel:
    """The regressor, loaded from a FORMAT weight file."""

    def __init__(self, path: str | Path = DEFAULT_WEIGHTS):
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["format"]) != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} weight file (format {str(npz['format'])!r})")
            self.version = str(npz["version"])
            self.template = npz["template"].astype(np.float64)
            self.mouth_basis = npz["mouth_basis"].astype(np.float32)  # (components, VIDEO_FEATURES)
            self.audio_mean = npz["audio_mean"].astype(np.float32)
            self.audio_scale = npz["audio_scale"].astype(np.float32)
            self.weights = npz["weights"].astype(np.float32)  # (audio features, components)
            self.context_steps = int(npz["context_steps"])
            # (frames, components): the mouth predicted from the training audio
            self.null_bank = npz["null_bank"].astype(np.float32)

    @property
    def name(self) -> str:
        return f"lip-sync-{self.version}"

    def embed_video(self, landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
        """(T, components): the mouth's main components of motion, one row per frame."""
        return mouth_shape(landmarks, width, height, self.template) @ self.mouth_basis.T

    def embed_audio(self, audio: np.ndarray) -> np.ndarray:
        """(len // 640, components): the mouth components predicted from the audio, per 25 fps frame."""
        return (audio_features(audio, self.context_steps) - self.audio_mean) / self.audio_scale @ self.weights

    def evidence(
        self, video: np.ndarray, audio: np.ndarray, context_frames: int, max_offset: int, chance_windows: int = 64
    ) -> SyncEvidence:
        """The offset curve of the observed mouth (T, components) against the mouth predicted from the
        clip's audio with `context_frames` on each side, over +-`max_offset` frames, with its rival and
        chance peaks. The curve is the mean over components of their correlation."""
        if max_offset > context_frames:
            raise ValueError(
                f"an offset of {max_offset} frames needs at least that much audio context, not {context_frames}"
            )
        frames = len(video)
        audio = np.pad(audio, ((0, max(0, frames + 2 * context_frames - len(audio))), (0, 0)))
        start = context_frames - max_offset
        observed = _standardized(video, axis=0)  # once, for the curve and every chance window
        values = _correlation_curve(observed, audio[start : start + frames + 2 * max_offset])
        # Chance: the same search against the mouth predicted from other people's speech (the
        # training audio, stored with the weights), at up to `chance_windows` evenly spaced places.
        span = frames + 2 * max_offset
        bank = (
            self.null_bank
            if len(self.null_bank) >= span
            else np.resize(self.null_bank, (span, self.null_bank.shape[1]))
        )
        starts = np.linspace(0, len(bank) - span, min(chance_windows, len(bank) - span + 1)).astype(int)
        chance = np.array([_correlation_curve(observed, bank[s : s + span]) for s in starts])
        return SyncEvidence(values, chance, frames)


def _correlation_curve(observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(len(predicted) - T + 1,): at each lag j, the correlation of the observed mouth (T, K),
    standardized per component, with the predicted one from row j on, averaged over the K components."""
    frames, components = observed.shape
    y = observed
    windows = np.lib.stride_tricks.sliding_window_view(predicted, frames, axis=0)  # (lags, K, T), no copy
    cross = np.einsum("tk,jkt->jk", y, windows)  # y has zero mean: the predicted windows' means drop out
    total = np.concatenate([np.zeros((1, components)), np.cumsum(predicted, axis=0, dtype=np.float64)])
    squares = np.concatenate([np.zeros((1, components)), np.cumsum(predicted.astype(np.float64) ** 2, axis=0)])
    lags = len(predicted) - frames + 1
    mean = (total[frames : frames + lags] - total[:lags]) / frames
    spread = np.sqrt(np.maximum((squares[frames : frames + lags] - squares[:lags]) / frames - mean**2, 1e-12))
    return (cross / (frames * spread)).mean(axis=1)


@functools.cache
def shipped_model() -> LipSyncModel:
    return LipSyncModel(DEFAULT_WEIGHTS)


class LipSyncScorer:
    """The sync stage's face-and-audio scorer on the learned model: `confidence` is the peak's
    significance above chance, `margin` its lead over the best rival offset."""

    pooled = staticmethod(pooled)

    def __init__(self, model_path: str = ""):
        self.model = LipSyncModel(model_path) if model_path else shipped_model()
        self.name = self.model.name

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
        within +-`max_offset` frames. Positive: the audio lags the video."""
        video = self.model.embed_video(landmarks, width, height)
        found = self.model.evidence(video, self.model.embed_audio(audio_context), context_frames, max_offset)
        return SyncEstimate(
            found.offset_frames,
            found.significance,
            1.0 - found.curve,
            margin=found.margin,
            agreement=found.peak,
            evidence=found,
        )
