"""`talkcurate evaluate`: its bookkeeping against values computed by hand (windows, samples, the
audio each window is scored against, jitter, mouth statistics), and the command on real media:
real in-sync speech against shifted and foreign sound, a face that turns into another person's
midway, bad inputs, and a `talkcurate sample` output from the tiny test checkpoint end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import media
import numpy as np
import pytest

from evaluate import scores
from evaluate.decode import decode
from evaluate.evaluation import EvaluationConfig, Evaluator
from schemas.face import CHIN, FOREHEAD_TOP, LOWER_LIP_INNER, UPPER_LIP_INNER
from schemas.records import SAMPLES_PER_FRAME
from stages.face import FaceStage
from stages.lip_sync import RIGID_POINTS, LipSyncScorer

ROOT = Path(__file__).resolve().parent.parent
RULES = scores.SyncRules(min_confidence=3.0, min_margin=0.04, max_offset_ms=40.0)


# -- bookkeeping, by hand ------------------------------------------------------------------------


def test_windows_start_every_hop_and_a_short_video_is_one_window():
    assert scores.windows(130, 75, 25) == [(0, 75), (25, 100), (50, 125)]  # frames 125-129: whole video only
    assert scores.windows(125, 75, 25) == [(0, 75), (25, 100), (50, 125)]
    assert scores.windows(75, 75, 25) == [(0, 75)]
    assert scores.windows(40, 75, 25) == [(0, 40)]


def test_identity_samples_two_a_second():
    assert scores.identity_frames(130, 2.0).tolist() == [0, 12, 25, 37, 50, 62, 75, 87, 100, 112, 125]
    assert scores.identity_frames(1, 2.0).tolist() == [0]
    assert scores.identity_frames(75, 1.0).tolist() == [0, 25, 50]


def test_sync_verdicts():
    assert RULES.verdict(20.0, 5.0, 0.1) == "in_sync"
    assert RULES.verdict(-40.0, 3.0, 0.04) == "in_sync"
    assert RULES.verdict(120.0, 5.0, 0.1) == "offset"
    assert RULES.verdict(0.0, 2.9, 0.1) == "unsure"
    assert RULES.verdict(0.0, 5.0, 0.03) == "unsure"


def test_each_window_is_scored_against_its_own_audio_and_silence_past_the_ends():
    """GRID[0]'s landmarks and audio (75 frames): the window [20, 50) is scored against the audio of
    frames 5 to 65 (15 frames each side), the window [0, 50) against 15 frames of silence and frames
    0 to 65."""
    video = decode(media.GRID[0])
    tracker = FaceStage().tracker()
    tracker.load()
    face = scores.track_face(tracker, video.frames)
    scorer = LipSyncScorer()
    audio = video.audio
    assert len(audio) == 75 * SAMPLES_PER_FRAME
    inside = scores.sync_score(scorer, face.landmarks, video.size, audio, (20, 50), 15, RULES)
    by_hand = scorer.score(face.landmarks[20:50], *video.size, audio[5 * 640 : 65 * 640], 15, 15)
    assert inside["offset_ms"] == pytest.approx(by_hand.offset_frames * 40)
    assert inside["confidence"] == pytest.approx(by_hand.confidence)
    assert (inside["start_s"], inside["end_s"]) == (0.8, 2.0)
    at_start = scores.sync_score(scorer, face.landmarks, video.size, audio, (0, 50), 15, RULES)
    context = np.concatenate([np.zeros(15 * 640, np.int16), audio[: 65 * 640]])
    by_hand = scorer.score(face.landmarks[:50], *video.size, context, 15, 15)
    assert at_start["confidence"] == pytest.approx(by_hand.confidence)
    assert at_start["confidence_at_zero"] == pytest.approx(by_hand.evidence.significance_of(by_hand.evidence.at(0)))


def test_jitter_is_the_motion_off_the_smooth_path_over_face_height():
    """Rigid points that step back and forth by 1 px a frame: each is 0.8 px off the centred mean of
    five frames (+1 -1 +1 -1 +1 averages 0.2); over a face 50 px high, 0.016. Moving steadily: 0."""
    size, frames = (100, 100), 20
    landmarks = np.zeros((frames, 478, 3), np.float32)
    landmarks[:, CHIN, 1] = 0.5  # forehead (landmark 10) at y 0, chin at y 50 px
    steady = landmarks.copy()
    wobble = np.where(np.arange(frames) % 2 == 0, 1.0, -1.0) / size[0]
    rigid = list(RIGID_POINTS)
    landmarks[:, rigid, 0] += wobble[:, None]
    steady[:, rigid, 0] += (np.arange(frames) * 2.0 / size[0])[:, None]
    steady[:, CHIN, 0] = steady[:, FOREHEAD_TOP, 0]  # the face moves whole
    found = np.ones(frames, bool)
    assert scores.landmark_jitter(landmarks, found, size) == pytest.approx(0.8 / 50, rel=1e-3)
    assert scores.landmark_jitter(steady, found, size) == pytest.approx(0.0, abs=1e-5)
    found[:5] = False  # windows touching a frame without the face are left out; the rest wobble alike
    assert scores.landmark_jitter(landmarks, found, size) == pytest.approx(0.8 / 50, rel=1e-3)
    assert scores.landmark_jitter(landmarks, np.zeros(frames, bool), size) is None


def test_mouth_statistics_by_hand():
    size = (100, 100)
    gaps_px = np.array([0.0, 5.0, 10.0, 5.0, 0.0, 20.0])  # inner-lip gaps; face 50 px high
    landmarks = np.zeros((len(gaps_px), 478, 3), np.float32)
    landmarks[:, CHIN, 1] = 0.5
    landmarks[:, UPPER_LIP_INNER, 1] = 0.3
    landmarks[:, LOWER_LIP_INNER, 1] = 0.3 + gaps_px / size[1]
    found = np.array([True, True, True, True, True, False])  # the last frame's face was not found
    stats = scores.mouth_statistics(landmarks, found, size)
    opening = np.array([0.0, 0.1, 0.2, 0.1, 0.0])
    assert stats["mean"] == pytest.approx(0.08, abs=1e-6)
    assert stats["std"] == pytest.approx(opening.std(), abs=1e-6)
    assert stats["p95"] == pytest.approx(0.18, abs=1e-6)  # between 0.1 and 0.2, 80% of the way (numpy's linear)
    assert stats["speed"] == pytest.approx(0.1, abs=1e-6)  # four steps of 0.1 between found frames


def test_identity_curve_mean_min_and_times():
    curve = scores.identity_curve(np.array([0.99, 0.97, 0.80]), np.array([0, 12, 25]))
    assert curve["mean"] == pytest.approx(0.92)
    assert curve["min"] == pytest.approx(0.80)
    assert [s["t"] for s in curve["samples"]] == [0.0, 0.48, 1.0]
