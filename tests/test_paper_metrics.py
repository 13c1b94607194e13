"""The paper metrics of `talkcurate evaluate` (evaluate/realism.py, evaluate/syncnet_scores.py), on
small randomly initialised detectors and SyncNet saved in the published formats.

FID/FVD: the detectors are TorchScript archives with the published call signatures; recorders (a
detector whose features are its own input) show what the reference call feeds them; the Fréchet
distance is checked against closed forms. Sync-C/D: a real GRID clip's face crops and audio through
a random SyncNet, against a numpy computation on the network's own embeddings.
"""

from __future__ import annotations

import av
import cv2
import media
import models
import numpy as np
import pytest
import python_speech_features
import torch

from core.media_io import decode_audio
from evaluate.realism import (
    FVD_FRAMES,
    INCEPTION_FILE,
    FeatureDetector,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_gaussians,
)
from evaluate.syncnet_scores import VSHIFT, pcm16, sync_c_d, syncnet_crops
from stages.sync_models import syncnet_model_class

# -- FID / FVD detectors -------------------------------------------------------------------------


class InceptionRecorder(torch.nn.Module):
    """Inception's call signature; its features are the uint8 input it was given, flattened."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if img.dtype != torch.uint8 or not return_features:
            raise ValueError("expected uint8 images and return_features=True")
        return img.flatten(1).to(torch.float32)


class I3DRecorder(torch.nn.Module):
    """I3D's call signature; its features are the uint8 input it was given, flattened."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.dtype != torch.uint8 or not (rescale and resize and return_features):
            raise ValueError("expected uint8 clips and rescale=resize=return_features=True (StyleGAN-V's call)")
        return x.flatten(1).to(torch.float32)


def test_image_features_are_stylegan2_adas_call(tmp_path):
    """uint8 RGB frames go in as (N, 3, H, W), values untouched, at their own size, in order across batches."""
    detector = FeatureDetector.load(models.torchscript_file(InceptionRecorder(), tmp_path / INCEPTION_FILE))
    frames = np.random.default_rng(0).integers(0, 256, (5, 7, 6, 3), dtype=np.uint8)
    features = detector.image_features(frames, batch_size=2)
    expected = frames.transpose(0, 3, 1, 2).reshape(5, -1)  # N, C, H, W: red plane first
    np.testing.assert_array_equal(features, expected.astype(np.float32))


def test_video_features_are_stylegan_vs_call(tmp_path):
    """uint8 RGB clips go in as (N, 3, T, H, W), values untouched, all T frames, with the detector
    asked to rescale and resize itself; in order across batches."""
    detector = FeatureDetector.load(models.torchscript_file(I3DRecorder(), tmp_path / "i3d_torchscript.pt"))
    clips = np.random.default_rng(1).integers(0, 256, (3, FVD_FRAMES, 5, 4, 3), dtype=np.uint8)
    features = detector.video_features(clips, batch_size=2)
    expected = clips.transpose(0, 4, 1, 2, 3).reshape(3, -1)
    assert expected.shape[1] == 3 * 16 * 5 * 4
    np.testing.assert_array_equal(features, expected.astype(np.float32))


