"""`talkcurate sample` on a tiny checkpoint trained here: the video is exactly as long as the
speech, the speech is muxed, memory does not grow with the speech's length, and editing a video
changes only its mouth region."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import media
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from train.editing import ReferenceVideo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A portrait frame from GRID, and speech of 3 s (GRID), 10 s and 30 s (JFK, repeated)."""
    folder = tmp_path_factory.mktemp("sample_inputs")
    paths = {
        "image": folder / "face.png",
        "3": folder / "grid.wav",
        "10": folder / "jfk10.wav",
        "30": folder / "jfk30.wav",
        "other": folder / "other.wav",
    }
    media.ffmpeg("-i", media.GRID[0], "-ss", "1", "-frames:v", "1", paths["image"])
    media.ffmpeg("-i", media.GRID[0], "-vn", "-ac", "1", "-ar", "16000", paths["3"])
    media.ffmpeg("-i", media.GRID[1], "-vn", "-ac", "1", "-ar", "16000", paths["other"])
    jfk = Path(__file__).parent / "data" / "jfk_10s.ogg"
    media.ffmpeg("-i", jfk, "-ac", "1", "-ar", "16000", paths["10"])
    media.ffmpeg("-stream_loop", "2", "-i", paths["10"], "-c", "copy", paths["30"])
    return paths


_MEASURED = """
import resource, sys
from pipeline.cli import main
code = main(sys.argv[1:])
print("peak-rss-kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def sample(checkpoint: Path, image: Path | None, speech: Path, out: Path, *more: str) -> int:
    """`talkcurate sample` in a fresh process; returns that process's peak RSS in MB."""
    identity = ["--image", str(image)] if image else []
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURED,
            "sample",
            "--checkpoint",
            str(checkpoint),
            *identity,
            "--audio",
            str(speech),
            "--out",
            str(out),
            "--steps",
            "2",
            "--no-progress",
            "--text",
            "a person speaking",
            *more,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,  # a hang guard: 40 s of speech took over 600 s beside load average 15 on 2 cores
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split("peak-rss-kb")[-1]) // 1024


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def probe(path: Path) -> tuple[int, float, float]:
    """(video frames, video seconds, audio seconds)."""
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        audio = container.streams.audio[0]
        return frames, frames / 25, float(audio.duration * audio.time_base)


def speech_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return sum(frame.samples for frame in container.decode(audio=0)) / 16000


@pytest.fixture(scope="module")
def sampled(checkpoint, inputs, tmp_path_factory) -> Callable[[str], tuple[Path, int]]:
    """`talkcurate sample` of the portrait with each speech, run once for every test that reads it:
    the video and the process's peak RSS in MB. (30 s of speech is most of this module's time.)"""
    folder = tmp_path_factory.mktemp("sampled")
    done: dict[str, tuple[Path, int]] = {}

    def get(seconds: str) -> tuple[Path, int]:
        if seconds not in done:
            out = folder / f"{seconds}.mp4"
            done[seconds] = out, sample(checkpoint, inputs["image"], inputs[seconds], out)
        return done[seconds]

    return get


@pytest.mark.parametrize("seconds", ["3", "30"])
def test_the_video_is_as_long_as_the_speech_to_the_frame(sampled, inputs, seconds):
    frames, video_s, audio_s = probe(sampled(seconds)[0])
    assert frames == round(speech_seconds(inputs[seconds]) * 25)
    assert abs(audio_s - video_s) < 0.07  # the speech, muxed, ends with the video (AAC frames: 64 ms)


def test_memory_does_not_grow_with_the_speech(sampled):
    """Peak RSS of the whole process (libraries included) for 30 s is within 20% of 10 s's."""
    (_, short), (_, long) = sampled("10"), sampled("30")
    assert long <= 1.2 * short, (short, long)


def reencoded(frames: np.ndarray, path: Path) -> np.ndarray:
    """`frames` through H.264 at the sampler's settings (yuv420p, CRF 18) and back: the codec's own error."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for picture in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))
    return decode(path)


def test_editing_regenerates_the_mouth_and_keeps_every_other_pixel(checkpoint, inputs, tmp_path):
    """GRID[0]'s video with GRID[1]'s sentence: outside the mouth mask the output is the reference
    frame up to H.264's own error; inside it, the (barely trained) model's pixels."""
    out = tmp_path / "edited.mp4"
    sample(checkpoint, None, inputs["other"], out, "--video", str(media.GRID[0]))
    edited = decode(out).astype(np.float32)
    assert len(edited) == round(speech_seconds(inputs["other"]) * 25)
    reference, masks = ReferenceVideo(media.GRID[0], *edited.shape[1:3]).window(0, len(edited))
    assert 0.02 < masks.mean() < 0.3  # a mouth region in every frame, not the whole face
    assert masks.reshape(len(masks), -1).any(axis=1).all()
    # H.264 codes chroma at half resolution and in blocks, so the pixels next to the mask take
    # some of its colour: the comparison leaves out a band of 4 pixels (half a block) around it.
    outside = ~binary_dilation(masks.astype(bool), np.ones((1, 9, 9), bool))
    assert outside.mean() > 0.5
    error = np.abs(edited - reference).mean(axis=-1)
    codec_error = np.abs(reencoded(reference, tmp_path / "reference.mp4") - reference.astype(np.float32)).mean(axis=-1)
    assert error[outside].mean() <= 1.1 * codec_error[outside].mean() + 0.3, (
        error[outside].mean(),
        codec_error[outside].mean(),
    )
    assert error[masks.astype(bool)].mean() > 3 * codec_error[masks.astype(bool)].mean()
