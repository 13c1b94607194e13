"""The numbers papers report, computed only from weights the user names: FID over frames and FVD
over 16-frame clips (evaluate/realism.py: Inception and I3D TorchScript detectors), against the
frames and clips of real videos; Sync-C and Sync-D from SyncNet (evaluate/syncnet_scores.py) on the
face crops syncnet-python's evaluation cuts, with its offset in its own sign
(`syncnet_offset_frames`: positive when the audio comes early, the opposite of `offset_ms`).
Without the weights (or the real videos) each number is null and its status says why: nothing
here is ever estimated or invented."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evaluate.realism import FVD_FRAMES
from stages.sync_models import crop_for_syncnet


def clips_of(frames: np.ndarray, length: int = FVD_FRAMES) -> np.ndarray:
    """(N, length, H, W, 3): consecutive non-overlapping clips from the first frame; the remainder is left out."""
    count = len(frames) // length
    return frames[: count * length].reshape(count, length, *frames.shape[1:])


class PaperMetrics:
    """Holds the detectors and the real videos' features; collects each video's features for the set's FID and FVD."""

    def __init__(self, config, read: Callable):
        self.syncnet_model = config.syncnet_model
        self.detectors = {}
        if config.inception_model or config.i3d_model:
            from evaluate.realism import FeatureDetector

            for metric, path in (("fid", config.inception_model), ("fvd", config.i3d_model)):
                if path:
                    self.detectors[metric] = FeatureDetector.load(path)
        self.real = {metric: [] for metric in self.detectors}
        self.generated = {metric: [] for metric in self.detectors}
        for path in config.real if self.detectors else []:
            frames = read(path).frames
            for metric in self.detectors:
                self.real[metric].append(self._features(metric, frames))
        self.real = {metric: np.concatenate(parts) for metric, parts in self.real.items() if parts}

    def _features(self, metric: str, frames: np.ndarray) -> np.ndarray:
        detector = self.detectors[metric]
        if metric == "fid":
            return detector.image_features(frames)
        clips = clips_of(frames)
        return detector.video_features(clips) if len(clips) else np.zeros((0, 0), np.float32)

    def _missing(self, metric: str) -> str | None:
        """Why `metric` cannot be computed for any video, or None."""
        weights = {"fid": "Inception", "fvd": "I3D"}[metric]
        if metric not in self.detectors:
            return f"not computed: no {weights} weights given"
        if metric not in self.real:
            return "not computed: no --real videos given"
        return None

    def absent(self, why: str = "") -> dict:
        """Every number null, with the reason: no weights, or (`why`) the video could not be measured."""
        out = {}
        for metric in ("fid", "fvd"):
            out[metric], out[f"{metric}_status"] = None, self._missing(metric) or f"not computed: {why}"
        missing = "not computed: no SyncNet weights given" if not self.syncnet_model else f"not computed: {why}"
        out.update(sync_c=None, sync_d=None, syncnet_offset_frames=None, sync_c_d_status=missing)
        return out

    def video(self, frames: np.ndarray, boxes: np.ndarray, audio: np.ndarray | None) -> dict:
        """This video's FID and FVD against the real set (its features are kept for the set's) and its Sync-C/D."""
        out = self.absent("no audio" if audio is None else "")
        for metric in ("fid", "fvd"):
            if self._missing(metric):
                continue
            features = self._features(metric, frames)
            unit = "frames" if metric == "fid" else f"{FVD_FRAMES}-frame clips"
            if len(features) < 2:
                out[f"{metric}_status"] = f"not computed: {len(features)} {unit}, at least 2 needed"
                continue
            self.generated[metric].append(features)
            out[metric] = float(self._frechet(features, self.real[metric]))
            out[f"{metric}_status"] = f"computed: {len(features)} {unit} against {len(self.real[metric])} real"
        if self.syncnet_model and audio is not None:
            from evaluate.syncnet_scores import sync_c_d

            crops = crop_for_syncnet(frames, boxes)
            scored = sync_c_d(self.syncnet_model, crops, audio.astype(np.float32) / 32768.0)
            out.update(
                sync_c=float(scored["sync_c"]),
                sync_d=float(scored["sync_d"]),
                syncnet_offset_frames=int(scored["offset_frames"]),
                sync_c_d_status="computed: SyncNet on syncnet-python's face crops",
            )
        return out

    @staticmethod
    def _frechet(a: np.ndarray, b: np.ndarray) -> float:
        from evaluate.realism import frechet_distance

        return frechet_distance(a, b)

    def summary(self) -> dict:
        """FID and FVD of every evaluated video's frames and clips taken together, as papers report them."""
        out = {}
        for metric in ("fid", "fvd"):
            missing = self._missing(metric)
            parts = self.generated.get(metric, [])
            if missing or not parts:
                out[metric], out[f"{metric}_status"] = None, missing or "not computed: no video gave features"
                continue
            features = np.concatenate(parts)
            out[metric] = float(self._frechet(features, self.real[metric]))
            out[f"{metric}_status"] = f"computed: {len(features)} generated against {len(self.real[metric])} real"
        return out