def test_published_format_detectors(tmp_path):
    """Random Inception- and I3D-like detectors saved as TorchScript: 2048 and 400 features, equal to
    the module's own output on the hand-made (N, C, ...) uint8 tensor; the I3D's on frames it scaled
    to [-1, 1] and resized to 224 itself."""
    inception = FeatureDetector.load(models.torchscript_file(models.TinyInception(seed=0), tmp_path / "inc.pt"))
    i3d = FeatureDetector.load(models.torchscript_file(models.TinyI3D(seed=0), tmp_path / "i3d.pt"))
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 40, 32, 3), dtype=np.uint8)
    clips = rng.integers(0, 256, (2, FVD_FRAMES, 40, 32, 3), dtype=np.uint8)

    image = inception.image_features(frames)
    assert image.shape == (3, 2048) and image.dtype == np.float32
    with torch.no_grad():
        by_hand = models.TinyInception(seed=0)(torch.from_numpy(frames).permute(0, 3, 1, 2), return_features=True)
    np.testing.assert_allclose(image, by_hand.numpy(), rtol=1e-5, atol=1e-6)

    video = i3d.video_features(clips)
    assert video.shape == (2, 400) and video.dtype == np.float32
    scaled = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    resized = torch.nn.functional.interpolate(scaled, size=(FVD_FRAMES, 224, 224), mode="trilinear")
    with torch.no_grad():
        by_hand = models.TinyI3D(seed=0)(resized, return_features=True)
    np.testing.assert_allclose(video, by_hand.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_detectors_and_inputs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt"):
        FeatureDetector.load(tmp_path / "nowhere.pt")
    torch.save(models.TinyInception().state_dict(), tmp_path / "state_dict.pt")  # weights, not TorchScript
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        FeatureDetector.load(tmp_path / "state_dict.pt")

    inception = FeatureDetector.load(models.torchscript_file(models.TinyInception(), tmp_path / "inc.pt"))
    with pytest.raises(ValueError, match="uint8"):
        inception.image_features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        inception.image_features(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, T, H, W, 3\)"):
        inception.video_features(np.zeros((2, 8, 8, 3), np.uint8))


# -- the Fréchet distance ------------------------------------------------------------------------


def with_moments(mean: np.ndarray, std: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is `mean` and whose unbiased sample covariance is diag(std^2), exactly."""
    rng = np.random.default_rng(seed)
    centred = rng.standard_normal((n, len(mean)))
    centred -= centred.mean(0)
    basis, _ = np.linalg.qr(centred)  # orthonormal columns, each still summing to zero
    return mean + basis * np.sqrt(n - 1) * std


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    """Diagonal covariances: d = sum (mu_a - mu_b)^2 + sum (s_a - s_b)^2."""
    mean_a, std_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 1.5])
    mean_b, std_b = np.array([0.5, 1.0, 0.0, 0.5]), np.array([2.0, 1.0, 0.5, 3.0])
    a, b = with_moments(mean_a, std_a, 50, seed=0), with_moments(mean_b, std_b, 70, seed=1)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)  # 4.25 + 3.25
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # One dimension: (mu_a - mu_b)^2 + (s_a - s_b)^2.
    assert frechet_distance(a[:, :1], b[:, :1]) == pytest.approx(0.25 + 1.0, rel=1e-9)
    # Divisor N (StyleGAN's): the variances shrink by (N - 1) / N.
    scaled_a, scaled_b = std_a * np.sqrt(49 / 50), std_b * np.sqrt(69 / 70)
    biased = np.sum((mean_a - mean_b) ** 2) + np.sum((scaled_a - scaled_b) ** 2)
    assert frechet_distance(a, b, ddof=0) == pytest.approx(biased, rel=1e-9)


def test_frechet_distance_correlated_features():
    """Full covariances against tr sqrt(A^1/2 B A^1/2) from eigendecompositions; 0 for one set
    against itself; a mean shift v adds exactly |v|^2."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.3
    mean_a, cov_a = feature_statistics(a)
    mean_b, cov_b = feature_statistics(b)
    np.testing.assert_allclose(cov_a, np.cov(a.T), rtol=1e-12)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)

    assert abs(frechet_distance(a, a)) < 1e-8 * np.trace(cov_a)
    shift = rng.standard_normal(6)
    distances = [frechet_distance(a, a + t * shift) for t in (1, 2, 3)]
    np.testing.assert_allclose(distances, [t * t * shift @ shift for t in (1, 2, 3)], rtol=1e-6)


def test_frechet_distance_edge_cases():
    """Fewer samples than dimensions (singular covariances) still give a finite real distance;
    a root with a large imaginary part, mismatched dimensions and single samples are refused."""
    rng = np.random.default_rng(4)
    few_a, few_b = rng.standard_normal((12, 64)), rng.standard_normal((12, 64)) + 1
    distance = frechet_distance(few_a, few_b)
    assert np.isfinite(distance) and distance > 64 * 0.9  # at least most of the 64 unit mean shifts

    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance_of_gaussians(np.zeros(2), np.diag([1.0, 1.0]), np.zeros(2), np.diag([-1.0, 1.0]))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(few_a, few_b[:, :10])
    with pytest.raises(ValueError, match="N > 1"):
        frechet_distance(few_a[:1], few_b)


# -- Sync-C / Sync-D ------------------------------------------------------------------------------

GRID_BOX = (75, 100, 235, 260)  # x0, y0, x1, y1: the GRID speaker's face and chin, 160 px square
GRID_FRAMES = 50


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return models.syncnet_checkpoint(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model", seed=0)


@pytest.fixture(scope="module")
def grid_face():
    """The first 2 s of GRID[0]: 160 x 160 face crops (a fixed box: the speaker sits still) and the audio as float."""
    x0, y0, x1, y1 = GRID_BOX
    with av.open(str(media.GRID[0])) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24")[y0:y1, x0:x1])
            if len(frames) == GRID_FRAMES:
                break
    audio = decode_audio(str(media.GRID[0])).astype(np.float32) / 32768
    return np.stack(frames), audio


def by_hand(checkpoint, crops224: np.ndarray, pcm: np.ndarray, vshift: int) -> dict:
    """syncnet-python's evaluate, written out: the network's own embeddings of every 5-frame BGR
    window and 20-MFCC window, distances in numpy, mean over windows, min and median - min."""
    net = syncnet_model_class()()
    net.load_state_dict(torch.load(checkpoint, weights_only=True), strict=False)
    net.eval()
    windows = min(len(crops224), len(pcm) // 640) - 5
    bgr = crops224[..., ::-1].astype(np.float32)
    lips = np.stack([bgr[i : i + 5].transpose(3, 0, 1, 2) for i in range(windows)])  # (N, 3, 5, 224, 224)
    mfcc = python_speech_features.mfcc(pcm, 16000).T.astype(np.float32)  # (13, frames)
    sounds = np.stack([mfcc[None, :, 4 * i : 4 * i + 20] for i in range(windows)])  # (N, 1, 13, 20)
    with torch.no_grad():
        video = net.forward_lip(torch.from_numpy(lips)).numpy().astype(np.float64)
        audio = net.forward_aud(torch.from_numpy(sounds)).numpy().astype(np.float64)
    padded = np.concatenate([np.zeros((vshift, audio.shape[1])), audio, np.zeros((vshift, audio.shape[1]))])
    distances = np.array(
        [[np.linalg.norm(video[i] - padded[i + j] + 1e-6) for j in range(2 * vshift + 1)] for i in range(windows)]
    )
    mean = distances.mean(0)
    best = int(np.argmin(mean))
    return {"sync_c": np.median(mean) - mean[best], "sync_d": mean[best], "offset_frames": vshift - best}


@pytest.mark.parametrize("audio_frames", [GRID_FRAMES, 38])
def test_sync_c_d_matches_the_evaluation_script(checkpoint, grid_face, audio_frames):
    """Real face crops (160 px, resized to 224 as the scripts do) and real audio (all frames' worth,
    then only 38 frames' worth plus a fraction: min(frames, samples // 640) - 5 windows) through a
    random SyncNet: the scores equal the hand computation."""
    crops, audio = grid_face
    audio = audio[: audio_frames * 640 + 300]
    scores = sync_c_d(str(checkpoint), crops, audio)
    assert set(scores) == {"sync_c", "sync_d", "offset_frames"}
    assert isinstance(scores["offset_frames"], int) and abs(scores["offset_frames"]) <= VSHIFT

    resized = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_LINEAR) for c in crops])
    expected = by_hand(checkpoint, resized, pcm16(audio), VSHIFT)
    assert scores["offset_frames"] == expected["offset_frames"]
    assert scores["sync_d"] == pytest.approx(expected["sync_d"], rel=1e-4)
    assert scores["sync_c"] == pytest.approx(expected["sync_c"], rel=1e-3, abs=1e-5)
    assert scores["sync_c"] >= 0


