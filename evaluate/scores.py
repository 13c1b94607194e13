"""The measurements of one video, each with the curation models: its tracked face (the face stage's
tracker and face mesh), lip sync (the learned lip-sync model: whole video and per window), identity
against a reference face (the face stage's identity model) and the face's stability (landmark
jitter, mouth opening). Plain functions over arrays, so their bookkeeping can be checked by hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evaluate.decode import EvaluationError
from schemas.face import CHIN, FOREHEAD_TOP, mouth_opening
from schemas.records import FPS, SAMPLES_PER_FRAME
from stages.face import IDENTITY_KEYPOINTS
from stages.face_models import IdentityModel
from stages.face_track import FaceTracker
from stages.lip_sync import RIGID_POINTS, LipSyncScorer, SyncEvidence
from stages.sync import MS_PER_FRAME

MIN_TRACK_SHARE = 0.3  # a track counts as a face on this share of frames (the face stage's min_track_share)
JITTER_SPAN = 5  # frames of the centred mean that stands for the smooth trajectory (200 ms)


@dataclass
class TrackedFace:
    landmarks: np.ndarray  # (T, 478, 3) in [0, 1] of the frame; interpolated where the mesh missed
    boxes: np.ndarray  # (T, 4) x0, y0, x1, y1 in [0, 1]; NaN where the track has no box
    found: np.ndarray  # (T,) bool: the face mesh found the face on this frame
    num_faces: int  # tracks present on at least MIN_TRACK_SHARE of the frames


def track_face(tracker: FaceTracker, frames: np.ndarray) -> TrackedFace:
    """The longest face track's landmarks, as lip editing finds a reference video's face."""
    tracks = tracker.tracks(frames)
    if not tracks:
        raise EvaluationError("no_face", "no face detected on any frame")
    dense = [track.dense_boxes(len(frames), tracker.max_gap_frames) for track in tracks]
    shares = [float(np.mean(~np.isnan(boxes[:, 0]))) for boxes in dense]
    main = max(range(len(tracks)), key=lambda i: (shares[i], len(tracks[i].frames)))
    meshed = tracker.landmarks(frames, dense[main])
    if meshed is None:
        raise EvaluationError("no_face", "the face mesh found no landmarks on the tracked face")
    landmarks, found = meshed
    return TrackedFace(landmarks, dense[main], found, sum(share >= MIN_TRACK_SHARE for share in shares))


# -- lip sync --------------------------------------------------------------------------------------


def windows(num_frames: int, window: int, hop: int) -> list[tuple[int, int]]:
    """[start, end) frames of windows of `window` frames every `hop` frames from the first frame;
    frames after the last whole window are in the whole video's score only. A video shorter than
    one window is one window."""
    if num_frames <= window:
        return [(0, num_frames)]
    return [(start, start + window) for start in range(0, num_frames - window + 1, hop)]


@dataclass
class SyncRules:
    """When a measurement says "in sync": the sync stage's thresholds for the learned model, and
    how far from zero its offset may be."""

    min_confidence: float
    min_margin: float
    max_offset_ms: float

    def verdict(self, offset_ms: float, confidence: float, margin: float) -> str:
        if confidence < self.min_confidence or margin < self.min_margin:
            return "unsure"  # no offset fits clearly: other speech, silence, a still or garbled mouth
        return "in_sync" if abs(offset_ms) <= self.max_offset_ms else "offset"


def sync_score(
    scorer: LipSyncScorer,
    landmarks: np.ndarray,
    size: tuple[int, int],
    audio: np.ndarray,
    span: tuple[int, int],
    max_offset: int,
    rules: SyncRules,
) -> tuple[dict, SyncEvidence]:
    """The learned model's offset curve for frames [start, end) against `audio` (int16 on the
    frames' grid), described (`described`), and the evidence itself, which sets of videos pool. The
    audio around the span is its context, silence past the video's ends."""
    start, end = span
    padded = np.pad(audio, max_offset * SAMPLES_PER_FRAME)
    context = padded[start * SAMPLES_PER_FRAME : (end + 2 * max_offset) * SAMPLES_PER_FRAME]
    evidence = scorer.score(landmarks[start:end], *size, context, max_offset, max_offset).evidence
    return {"start_s": start / FPS, "end_s": end / FPS, **described(evidence, rules)}, evidence


def described(evidence: SyncEvidence, rules: SyncRules) -> dict:
    """Offset (positive: the audio lags), confidence (significance of the curve's peak over chance),
    margin over the best rival peak, the confidence at offset 0 (how well the video fits its audio
    as it plays) and the verdict."""
    offset_ms = float(evidence.offset_frames * MS_PER_FRAME)
    return {
        "offset_ms": offset_ms,
        "confidence": float(evidence.significance),
        "margin": float(evidence.margin),
        "confidence_at_zero": float(evidence.significance_of(evidence.at(0))),
        "verdict": rules.verdict(offset_ms, evidence.significance, evidence.margin),
    }


