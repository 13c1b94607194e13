"""FID and FVD, computed as their reference implementations compute them, from published detectors.

Both detectors are TorchScript archives, loaded with `torch.jit.load` (no pickled code runs):

* FID: NVlabs' Inception-v3 port `inception-2015-12-05.pt` (the TensorFlow FID graph of 2015-12-05,
  as stylegan2-ada-pytorch and clean-fid download it). stylegan2-ada-pytorch's
  `metrics/frechet_inception_distance.py` feeds it uint8 RGB images in (N, 3, H, W), values 0-255
  at the images' own size, as `detector(images, return_features=True)`; the module itself resizes
  to 299 x 299 (as the original TensorFlow code did) and scales to [-1, 1], and returns the
  2048-D pool features. `FeatureDetector.image_features` does exactly that. (clean-fid's default
  "clean" mode instead resizes with PIL bicubic to 299 itself and calls the module's inner
  `layers`; its numbers differ from these by its resize.)
* FVD: StyleGAN-V's I3D port `i3d_torchscript.pt` (the tf.hub Kinetics-400 I3D of the original
  FVD code). StyleGAN-V's `compute_fvd` feeds it uint8 clips in (N, 3, T, H, W), values 0-255 at
  the data's resolution, as `detector(videos, rescale=True, resize=True, return_features=True)`:
  the module itself scales to [-1, 1] and resizes every frame to 224 x 224, and returns the 400
  logits before the softmax. T is 16 consecutive frames for its FVD16 (`fvd2048_16f`: 2048 clips,
  one per video) and 128 for FVD128 (`FVD_FRAMES`). `FeatureDetector.video_features` does exactly
  that. The `rescale=False, resize=False` call seen elsewhere (universome/fvd-comparison, and
  scripts copied from it) is for input already scaled and resized by the caller; with it, every
  caller's own resize gives other numbers, so it is not used here.

`frechet_distance` is the distance between the Gaussians fitted to two feature sets:
||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), with scipy's `sqrtm`, and the complex-part
handling of pytorch-fid and clean-fid (a non-finite root is retried with 1e-6 added to both
diagonals; a complex root is accepted when its diagonal's imaginary parts are under 1e-3, and its
real part kept). Covariances are unbiased (`np.cov`, divisor N - 1) as in pytorch-fid and clean-fid;
stylegan2-ada-pytorch and StyleGAN-V divide by N (`ddof=0` reproduces them; the difference shrinks
as 1/N, about 0.05 % of the covariance terms for 2048 samples).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
I3D_FILE = "i3d_torchscript.pt"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
FVD_FRAMES = 16  # consecutive frames per clip of StyleGAN-V's FVD16 (128 for FVD128)
IMAGE_BATCH = 64  # stylegan2-ada-pytorch's batch for dataset features
VIDEO_BATCH = 8  # StyleGAN-V's at 256 px: 128 frames a batch over 16-frame clips
SQRTM_EPS = 1e-6
MAX_IMAGINARY = 1e-3


class FeatureDetector:
    """A published TorchScript feature detector (Inception for FID, I3D for FVD), batched on a device."""

    def __init__(self, module, device: str = "cpu"):
        import torch

        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> FeatureDetector:
        """Load `inception-2015-12-05.pt` or `i3d_torchscript.pt` (a TorchScript archive) from `path`."""
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"feature detector not found at {str(path)!r}: download {INCEPTION_FILE} ({INCEPTION_URL}) "
                f"for FID or {I3D_FILE} ({I3D_URL}) for FVD"
            )
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"{path}: not a TorchScript archive (the published format of {INCEPTION_FILE} and {I3D_FILE}): {error}"
            ) from error
        return cls(module, device)

    def image_features(self, frames: np.ndarray, batch_size: int = IMAGE_BATCH) -> np.ndarray:
        """(N, 2048) Inception pool features of RGB frames (N, H, W, 3) uint8, as stylegan2-ada-pytorch."""
        frames = _checked(frames, 4, "frames", "(N, H, W, 3)")
        return self._features(frames.transpose(0, 3, 1, 2), batch_size, {"return_features": True})

    def video_features(self, clips: np.ndarray, batch_size: int = VIDEO_BATCH) -> np.ndarray:
        """(N, 400) I3D features of RGB clips (N, T, H, W, 3) uint8, as StyleGAN-V's `compute_fvd`
        (T = `FVD_FRAMES` consecutive frames for FVD16)."""
        clips = _checked(clips, 5, "clips", "(N, T, H, W, 3)")
        kwargs = {"rescale": True, "resize": True, "return_features": True}
        return self._features(clips.transpose(0, 4, 1, 2, 3), batch_size, kwargs)

    def _features(self, channels_first: np.ndarray, batch_size: int, kwargs: dict) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(channels_first), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(channels_first[start : start + batch_size]))
                features = self.module(batch.to(self.device), **kwargs)
                if features.ndim != 2 or len(features) != len(batch):
                    raise ValueError(
                        f"the detector returned features of shape {tuple(features.shape)} for {len(batch)} inputs; "
                        "expected (N, D): is this the right detector for the call?"
                    )
                out.append(features.float().cpu().numpy())
        return np.concatenate(out)


def _checked(array: np.ndarray, ndim: int, name: str, layout: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim or array.shape[-1] != 3 or array.dtype != np.uint8 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty {layout} uint8 RGB array, got {array.shape} {array.dtype}")
    return array


def feature_statistics(features: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64; `ddof` 1: divisor N - 1."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) <= ddof:
        raise ValueError(f"features must be (N, D) with N > {ddof}, got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinity")
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False, ddof=ddof))


def frechet_distance_of_gaussians(mean_a, cov_a, mean_b, cov_b) -> float:
    """||mean_a - mean_b||^2 + tr(cov_a + cov_b - 2 sqrtm(cov_a cov_b)), with the references' handling
    of a root that is not finite or not real (see the module docstring)."""
    import scipy.linalg

    if np.shape(mean_a) != np.shape(mean_b) or np.shape(cov_a) != np.shape(cov_b):
        raise ValueError(f"feature dimensions differ: {np.shape(mean_a)} and {np.shape(mean_b)}")
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = np.eye(len(cov_a)) * SQRTM_EPS
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        largest = np.abs(np.diagonal(root).imag).max()
        if largest > MAX_IMAGINARY:
            raise ValueError(f"the covariance product's square root has imaginary parts up to {largest:.3g}")
        root = root.real
    diff = np.asarray(mean_a) - np.asarray(mean_b)
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, ddof: int = 1) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N_a, D) and (N_b, D):
    FID of Inception features, FVD of I3D features."""
    return frechet_distance_of_gaussians(*feature_statistics(features_a, ddof), *feature_statistics(features_b, ddof))