def test_sync_c_d_narrower_search_and_bad_input(checkpoint, grid_face):
    crops, audio = grid_face
    crops, audio = crops[:20], audio[: 20 * 640]
    resized = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_LINEAR) for c in crops])
    expected = by_hand(checkpoint, resized, pcm16(audio), 4)
    scores = sync_c_d(str(checkpoint), crops, audio, vshift=4)
    assert scores["offset_frames"] == expected["offset_frames"]
    assert scores["sync_d"] == pytest.approx(expected["sync_d"], rel=1e-4)

    with pytest.raises(ValueError, match="float"):
        sync_c_d(str(checkpoint), crops, (audio * 32768).astype(np.int16))
    with pytest.raises(ValueError, match="uint8"):
        sync_c_d(str(checkpoint), crops.astype(np.float32), audio)
    with pytest.raises(ValueError, match="too short"):
        sync_c_d(str(checkpoint), crops[:5], audio)
    with pytest.raises(FileNotFoundError, match="syncnet_v2.model"):
        sync_c_d("/nowhere/syncnet_v2.model", crops, audio)


def test_crops_and_pcm_conversion():
    """224 crops pass untouched, others are resized bilinearly; float audio becomes pcm_s16le's int16."""
    rng = np.random.default_rng(5)
    exact = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    assert syncnet_crops(exact) is exact
    small = rng.integers(0, 256, (2, 100, 120, 3), dtype=np.uint8)
    resized = syncnet_crops(small)
    assert resized.shape == (2, 224, 224, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized[1], cv2.resize(small[1], (224, 224), interpolation=cv2.INTER_LINEAR))

    samples = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 3 / 32768, -2.6 / 32768], np.float32)
    np.testing.assert_array_equal(pcm16(samples), [0, 16384, -16384, 32767, -32768, 32767, 3, -3])
    ints = rng.integers(-32768, 32768, 1000, dtype=np.int16)
    np.testing.assert_array_equal(pcm16(ints.astype(np.float32) / 32768), ints)  # decode_audio's inverse
    with pytest.raises(ValueError, match="NaN"):
        pcm16(np.array([0.0, np.nan], np.float32))
