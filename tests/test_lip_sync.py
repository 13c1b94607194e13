"""The learned lip-sync model (stages/lip_sync.py) and its training command (train/sync_training.py):
the audio features line up with the frames, the mouth features do not move with the head, the
offset curve follows shifted audio, and `talkcurate train-sync` fits a real run's shards,
reproducibly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import media
import numpy as np
import pytest

from schemas.records import CandidateClip, Status
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.lip_sync import (
    DEFAULT_WEIGHTS,
    FORMAT,
    MOUTH_POINTS,
    VIDEO_FEATURES,
    LipSyncModel,
    audio_features,
    mouth_shape,
    shipped_model,
)
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage


@pytest.fixture(scope="module")
def grid_clip(run_chain) -> CandidateClip:
    out = run_chain(
        media.GRID[1], [ProbeStage(), ChunkStage()], [NormalizeStage(preset="ultrafast"), SceneCutStage(), FaceStage()]
    )
    (clip,) = [o for o in out if isinstance(o, CandidateClip)]
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip


def test_audio_features_are_one_row_per_frame_and_move_with_the_audio(grid_clip):
    """Row t reads the steps around frame t: delaying the audio by whole frames delays the rows."""
    audio = grid_clip.audio_context
    features = audio_features(audio, context_steps=5)
    assert features.shape == (len(audio) // 640, (2 * 5 + 2) * 20)
    later = audio_features(np.concatenate([np.zeros(3 * 640, np.int16), audio]), context_steps=5)
    # log_mel normalizes over its whole input, so compare shapes of the rows, not their values
    inner = slice(10, len(features) - 10)
    correlation = np.corrcoef(features[inner].ravel(), later[inner.start + 3 : inner.stop + 3].ravel())[0, 1]
    assert correlation > 0.99
    assert np.corrcoef(features[inner].ravel(), later[inner].ravel())[0, 1] < 0.9


@pytest.fixture(scope="module")
def portrait_clip(run_chain) -> CandidateClip:
    out = run_chain(
        media.PORTRAIT, [ProbeStage(), ChunkStage()], [NormalizeStage(preset="ultrafast"), SceneCutStage(), FaceStage()]
    )
    (clip,) = [o for o in out if isinstance(o, CandidateClip)]
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip


def test_the_offset_curve_follows_shifted_audio(portrait_clip):
    """The shipped model on the demo portrait (10 s) whose sound is taken 0, 3 and 6 frames later."""
    model = shipped_model()
    clip = portrait_clip
    mouth = model.embed_video(clip.face.track.landmarks, clip.video.width, clip.video.height)
    for shift in (0, 3, 6):  # the sound `shift` frames early: an offset of -shift
        found = model.evidence(
            mouth, model.embed_audio(np.roll(clip.audio_context, -shift * 640)), clip.audio_context_frames, 10
        )
        assert abs(found.offset_frames + shift) <= 1, (shift, found.offset_frames)
        assert found.significance > 4 and found.margin > 0


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
    assert summary.is_file()  # how it was fitted: shards, settings, variance explained


def test_train_sync_fits_a_runs_shards_reproducibly(demo_shards, tmp_path):
    """The demo run's kept single-face clips (four GRID sentences and the portrait): the fit explains
    part of every mouth component from the audio, and the same shards give the same weights."""
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.npz"
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("talkcurate")),
                "train-sync",
                str(demo_shards),
                "--out",
                str(out),
                "--components",
                "4",
                "--version",
                "t1",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        outputs.append(out)
    summary = json.loads(Path(f"{outputs[0]}.json").read_text())
    assert summary["clips"] == 5 and summary["config"]["components"] == 4
    assert len(summary["explained_variance"]) == 4 and min(summary["explained_variance"]) > 0.02, summary
    first, second = (np.load(p) for p in outputs)
    assert sorted(first.files) == sorted(second.files)
    assert all(np.array_equal(first[name], second[name]) for name in first.files)
    model = LipSyncModel(outputs[0])
    assert model.name == "lip-sync-t1" and model.mouth_basis.shape == (4, VIDEO_FEATURES)
