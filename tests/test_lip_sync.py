"""The learned lip-sync model (stages/lip_sync.py) and its training command (train/sync_training.py):
numpy inference equals the torch network it was exported from, the mouth features do not move
with the head, and `talkcurate train-sync` trains on a real run's shards, reproducibly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from schemas.records import CandidateClip, Status
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.lip_sync import DEFAULT_WEIGHTS, FORMAT, MOUTH_POINTS, LipSyncModel, log_mel, mouth_shape, shipped_model
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from train.sync_training import LipSyncNet, SyncTrainingConfig, export


@pytest.fixture(scope="module")
def grid_clip(run_chain) -> CandidateClip:
    out = run_chain(media.GRID[1], [ProbeStage(), ChunkStage()], [NormalizeStage(preset="ultrafast"), SceneCutStage(), FaceStage()])
    (clip,) = [o for o in out if isinstance(o, CandidateClip)]
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip


def test_numpy_inference_equals_the_exported_torch_network(grid_clip, tmp_path):
    torch.manual_seed(3)
    net = LipSyncNet(SyncTrainingConfig())
    template = shipped_model().template
    export(net, template, "test", tmp_path / "w.npz")
    model = LipSyncModel(tmp_path / "w.npz")
    assert model.name == "lip-sync-test"
    with torch.no_grad():  # the torch network with the weights as exported (float16)
        for name, value in net.state_dict().items():
            if name != "log_scale":
                value.copy_(value.half().float())
        landmarks, clip = grid_clip.face.track.landmarks, grid_clip.video
        mouth = torch.from_numpy(mouth_shape(landmarks, clip.width, clip.height, model.template))[None]
        video = net.embed_video(mouth)[0].T.numpy()
        audio_input = grid_clip.audio_context[: len(grid_clip.audio_context) // 640 * 640]
        audio = net.embed_audio(torch.from_numpy(log_mel(audio_input))[None])[0].T.numpy()
    np.testing.assert_allclose(model.embed_video(landmarks, clip.width, clip.height), video, atol=2e-5)
    np.testing.assert_allclose(model.embed_audio(grid_clip.audio_context), audio, atol=2e-5)
    assert video.shape == (grid_clip.num_frames, SyncTrainingConfig().embedding) and audio.shape[0] == len(grid_clip.audio_context) // 640


def test_a_weight_file_of_another_format_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", format=np.array("something-else"), version=np.array("1"))
    with pytest.raises(ValueError, match=FORMAT):
        LipSyncModel(tmp_path / "other.npz")


def test_the_mouth_features_do_not_move_with_the_head(grid_clip):
    """The same landmarks turned 20 degrees, shrunk to 60% and moved give the same features."""
    landmarks = grid_clip.face.track.landmarks.astype(np.float64)
    width, height = grid_clip.video.width, grid_clip.video.height
    template = shipped_model().template
    pixels = landmarks * (width, height, width)
    angle = np.radians(20)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = (pixels - pixels.mean(axis=(0, 1))) @ turn.T * 0.6 + (width / 2, height / 2, 0)
    again = mouth_shape(moved / (width, height, width), width, height, template)
    original = mouth_shape(landmarks, width, height, template)
    assert original.shape == (len(landmarks), 2 * len(MOUTH_POINTS))
    np.testing.assert_allclose(again, original, atol=1e-3 * np.abs(original).max())
    assert np.abs(original).max() > 0.01  # the mouth moves


def test_frames_without_landmarks_take_the_nearest_ones(grid_clip):
    landmarks = grid_clip.face.track.landmarks.astype(np.float32).copy()
    landmarks[10:14] = np.nan
    width, height = grid_clip.video.width, grid_clip.video.height
    features = mouth_shape(landmarks, width, height, shipped_model().template)
    assert np.isfinite(features).all()
    np.testing.assert_allclose(features[10], features[9], atol=1e-6)
    np.testing.assert_allclose(features[13], features[14], atol=1e-6)


def test_the_shipped_weights_are_small_and_name_their_version():
    assert DEFAULT_WEIGHTS.stat().st_size < 2_000_000
    model = shipped_model()
    assert model.name.startswith("lip-sync-v")
    summary = DEFAULT_WEIGHTS.with_name(DEFAULT_WEIGHTS.name + ".json")
    assert summary.is_file()  # how it was trained: shards, seed, steps, losses


def test_train_sync_trains_on_a_runs_shards_reproducibly(demo_shards, tmp_path):
    """The demo run's kept single-face clips (four GRID sentences and the portrait): the loss falls,
    and the same seed gives the same weights."""
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.npz"
        result = subprocess.run([str(Path(sys.executable).with_name("talkcurate")), "train-sync", str(demo_shards), "--out", str(out),
                                 "--steps", "60", "--seed", "5", "--version", "t1"],
                                capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        outputs.append(out)
    import json

    summary = json.loads(Path(f"{outputs[0]}.json").read_text())
    assert summary["clips"] == 5 and summary["steps"] == 60
    assert summary["last_loss"] < summary["first_loss"] - 0.2, summary
    first, second = (np.load(p) for p in outputs)
    assert sorted(first.files) == sorted(second.files)
    assert all(np.array_equal(first[name], second[name]) for name in first.files)
    assert LipSyncModel(outputs[0]).name == "lip-sync-t1"
