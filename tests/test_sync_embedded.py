"""The embedded lip-sync estimator on real media, through the real pipeline up to the face stage.

Each GRID clip and the LatentSync portrait get their audio shifted by known amounts (real ffmpeg
files, decoded by the real normalize stage); every shift must be measured within 40 ms of the
applied shift plus the clip's own baseline, with a confidence that keeps the clip, and the
corrected audio must measure within 40 ms of zero. The same faces with another speaker's voice,
synthesized speech or music must fall below the sync stage's threshold.
"""

from __future__ import annotations

from pathlib import Path

import media
import numpy as np
import pytest

from schemas.records import FPS, SAMPLE_RATE, CandidateClip, Status
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from stages.sync import SyncStage
from stages.sync_embedded import MouthAudioMoments, MouthAudioScorer, canonical_correlations

MAX_OFFSET = 15
SHIFTS_MS = (-320, -200, -120, 0, 120, 200, 480)
TOLERANCE_MS = 40
SOURCES = (*media.GRID, media.PORTRAIT)
THRESHOLD = SyncStage().min_confidence_embedded
MARGIN = SyncStage().speaker_margin_embedded


def only_clip(out) -> CandidateClip:
    (clip,) = [o for o in out if isinstance(o, CandidateClip)]
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip


def estimate(clip: CandidateClip, audio_context=None, landmarks=None):
    return MouthAudioScorer().score(
        clip.face.track.landmarks if landmarks is None else landmarks,
        clip.video.width,
        clip.video.height,
        clip.audio_context if audio_context is None else audio_context,
        clip.audio_context_frames,
        MAX_OFFSET,
    )


def as_context(audio: np.ndarray, clip: CandidateClip) -> np.ndarray:
    """`audio` repeated or cut to the length of `clip`'s audio context: the clip with that sound instead."""
    return np.resize(audio, clip.audio_context.shape)


@pytest.fixture(scope="module")
def faces(run_chain) -> dict[Path, CandidateClip]:
    """Each source's one clip after the face stage."""
    stages = [NormalizeStage(preset="ultrafast"), SceneCutStage(), FaceStage()]
    return {
        path: only_clip(run_chain(path, [ProbeStage(), ChunkStage()], stages, keep_frames=True)) for path in SOURCES
    }


@pytest.fixture(scope="module")
def shifted_contexts(run_chain, tmp_path_factory, faces) -> dict[tuple[Path, int], np.ndarray]:
    """(source, shift) -> the audio context normalize and scene cut give the clip of the source with its
    sound moved `shift` ms later. The picture is the source's, so its face stage result is reused."""
    folder = tmp_path_factory.mktemp("shifted")
    contexts = {}
    for path in SOURCES:
        for shift_ms in SHIFTS_MS:
            shifted = folder / f"{path.stem} {shift_ms}.mkv"
            media.audio_shifted(path, shifted, shift_ms)
            clip = only_clip(
                run_chain(shifted, [ProbeStage(), ChunkStage()], [NormalizeStage(preset="ultrafast"), SceneCutStage()])
            )
            assert (clip.start_frame, clip.end_frame) == (faces[path].start_frame, faces[path].end_frame)
            contexts[path, shift_ms] = clip.audio_context
    return contexts


@pytest.fixture(scope="module")
def measured(faces, shifted_contexts) -> dict[tuple[Path, int], object]:
    return {(path, shift): estimate(faces[path], context) for (path, shift), context in shifted_contexts.items()}


def test_every_shift_is_measured_within_40_ms(measured):
    errors, confidences = {}, {}
    for path in SOURCES:
        baseline = measured[path, 0].offset_frames * 1000 / FPS
        for shift_ms in SHIFTS_MS:
            result = measured[path, shift_ms]
            errors[path.stem, shift_ms] = round(result.offset_frames * 1000 / FPS - baseline - shift_ms)
            confidences[path.stem, shift_ms] = round(result.confidence, 2)
    assert all(abs(error) <= TOLERANCE_MS for error in errors.values()), errors
    assert min(confidences.values()) >= THRESHOLD, confidences  # the sync stage keeps every one


def test_corrected_audio_measures_in_sync(faces, shifted_contexts, measured):
    residuals = {}
    for (path, shift_ms), context in shifted_contexts.items():
        correction = round(measured[path, shift_ms].offset_frames * SAMPLE_RATE / FPS)
        again = estimate(faces[path], media.shifted_context(context, correction))
        residuals[path.stem, shift_ms] = round(again.offset_frames * 1000 / FPS)
    assert all(abs(residual) <= TOLERANCE_MS for residual in residuals.values()), residuals


@pytest.fixture(scope="module")
def foreign_audio(tmp_path_factory) -> dict[str, np.ndarray]:
    """Sound that is not the speaker's: another speaker reading, flite's voice, music."""
    folder = tmp_path_factory.mktemp("foreign")
    media.synthesized_speech(folder / "flite.wav")
    media.music(folder / "music.wav")
    return {
        "other speaker": media.decoded_audio(media.OTHER_SPEECH),
        "synthesized speech": media.decoded_audio(folder / "flite.wav"),
        "music": media.decoded_audio(folder / "music.wav"),
    }


def test_audio_that_is_not_the_speakers_gets_low_confidence(faces, foreign_audio):
    confidences = {
        (path.stem, kind): round(estimate(clip, as_context(audio, clip)).confidence, 2)
        for path, clip in faces.items()
        for kind, audio in foreign_audio.items()
    }
    assert max(confidences.values()) < THRESHOLD, confidences
    real = {path.stem: round(estimate(clip).confidence, 2) for path, clip in faces.items()}
    assert min(real.values()) >= THRESHOLD, real


