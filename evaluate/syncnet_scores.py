"""Sync-C and Sync-D (a.k.a. LSE-C and LSE-D), as the papers' evaluation scripts compute them.

syncnet-python's `SyncNetInstance.evaluate`, and the copies of it in LatentSync's
`eval/syncnet/syncnet_eval.py` and Wav2Lip's `evaluation/scores_LSE`, run SyncNet (`syncnet_v2.model`)
on a face track's 224 x 224 crops and its 16 kHz audio, and report from the mean distance curve
over offsets -vshift..vshift (vshift 15):

* Sync-D: the smallest mean distance;
* Sync-C: the median of the mean distances minus that smallest one;
* AV offset: `vshift - argmin`, positive when the audio comes early (the sound before the lips).

The procedure (windows, MFCCs, distances, mean over all windows, median - min) is the one the
curation stage's SyncNet backend already implements, `stages.sync_models.SyncNetScorer`, and is
reused from there: both average each offset's distance over every 5-frame window of the whole clip
and take median - min of that curve; neither takes a per-window statistic (syncnet-python's
"framewise conf" is printed, never part of the score). What this module adds is what the
evaluation scripts do around it:

* crops of any size are resized to 224 x 224 with OpenCV's bilinear resize, as LatentSync's and
  Wav2Lip's scripts do to every frame they read (`cv2.resize(img, (224, 224))`; a no-op on the
  224 x 224 crops their own face pipeline writes);
* float audio becomes the 16-bit PCM the scripts read back from ffmpeg's `pcm_s16le` (x 32768,
  rounded, clipped);
* Sync-D, and the offset in the scripts' sign. The curation stage reports the opposite sign
  (`SyncEstimate.offset_frames = argmin - max_offset`, positive when the audio lags) because its
  manifest's `sync_offset_ms` is positive for late audio; here the number is the one the scripts
  print, so it can be compared with theirs.

Face crops with syncnet-python's geometry (its `crop_scale` 0.4 around a smoothed face box) come
from `stages.sync_models.crop_for_syncnet`. Not reproduced: the scripts' S3FD face tracks and the
JPEG/XVID round trips their crops go through (see `stages.sync_models`).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from stages.sync_models import CROP_SIZE, SyncNetScorer

VSHIFT = 15  # the scripts' offset search, +-15 frames at 25 fps


@functools.lru_cache(maxsize=2)
def _scorer(model_path: str, device: str) -> SyncNetScorer:
    return SyncNetScorer(model_path, device=device)


def syncnet_crops(frames: np.ndarray) -> np.ndarray:
    """RGB face crops (T, H, W, 3) uint8 at 224 x 224, resized bilinearly as the scripts resize them."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB face crops, got {frames.shape} {frames.dtype}")
    if frames.shape[1:3] == (CROP_SIZE, CROP_SIZE):
        return frames
    return np.stack([cv2.resize(frame, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR) for frame in frames])


def pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16, the way ffmpeg writes pcm_s16le (x 32768, rounded, clipped)."""
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be 1-D float mono at 16 kHz, got {audio.shape} {audio.dtype}")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinity")
    return np.clip(np.rint(audio.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)


def sync_c_d(model_path: str, frames: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT, device: str = "cpu") -> dict:
    """Sync-C, Sync-D and the AV offset of face crops (T, H, W, 3) uint8 RGB at 25 fps and their
    audio (float32, 16 kHz mono, starting with the first frame), with the SyncNet weights at
    `model_path` (syncnet_v2.model). `offset_frames` is in the scripts' sign: positive when the
    audio comes early."""
    estimate = _scorer(str(model_path), device).score(syncnet_crops(frames), pcm16(audio), max_offset=vshift)
    best = int(np.argmin(estimate.distances))
    return {
        "sync_c": float(estimate.confidence),
        "sync_d": float(estimate.distances[best]),
        "offset_frames": vshift - best,
    }