# -- identity --------------------------------------------------------------------------------------


def identity_frames(num_frames: int, per_second: float) -> np.ndarray:
    """The frames sampled for identity: `per_second` a second from the first, at frame floor(k * 25 / rate)."""
    count = math.ceil(num_frames * per_second / FPS)
    return (np.arange(count) * FPS / per_second).astype(int)


def keypoints(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, 5, 2) pixel positions of the points identity models align faces by."""
    return landmarks[:, IDENTITY_KEYPOINTS, :2].astype(np.float32) * np.array(size, np.float32)


def embed_frames(
    model: IdentityModel, frames: np.ndarray, face: TrackedFace, picks: list[int] | np.ndarray
) -> np.ndarray | None:
    """(len(picks), D) identity embeddings of the face on the picked frames, or None (no backend)."""
    points = keypoints(face.landmarks, (frames.shape[2], frames.shape[1]))
    return model.embed([(frames[t], points[t]) for t in picks])


def first_faces(face: TrackedFace, count: int) -> np.ndarray:
    """The first `count` frames on which the face mesh found the face."""
    return np.flatnonzero(face.found)[:count]


def identity_curve(similarities: np.ndarray, frames: np.ndarray) -> dict:
    """Mean, minimum and the curve (time, similarity) of per-sample cosine similarities to the reference."""
    return {
        "mean": float(np.mean(similarities)) if len(similarities) else None,
        "min": float(np.min(similarities)) if len(similarities) else None,
        "samples": [{"t": float(t / FPS), "similarity": float(s)} for t, s in zip(frames, similarities)],
    }


# -- face stability --------------------------------------------------------------------------------


def landmark_jitter(landmarks: np.ndarray, found: np.ndarray, size: tuple[int, int]) -> float | None:
    """Mean distance of the rigid landmarks (forehead, nose, eye corners, cheeks: they move with the
    head, not with speech) from their smooth trajectory (the centred mean over JITTER_SPAN frames),
    over the face's height (forehead to chin, the median over the video), on the frames where the
    mesh found the face and the whole span around them too. None when no frame qualifies."""
    half = JITTER_SPAN // 2
    points = landmarks[:, RIGID_POINTS, :2].astype(np.float64) * np.array(size, np.float64)
    if len(points) < JITTER_SPAN:
        return None
    kernel = np.ones(JITTER_SPAN) / JITTER_SPAN
    smooth = np.apply_along_axis(lambda column: np.convolve(column, kernel, mode="valid"), 0, points)
    residual = np.linalg.norm(points[half : len(points) - half] - smooth, axis=-1).mean(axis=1)
    whole = np.convolve(found.astype(float), kernel, mode="valid") > 1 - 1e-9
    if not whole.any():
        return None
    pixels = landmarks[..., :2].astype(np.float64) * np.array(size, np.float64)
    face_height = float(np.median(np.linalg.norm(pixels[:, FOREHEAD_TOP] - pixels[:, CHIN], axis=-1)))
    return float(residual[whole].mean() / max(face_height, 1e-6))


def mouth_statistics(landmarks: np.ndarray, found: np.ndarray, size: tuple[int, int]) -> dict:
    """The inner-lip gap over face height (the face stage's mouth opening) on frames with the face:
    its mean, standard deviation (how much the mouth moves), 95th percentile (how wide it opens) and
    mean change per frame (how fast it moves)."""
    opening = mouth_opening(landmarks, *size)
    seen = opening[found]
    steps = np.abs(np.diff(opening))[found[1:] & found[:-1]]
    return {
        "mean": float(seen.mean()) if len(seen) else None,
        "std": float(seen.std()) if len(seen) else None,
        "p95": float(np.percentile(seen, 95)) if len(seen) else None,
        "speed": float(steps.mean()) if len(steps) else None,
    }


REAL_SPEECH = {
    "jitter": (0.0027, 0.0068),
    "mouth_mean": (0.0068, 0.058),
    "mouth_std": (0.0088, 0.039),
    "mouth_p95": (0.027, 0.12),
    "mouth_speed": (0.0027, 0.015),
}
"""Lowest and highest value of each face-stability number over 10 real clips of 10 people speaking
(the `test` people of bench/sync_people.json in ../shared/media/talking, 3-15 s each; measured by
bench/evaluate_calibration.py, which prints them)."""


def against_real_speech(jitter: float | None, mouth: dict) -> dict:
    """The face-stability numbers, the range real speech spans for each, and where each falls in it."""
    values = {"jitter": jitter, **{f"mouth_{name}": value for name, value in mouth.items()}}

    def place(name: str) -> str | None:
        low, high = REAL_SPEECH[name]
        value = values[name]
        return None if value is None else "below" if value < low else "above" if value > high else "within"

    return {
        "jitter": jitter,
        "mouth": mouth,
        "real_speech_range": {name: list(bounds) for name, bounds in REAL_SPEECH.items()},
        "against_real_speech": {name: place(name) for name in REAL_SPEECH},
    }
