"""Lip-sync models behind a small interface: a face-crop sequence and its audio in, an offset out.

`SyncNetScorer` is the real backend: SyncNet (Chung & Zisserman, "Out of time", 2016) with the
published `syncnet_v2.model` weights, evaluated the way syncnet-python evaluates a face track. The
network class comes from the installed syncnet-python package, loaded from its `SyncNetModel.py`
file (importing the package itself fails beside scenedetect 0.7); everything else here is our own
implementation of its procedure:

* Faces (`crop_for_syncnet`): the tracked face box per frame, its half-size `s = max(w, h) / 2` and
  centre median-filtered over 13 frames (scipy's `medfilt`, zero padding at the ends, as the
  original), the frame padded by `s * (1 + 2 * cs)` pixels of grey 110, a square of side
  `2 * s * (1 + cs)` cut out with its top `s` above the box centre (so the crop reaches further
  below the face, to the chin and mouth, than above it: the box centre lies `cs * s` above the crop's
  centre), resized to 224 x 224 with bilinear interpolation. `cs` (crop scale) is 0.4.
* Video input: colour, not grey. The original reads the crop frames with `cv2.imread`, so the
  network sees BGR channel order, raw 0-255 values as float (no mean subtraction, no scaling).
  We take RGB crops and reverse the channels. Tensor layout (N, 3, 5, 224, 224): windows of 5
  consecutive frames.
* Audio input: int16 mono 16 kHz samples, unscaled, to `python_speech_features.mfcc` with its
  defaults (25 ms windows every 10 ms, so 100 Hz and 4 MFCC frames per 25 fps video frame, 13
  coefficients, the first replaced by log energy). Windows of 20 MFCC frames (200 ms, the same span
  as 5 video frames), layout (N, 1, 13, 20), window `i` starting at MFCC frame `4 * i`.
* Windows: `min(frames, samples // 640) - 5` of each (one fewer than would fit: the original's
  count), forwarded in batches of 20 through `forward_lip` and `forward_aud`.
* Distances: for each video window `i` and each candidate offset `o` in [-max_offset, max_offset],
  the Euclidean distance (torch's `pairwise_distance`, eps 1e-6) between the video embedding of
  window `i` and the audio embedding of window `i + o`; audio windows outside the clip are zero
  vectors (the original pads the audio embeddings with `max_offset` zero rows at each end and keeps
  those distances in the mean). The distance per offset is the mean over all video windows; the
  offset is the one with the smallest mean distance, the confidence the median of the mean
  distances minus their minimum.
* Sign: syncnet-python reports `vshift - argmin`, which is positive when the audio comes *early*
  (audio embedding `i - k` matches video `i`). This project reports the opposite:
  `offset_frames = argmin - max_offset`, positive when the audio lags the video (the sound comes
  after the lips move), so `offset_frames = -(syncnet-python's offset)`. `distances[j]` belongs to
  offset `j - max_offset`.

What is not replicated: the original writes the crops to an XVID AVI and extracts JPEGs from it,
and reads the source frames from JPEGs, so its network sees twice-compressed pixels; its faces come
from S3FD, ours from the face stage's tracker. The published weights were trained on crops made this
way from broadcast video, so neither difference should matter beyond noise.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from schemas.records import SAMPLE_RATE, SAMPLES_PER_FRAME

MODEL_PATH_OPTION = "sync.syncnet_model_path"

MFCC_PER_FRAME = 4  # python_speech_features' default 10 ms step: 100 Hz
VIDEO_WINDOW = 5  # frames per lip window
AUDIO_WINDOW = VIDEO_WINDOW * MFCC_PER_FRAME  # 20 MFCC frames
CROP_SIZE = 224
CROP_SCALE = 0.4  # syncnet-python's `crop_scale` (cs)
BOX_SMOOTHING = 13  # median filter length over the box size and centre, frames
PAD_GREY = 110  # value of the border around the frame, all channels
BATCH_SIZE = 20


@dataclass
class SyncEstimate:
    """One clip's audio-video offset estimate.

    `offset_frames` > 0: the audio lags the video (sound after the lips) by that many 25 fps frames;
    < 0: the audio leads. `distances[j]` is the mean embedding distance at offset `j - max_offset`
    (length `2 * max_offset + 1`); `confidence` is in the backend's units (SyncNet: median(distances)
    - min(distances)). `margin`, where the backend measures it, is how far the best offset stands
    above its best rival at least a few frames away, and `agreement` how well the two streams agree
    at the best offset. `evidence` is the backend's own record of the measurement, where the stage
    can pool it over a source's clips (the learned model's `SyncEvidence`).
    """

    offset_frames: float
    confidence: float
    distances: np.ndarray
    margin: float | None = None
    agreement: float | None = None
    evidence: Any = None


def refined_peak(curve: np.ndarray) -> float:
    """The index of `curve`'s maximum, refined between samples by the parabola through it and its
    neighbours (at most half a sample either way, since they are not above it)."""
    best = int(np.argmax(curve))
    if 0 < best < len(curve) - 1:
        below, peak, above = curve[best - 1 : best + 2]
        curvature = below - 2 * peak + above
        if curvature < 0:
            return best + 0.5 * float(below - above) / float(curvature)
    return float(best)


def syncnet_model_file() -> Path:
    """The installed syncnet-python's SyncNetModel.py, found without importing the package."""
    spec = importlib.util.find_spec("syncnet_python")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("syncnet-python is not installed (pip install --no-deps syncnet-python==0.2.3)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "SyncNetModel.py"
        if path.is_file():
            return path
    raise ImportError(f"syncnet-python has no SyncNetModel.py in {list(spec.submodule_search_locations)}")


@functools.cache
def _syncnet_module() -> ModuleType:
    path = syncnet_model_file()
    name = "_talkcurate_syncnet_model"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so its classes pickle and print under a resolvable module name
    spec.loader.exec_module(module)
    return module


def syncnet_model_class() -> type:
    """syncnet-python's network class (`S` in its SyncNetModel.py), loaded from the file."""
    return _syncnet_module().S


def load_syncnet_state(model, path: str | Path) -> None:
    """Copy a `syncnet_v2.model` state dict into `model`, by parameter name.

    The published file is a torch-saved dict of tensors keyed by the network's own parameter names
    (`netcnnaud.0.weight`, ..., no `module.` prefix), which syncnet-python copies name by name into
    the network's state dict. It holds only tensors, so it loads with `weights_only=True` (no code
    runs while reading it). Stricter than the original, which ignores network entries the file lacks
    and crashes with a bare KeyError on names the network lacks: every name and shape must match.
    The one exception is BatchNorm's `num_batches_tracked` counters, which PyTorch added after the
    weights were published and which evaluation never reads.
    """
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: not a plain state dict of tensors (the published syncnet_v2.model format); "
            f"refusing to unpickle anything else: {error}"
        ) from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path}: expected a dict of tensors keyed by parameter name (syncnet_v2.model format), got "
            f"{type(state).__name__}"
        )
    own = model.state_dict()
    unknown = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    wrong_shape = [
        f"{k}: file {tuple(v.shape)}, network {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = []
    if unknown:
        hint = (
            " (a 'module.' prefix? the published file has none)"
            if any(k.startswith("module.") for k in unknown)
            else ""
        )
        problems.append(
            f"names the network does not have{hint}: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    if missing:
        problems.append(
            f"network parameters missing from the file: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    if wrong_shape:
        problems.append(f"wrong shapes: {'; '.join(wrong_shape[:5])}{' ...' if len(wrong_shape) > 5 else ''}")
    if problems:
        raise ValueError(f"{path} does not match syncnet-python's SyncNet: " + "; ".join(problems))
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)  # state_dict() tensors share storage with the network's


def offset_distances(video_features, audio_features, max_offset: int) -> np.ndarray:
    """(N, 2 * max_offset + 1) distances: row i, column j compares video window i with audio window
    i + j - max_offset, an all-zero embedding where that window is outside [0, N)."""
    import torch
    import torch.nn.functional as F

    video = torch.as_tensor(video_features, dtype=torch.float32)
    audio = torch.as_tensor(audio_features, dtype=torch.float32)
    if video.shape != audio.shape or video.ndim != 2:
        raise ValueError(
            f"video and audio embeddings must be (N, D) alike, got {tuple(video.shape)} and {tuple(audio.shape)}"
        )
    width = 2 * max_offset + 1
    padded = F.pad(audio, (0, 0, max_offset, max_offset))
    index = torch.arange(len(video))[:, None] + torch.arange(width)[None, :]
    return F.pairwise_distance(video[:, None, :].expand(-1, width, -1), padded[index]).numpy()


def estimate_from_distances(frame_distances: np.ndarray, max_offset: int) -> SyncEstimate:
    """Mean over windows, offset at the smallest mean distance, confidence median - min."""
    mean = np.asarray(frame_distances, dtype=np.float32).mean(axis=0)
    best = int(np.argmin(mean))
    return SyncEstimate(float(best - max_offset), float(np.median(mean) - mean[best]), mean)


class SyncNetScorer:
    """SyncNet with the published `syncnet_v2.model` weights (see the module docstring)."""

    name = "syncnet"

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = BATCH_SIZE):
        import torch

        path = Path(model_path) if model_path else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"SyncNet weights not found at {model_path!r}: set {MODEL_PATH_OPTION} to the path of syncnet_v2.model"
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = syncnet_model_class()()
        load_syncnet_state(self.model, path)
        self.model.to(self.device).eval()

    # -- the two streams ---------------------------------------------------------------------

    @staticmethod
    def num_windows(num_frames: int, num_samples: int) -> int:
        """Windows the original evaluates: min(frames, whole 640-sample frames of audio) - 5."""
        return min(num_frames, num_samples // SAMPLES_PER_FRAME) - VIDEO_WINDOW

    def video_features(self, crops: np.ndarray, num_windows: int) -> np.ndarray:
        """Lip embeddings (num_windows, 1024) of the 5-frame windows starting at frames 0, 1, ..."""
        import torch

        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
            raise ValueError(
                f"crops must be (T, {CROP_SIZE}, {CROP_SIZE}, 3) uint8 RGB, got {crops.shape} {crops.dtype}"
            )
        bgr = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1]))  # the original reads BGR with cv2
        out = []
        with torch.inference_mode():
            for start in range(0, num_windows, self.batch_size):
                stop = min(num_windows, start + self.batch_size)
                batch = torch.stack([bgr[i : i + VIDEO_WINDOW] for i in range(start, stop)])  # (B, 5, H, W, 3)
                batch = batch.permute(0, 4, 1, 2, 3).float().to(self.device)  # (B, 3, 5, H, W), 0-255
                out.append(self.model.forward_lip(batch).float().cpu())
        return torch.cat(out).numpy()

    def audio_features(self, audio: np.ndarray, num_windows: int) -> np.ndarray:
        """Audio embeddings (num_windows, 1024) of the 20-MFCC-frame windows starting at MFCC frames 0, 4, 8, ..."""
        import python_speech_features
        import torch

        audio = np.asarray(audio)
        if audio.ndim != 1 or audio.dtype != np.int16:
            raise ValueError(f"audio must be 1-D int16 mono at {SAMPLE_RATE} Hz, got {audio.shape} {audio.dtype}")
        mfcc = python_speech_features.mfcc(audio, SAMPLE_RATE)  # (frames, 13), on the unscaled int16 values
        coefficients = torch.from_numpy(np.ascontiguousarray(mfcc.T)).float()  # (13, frames)
        out = []
        with torch.inference_mode():
            for start in range(0, num_windows, self.batch_size):
                stop = min(num_windows, start + self.batch_size)
                batch = torch.stack(
                    [
                        coefficients[:, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + AUDIO_WINDOW]
                        for i in range(start, stop)
                    ]
                )
                out.append(self.model.forward_aud(batch[:, None].to(self.device)).float().cpu())  # (B, 1, 13, 20)
        return torch.cat(out).numpy()

    # -- the estimate ------------------------------------------------------------------------

    def score(self, crops: np.ndarray, audio: np.ndarray, max_offset: int = 15) -> SyncEstimate:
        """Offset and confidence of RGB face crops (T, 224, 224, 3) uint8 at 25 fps and their int16
        mono 16 kHz audio, which starts with the first crop (640 samples a frame)."""
        windows = self.num_windows(len(crops), len(audio))
        if windows < 1:
            raise ValueError(
                f"too short for SyncNet: {len(crops)} frames and {len(audio)} samples; needs at least "
                f"{VIDEO_WINDOW + 1} frames of both"
            )
        video = self.video_features(crops, windows)
        sound = self.audio_features(audio, windows)
        return estimate_from_distances(offset_distances(video, sound, max_offset), max_offset)