def test_a_grid_sentence_fits_its_own_face_best(faces):
    """What speaker selection relies on: among several faces, the one whose sentence it is fits the
    audio best, by the stage's margin. The four GRID speakers say sentences of one grammar at one
    pace, the hardest case there is (the other way round, one face and four sentences, is not
    separable on 3 s: a face can fit another speaker's sentence nearly as well as its own)."""
    grid = [faces[path] for path in media.GRID]
    scores = np.array(
        [[estimate(face, as_context(sentence.audio_context, face)).confidence for face in grid] for sentence in grid]
    )
    for own, row in enumerate(scores):
        assert row[own] - np.delete(row, own).max() >= MARGIN, scores.round(2)


def test_the_curve_has_one_value_per_whole_frame_offset(faces):
    result = estimate(faces[media.GRID[1]])
    assert result.distances.shape == (2 * MAX_OFFSET + 1,)
    assert -MAX_OFFSET <= result.offset_frames <= MAX_OFFSET
    # The curve's best whole-frame offset is next to the refined estimate.
    assert abs(int(np.argmin(result.distances)) - MAX_OFFSET - result.offset_frames) <= 1


def test_silence_and_a_still_mouth_give_zero_confidence(faces):
    clip = faces[media.GRID[1]]
    hiss = np.random.default_rng(0).normal(0, 20, clip.audio_context.shape).astype(np.int16)
    assert estimate(clip, audio_context=hiss).confidence == 0.0
    frozen = np.repeat(clip.face.track.landmarks[:1], len(clip.face.track.landmarks), axis=0)
    assert estimate(clip, landmarks=frozen).confidence == 0.0
    assert estimate(clip).confidence >= THRESHOLD  # the real pair is not gated


def test_an_offset_beyond_the_audio_context_is_refused(faces):
    clip = faces[media.GRID[1]]
    with pytest.raises(ValueError, match="audio context"):
        MouthAudioScorer().score(
            clip.face.track.landmarks,
            clip.video.width,
            clip.video.height,
            clip.audio_context,
            clip.audio_context_frames,
            clip.audio_context_frames + 1,
        )


def test_canonical_correlations_equal_the_textbook_computation_for_every_window():
    """The running-sum search against CCA computed directly on each window: whitened
    cross-covariance of the centred window and video, its largest singular value."""
    rng = np.random.default_rng(0)
    steps, count, ridge = 300, 41, 0.1
    video = rng.normal(size=(steps, 8)) @ rng.normal(size=(8, 8))
    audio = rng.normal(size=(steps + count - 1, 3)) + 5.0  # an offset the windows' means must remove
    audio[count // 2 : count // 2 + steps] += video[:, :3] @ rng.normal(size=(3, 3))  # one window fits
    expected = []
    for start in range(count):
        window = audio[start : start + steps] - audio[start : start + steps].mean(axis=0)
        centred = video - video.mean(axis=0)
        cvv, caa, cva = (a.T @ b / steps for a, b in ((centred, centred), (window, window), (centred, window)))
        cvv += ridge * np.trace(cvv) / 8 * np.eye(8)
        caa += ridge * np.trace(caa) / 3 * np.eye(3)
        whiten = [np.linalg.inv(np.linalg.cholesky(c)) for c in (cvv, caa)]
        expected.append(np.linalg.svd(whiten[0] @ cva @ whiten[1].T, compute_uv=False)[0])
    found = canonical_correlations(video, audio, ridge)
    assert found.shape == (count,) and np.allclose(found, expected, rtol=0, atol=1e-9)
    assert int(np.argmax(found)) == count // 2 and found.max() > 0.9 > np.delete(found, count // 2).max()


def test_pooled_moments_give_the_canonical_correlations_of_the_clips_taken_together():
    """Two clips' moments added: at every offset, CCA of their steps stacked, each clip centred on its
    own means (how a source's clips are pooled); and a search pooled over clips that agree finds
    their offset more clearly than either clip alone."""
    rng = np.random.default_rng(1)
    count, ridge, lag = 31, 0.1, 20
    clips = []
    for steps in (200, 120):
        video = rng.normal(size=(steps, 8)) @ rng.normal(size=(8, 8))
        audio = rng.normal(size=(steps + count - 1, 3)) + rng.normal(size=3) * 5.0  # each clip its own level
        audio[lag : lag + steps] += 0.4 * video[:, :3]  # a weak fit at one offset, the same in both
        clips.append((video, audio))
    pooled = MouthAudioMoments.of(*clips[0]) + MouthAudioMoments.of(*clips[1])
    expected = []
    for start in range(count):
        video = np.concatenate([v - v.mean(axis=0) for v, _ in clips])
        window = np.concatenate([a[start : start + len(v)] - a[start : start + len(v)].mean(axis=0) for v, a in clips])
        steps = len(video)
        cvv, caa, cva = (a.T @ b / steps for a, b in ((video, video), (window, window), (video, window)))
        cvv += ridge * np.trace(cvv) / 8 * np.eye(8)
        caa += ridge * np.trace(caa) / 3 * np.eye(3)
        whiten = [np.linalg.inv(np.linalg.cholesky(c)) for c in (cvv, caa)]
        expected.append(np.linalg.svd(whiten[0] @ cva @ whiten[1].T, compute_uv=False)[0])
    found = pooled.correlations(ridge)
    assert pooled.steps == 320 and np.allclose(found, expected, rtol=0, atol=1e-9)

    def clearness(curve: np.ndarray) -> float:  # the peak over the best other offset
        return curve[lag] - np.delete(curve, range(lag - 2, lag + 3)).max()

    alone = [canonical_correlations(v, a, ridge) for v, a in clips]
    assert int(np.argmax(found)) == lag and clearness(found) > 0
    assert all(clearness(found) > clearness(curve) for curve in alone)
