"""The learned lip-sync model: the embedded default of the sync stage, shipped as a small weight
file and retrained with `talkcurate train-sync` (train/sync_training.py) on any run's shards.

It is SyncNet's idea on what the face stage already measures. Two small convolutional streams
turn each 25 fps frame into a unit vector: one from the mouth's shape (lip and jaw landmarks,
aligned to a canonical face so head pose, face size and the person's own mouth drop out), one from
the 40 ms of log-mel audio that goes with the frame. Trained contrastively over offsets, the two
agree where lips and sound belong together. A clip's offset curve is the mean agreement of every
frame with the audio `o` frames later, for each `o` in the search range: one matrix product.

Why it can say when it is unsure (`SyncEvidence`): besides the curve's peak, it measures the best
rival peak at least `RIVAL_FRAMES` away (rhythmic speech such as GRID's makes a comb of peaks one
word apart), and what the same clip reaches with its audio rolled out of alignment (chance). The
sync stage decides on those numbers; this module only measures.

Inference is numpy (workers need not import torch); train/sync_training.py holds the same network
in torch and writes it in this module's format.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.face import LIPS_INNER, LIPS_OUTER
from schemas.records import SAMPLE_RATE
from stages.sync_models import SAMPLES_PER_FRAME, SyncEstimate

FORMAT = "talkcurate-lip-sync-v1"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "models" / "lip_sync.npz"

# Points that move with the head but not with speech: forehead, nose bridge and tip, eye corners,
# cheek sides. The per-frame similarity transform that maps them onto the template removes pose.
RIGID_POINTS = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 130, 359, 127, 356, 234, 454)
# Lip contours and the chin and jaw below them.
MOUTH_POINTS = LIPS_OUTER + LIPS_INNER + (152, 148, 377, 176, 400, 149, 378)
VIDEO_FEATURES = 2 * len(MOUTH_POINTS)

MEL_BANDS = 40
MEL_PER_FRAME = 4  # 10 ms steps per 25 fps frame
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
    frames = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[::_HOP][:steps] * np.hanning(_WINDOW).astype(np.float32)
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


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Same-padded 1-D convolution of (T, Cin) by torch-layout (Cout, Cin, k) weights."""
    k = weight.shape[2]
    padded = np.pad(x, ((k // 2, k - 1 - k // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, k, axis=0)  # (T, Cin, k)
    return np.tensordot(windows, weight, axes=([1, 2], [1, 2])) + bias


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


@dataclass
class SyncEvidence:
    """What the model measured on one face against one clip's audio context."""

    curve: np.ndarray  # mean agreement at each offset -max_offset..max_offset (frames); > 0: audio lags
    offset_frames: float  # the peak, refined between frames
    peak: float  # the curve's maximum
    rival: float  # the curve's maximum at least RIVAL_FRAMES from the peak
    chance_mean: float  # mean and spread of the peak with the audio rolled out of alignment
    chance_std: float

    @property
    def margin(self) -> float:
        """How far the peak stands above its best rival."""
        return self.peak - self.rival

    @property
    def significance(self) -> float:
        """How far the peak stands above chance, in units of chance's spread."""
        return (self.peak - self.chance_mean) / max(self.chance_std, 1e-3)


class LipSyncModel:
    """The two-stream network, loaded from a FORMAT weight file."""

    def __init__(self, path: str | Path = DEFAULT_WEIGHTS):
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["format"]) != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} weight file (format {str(npz['format'])!r})")
            self.params = {name: npz[name].astype(np.float32) for name in npz.files if name not in ("format", "version")}
            self.version = str(npz["version"])
        self.template = self.params.pop("template").astype(np.float64)
        self.video_layers = sorted({n.split(".")[1] for n in self.params if n.startswith("video.")}, key=int)
        self.audio_layers = sorted({n.split(".")[1] for n in self.params if n.startswith("audio.")}, key=int)

    @property
    def name(self) -> str:
        return f"lip-sync-{self.version}"

    def _stream(self, prefix: str, layers: list[str], x: np.ndarray) -> np.ndarray:
        for i, layer in enumerate(layers):
            x = _conv(x, self.params[f"{prefix}.{layer}.weight"], self.params[f"{prefix}.{layer}.bias"])
            if i < len(layers) - 1:
                x = np.maximum(x, 0.0)
        return x

    def embed_video(self, landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
        """(T, D) unit vectors, one per frame."""
        return _unit(self._stream("video", self.video_layers, mouth_shape(landmarks, width, height, self.template)))

    def embed_audio(self, audio: np.ndarray) -> np.ndarray:
        """(len // 640, D) unit vectors, one per 25 fps frame of int16 16 kHz audio."""
        frames = len(audio) // SAMPLES_PER_FRAME
        mel = log_mel(audio[: frames * SAMPLES_PER_FRAME])
        first, rest = self.audio_layers[0], self.audio_layers[1:]
        x = np.maximum(_conv(mel, self.params[f"audio.{first}.weight"], self.params[f"audio.{first}.bias"]), 0.0)
        x = x[: frames * MEL_PER_FRAME].reshape(frames, -1)  # a frame's four 10 ms steps side by side
        return _unit(self._stream("audio", rest, x))

    def evidence(self, video: np.ndarray, audio: np.ndarray, context_frames: int, max_offset: int, chance_rolls: int = 64) -> SyncEvidence:
        """The offset curve of video embeddings (T, D) against audio embeddings of the clip with
        `context_frames` on each side, over +-`max_offset` frames, with its rival and chance peaks."""
        if max_offset > context_frames:
            raise ValueError(f"an offset of {max_offset} frames needs at least that much audio context, not {context_frames}")
        frames = len(video)
        audio = np.pad(audio, ((0, max(0, frames + 2 * context_frames - len(audio))), (0, 0)))

        def curve(embedded: np.ndarray) -> np.ndarray:
            start = context_frames - max_offset
            # agreement[t, j]: frame t against audio frame t + j - max_offset
            windows = np.lib.stride_tricks.sliding_window_view(embedded[start : start + frames + 2 * max_offset], frames, axis=0)
            return np.einsum("td,jdt->j", video, windows) / frames

        values = curve(audio)
        best = int(np.argmax(values))
        far = np.abs(np.arange(len(values)) - best) >= RIVAL_FRAMES
        rival = float(values[far].max()) if far.any() else float(values.min())
        refined = float(best)
        if 0 < best < len(values) - 1:
            below, peak, above = values[best - 1 : best + 2]
            curvature = below - 2 * peak + above
            if curvature < 0:
                refined += float(np.clip(0.5 * (below - above) / curvature, -0.5, 0.5))
        # Chance: the same search with the audio rolled whole frames past the search's reach, at up
        # to `chance_rolls` evenly spaced rolls (the embeddings are computed once: each roll costs
        # one product).
        total = len(audio)
        lowest = 2 * max_offset + RIVAL_FRAMES
        rolls = range(lowest, total - lowest + 1, max(1, (total - 2 * lowest) // chance_rolls)) if total > 2 * lowest else [total // 2]
        chance = np.array([curve(np.roll(audio, roll, axis=0)).max() for roll in rolls])
        return SyncEvidence(values, refined - max_offset, float(values[best]), rival, float(chance.mean()), float(chance.std()))


@functools.cache
def shipped_model() -> LipSyncModel:
    return LipSyncModel(DEFAULT_WEIGHTS)


class LipSyncScorer:
    """The sync stage's face-and-audio scorer on the learned model: `confidence` is the peak's
    significance above chance, `margin` its lead over the best rival offset."""

    def __init__(self, model_path: str = ""):
        self.model = LipSyncModel(model_path) if model_path else shipped_model()
        self.name = self.model.name

    def score(self, landmarks: np.ndarray, width: int, height: int, audio_context: np.ndarray,
              context_frames: int, max_offset: int) -> SyncEstimate:
        """`audio_context` covers the clip plus `context_frames` on both sides; offsets are searched
        within +-`max_offset` frames. Positive: the audio lags the video."""
        video = self.model.embed_video(landmarks, width, height)
        found = self.model.evidence(video, self.model.embed_audio(audio_context), context_frames, max_offset)
        return SyncEstimate(found.offset_frames, found.significance, 1.0 - found.curve, margin=found.margin, agreement=found.peak)