def crop_for_syncnet(frames: np.ndarray, boxes: np.ndarray, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """(T, 224, 224, 3) uint8 face crops from RGB frames (T, H, W, 3) and normalized boxes (T, 4)
    (x0, y0, x1, y1 in [0, 1]), with syncnet-python's geometry (see the module docstring).

    Frames without a box (NaN) get one interpolated linearly from their neighbours (held at the
    ends), as syncnet-python interpolates a track between detections.
    """
    from scipy.signal import medfilt

    frames = np.asarray(frames)
    boxes = np.asarray(boxes, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3 or boxes.shape != (len(frames), 4):
        raise ValueError(f"need frames (T, H, W, 3) and boxes (T, 4), got {frames.shape} and {boxes.shape}")
    height, width = frames.shape[1:3]
    seen = ~np.isnan(boxes).any(axis=1)
    if not seen.any():
        raise ValueError("no face box on any frame")
    index = np.arange(len(boxes))
    boxes = np.stack([np.interp(index, index[seen], boxes[seen, c]) for c in range(4)], axis=1)
    boxes = boxes * (width, height, width, height)  # pixels

    half = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    with warnings.catch_warnings():  # medfilt warns when the clip is shorter than the kernel
        warnings.simplefilter("ignore")
        half, cx, cy = (medfilt(v, BOX_SMOOTHING) for v in (half, cx, cy))

    out = np.empty((len(frames), CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, frame in enumerate(frames):
        bs = half[i]
        if not bs >= 1:
            raise ValueError(f"face box on frame {i} is {2 * bs:.1f} pixels after smoothing: too small to crop")
        pad = int(bs * (1 + 2 * crop_scale))
        padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_GREY,) * 3)
        my, mx = cy[i] + pad, cx[i] + pad
        y0, y1 = int(my - bs), int(my + bs * (1 + 2 * crop_scale))
        x0, x1 = int(mx - bs * (1 + crop_scale)), int(mx + bs * (1 + crop_scale))
        region = padded[max(0, y0) : y1, max(0, x0) : x1]
        if region.size == 0:
            raise ValueError(f"face box on frame {i} lies outside the frame")
        out[i] = cv2.resize(region, (CROP_SIZE, CROP_SIZE))
    return out
