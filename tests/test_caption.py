"""Keyframes and captions on real media, after the real chain (probe .. face, sync, keyframes):
the embedded caption says what was measured (shot size from the face box, speaking or not, people,
head tilt, light, background, camera motion on panned and zoomed media made for it), and the VLM
backend runs end to end on a tiny random Qwen2.5-VL in the published folder layout.

Each input runs through the chain once per module; each test captions a copy of the shared clip.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import media
import models
import numpy as np
import pytest

from pipeline.runner import ChainRunner
from schemas.manifest import manifest_row
from schemas.records import FPS, CandidateClip, Status
from schemas.text import Transcript
from stages.caption import CaptionStage
from stages.caption_embedded import COLOURS, colour_classes, shot_size
from stages.caption_models import VlmCaptioner
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.keyframes import KeyframesStage, decode_keyframe, keyframe_indices
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from stages.sync import SyncStage


def clip_of(run_chain, path: Path, face: FaceStage | None = None, sync: bool = True) -> CandidateClip:
    """The one clip of `path` after normalize, scene cut, face, sync (unless `sync` is false) and
    keyframes: the clips group's stages, in order."""
    stages = [
        NormalizeStage(preset="ultrafast"),
        SceneCutStage(),
        face or FaceStage(),
        *([SyncStage()] if sync else []),
        KeyframesStage(),
    ]
    (clip,) = [o for o in run_chain(path, [ProbeStage(), ChunkStage()], stages) if isinstance(o, CandidateClip)]
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip


def captioned(clip: CandidateClip, stage: CaptionStage | None = None, **changes) -> CandidateClip:
    """`clip` (with `changes` to its fields) through the caption stage."""
    (out,) = ChainRunner([stage or CaptionStage()]).run(dataclasses.replace(clip, **changes))
    return out


def text(clip: CandidateClip) -> str:
    assert clip.status is Status.PENDING, clip.reason_detail
    return clip.caption.text


def expected_shot(clip: CandidateClip) -> str:
    """The shot size the face box measure gives: median face box height over the frame's height."""
    return shot_size(clip.face.size_px / clip.video.height)


@pytest.fixture(scope="module")
def grid(run_chain) -> CandidateClip:
    return clip_of(run_chain, media.GRID[0])


@pytest.fixture(scope="module")
def portrait(run_chain) -> CandidateClip:
    """The 10 s 1080x1920 half-body portrait: one clip."""
    return clip_of(run_chain, media.PORTRAIT)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("caption_media")


# -- keyframes ------------------------------------------------------------------------------------


def test_keyframes_are_a_few_small_jpegs_spread_over_the_clip(grid, portrait):
    for clip, count, size in ((grid, 4, (288, 360)), (portrait, 8, (448, 252))):  # 3 s: about 1 fps; 10 s: at most 8
        times = [k.time_s for k in clip.keyframes]
        assert len(times) == count and times[0] == 0 and times[-1] == (clip.num_frames - 1) / FPS
        assert np.all(np.diff(times) > 0.8) and np.all(np.diff(times) < 1.6)
        pictures = [decode_keyframe(k) for k in clip.keyframes]
        assert all(
            p.shape == (*size, 3) for p in pictures
        )  # GRID's analysis frames as they are; the portrait's down to 448
        assert all(len(k.jpeg) < 40_000 for k in clip.keyframes)
        assert clip.frames is None  # the analysis frames stayed behind


def test_keyframe_sampling_bounds():
    assert keyframe_indices(10, 1.0, 8).tolist() == [0, 4, 9]  # short clips: first, middle, last
    assert keyframe_indices(2, 1.0, 8).tolist() == [0, 1]  # never more than the clip has
    assert keyframe_indices(250, 1.0, 8).tolist() == [0, 36, 71, 107, 142, 178, 213, 249]
    assert len(keyframe_indices(250, 0.5, 8)) == 6
    with pytest.raises(ValueError, match="max_frames"):
        KeyframesStage(max_frames=2).validate()


def test_keyframes_need_the_analysis_frames(grid):
    (out,) = ChainRunner([KeyframesStage()]).run(grid)
    assert (out.reason, out.rejected_by) == ("error", "keyframes") and "analysis frames" in out.reason_detail


# -- the embedded caption -------------------------------------------------------------------------


def test_the_embedded_caption_says_the_measured_shot_size_and_that_the_person_speaks(grid, portrait):
    captions = {}
    for name, clip in (("grid", grid), ("portrait", portrait)):
        out = captioned(clip)
        captions[name] = text(out)
        assert captions[name].startswith(f"A {expected_shot(clip)} of one person speaking, facing the camera"), captions
        assert out.caption.backend == out.backends["caption"] == "embedded"
        row = manifest_row(out, "shards/shard-000000.tar")
        assert (row["caption"], row["caption_backend"]) == (captions[name], "embedded")
    assert expected_shot(grid) == "close-up" and expected_shot(portrait) == "medium long shot", captions
    assert "head still" in captions["grid"] and "head still" not in captions["portrait"], captions
    assert "blue background; static camera." in captions["grid"], captions
    assert "grey and green background; static camera." in captions["portrait"], captions


def test_a_smaller_face_in_the_frame_is_a_wider_shot(run_chain, made, grid):
    path = made / "shrunk.mp4"
    media.shrunk(media.GRID[0], path, 0.4)  # the same speaker at 0.4 times the size, on black
    small = clip_of(run_chain, path, FaceStage(min_face_px=40))
    caption = text(captioned(small))
    assert expected_shot(small) == "medium shot" != expected_shot(grid)
    assert caption.startswith("A medium shot of one person speaking") and "black background" in caption, caption


def test_speaking_is_said_only_from_the_sync_stage(run_chain, made, grid):
    english = Transcript(backend="faster-whisper:tiny.en", text="bin blue at f two now", language="en")
    assert "of one person speaking English, " in text(captioned(grid, transcript=english))
    unknown = text(captioned(grid, sync=None))  # no sync stage ran: nothing is claimed either way
    assert "speaking" not in unknown and unknown.startswith("A close-up of one person, facing the camera"), unknown

    path = made / "frozen.mp4"
    media.frozen(media.GRID[0], path, 40)  # a still face over the speech
    still = clip_of(run_chain, path, sync=False)
    (synced,) = ChainRunner([SyncStage()]).run(still)
    assert synced.reason == "not_talking"
    silent = text(captioned(still, sync=synced.sync))
    assert "of one person not speaking, " in silent and "head still" in silent, silent


def test_of_two_people_the_speaker_is_placed(run_chain, two_speakers):
    pair = clip_of(run_chain, two_speakers)  # GRID[0] on the left with its audio, GRID[1] on the right
    caption = text(captioned(pair))
    assert "of two people, the one on the left speaking, facing the camera" in caption, caption


@pytest.mark.parametrize("radians, side", [(0.25, "right"), (-0.25, "left")])
def test_a_tilted_head_is_said_with_its_side(run_chain, made, radians, side):
    path = made / f"tilted {radians}.mp4"
    media.tilted(media.GRID[0], path, radians)  # clockwise: the top of the head leans to the frame's right
    caption = text(captioned(clip_of(run_chain, path)))
    assert f"facing the camera with the head tilted to the {side}, head still" in caption, caption


def test_light_from_one_side(run_chain, made, grid):
    assert "; even lighting, " in text(captioned(grid))
    path = made / "side_lit.mp4"
    media.side_lit(media.GRID[0], path)
    caption = text(captioned(clip_of(run_chain, path)))
    assert "; lighting from the left, blue background" in caption, caption


def test_camera_pan_and_zoom(run_chain, made):
    """The portrait's first 3 s, framed waist up and panned right, then magnified about its centre.
    Without the sync stage (the first 3 s do not pass it): no claim about speaking."""
    panned, zoomed = made / "panned.mp4", made / "zoomed.mp4"
    media.panned(media.PORTRAIT, panned)
    media.zoomed(media.PORTRAIT, zoomed)
    pan = text(captioned(clip_of(run_chain, panned, sync=False)))
    assert pan.endswith("; camera panning right.") and pan.startswith(
        "A medium shot of one person, facing the camera"
    ), pan
    assert "head moving," not in pan, (
        pan
    )  # the face moves across the frame with the picture: the camera's motion, not the head's
    zoom = text(captioned(clip_of(run_chain, zoomed, sync=False)))
    assert zoom.endswith("; camera zooming in."), zoom


def test_colour_classes():
    rgb = np.array(
        [
            [0, 0, 0],
            [128, 128, 128],
            [250, 250, 250],
            [220, 30, 30],
            [120, 70, 30],
            [40, 170, 60],
            [30, 160, 220],
            [120, 50, 200],
        ],
        np.uint8,
    )
    assert [COLOURS[i] for i in colour_classes(rgb)] == [
        "black",
        "grey",
        "white",
        "red",
        "brown",
        "green",
        "blue",
        "purple",
    ]


def test_the_caption_stage_needs_keyframes_and_the_embedded_one_a_face(grid):
    out = captioned(grid, keyframes=[])
    assert (out.reason, out.rejected_by) == ("error", "caption") and "keyframes" in out.reason_detail
    out = captioned(grid, face=None)
    assert out.reason == "error" and "tracked face" in out.reason_detail


# -- the VLM backend --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> str:
    return str(models.qwen_vl_folder(tmp_path_factory.mktemp("vlm") / "tiny-qwen2.5-vl"))


def test_the_vlm_backend_captions_a_clip_end_to_end(tiny_vlm, grid):
    out = captioned(grid, CaptionStage(vlm_path=tiny_vlm, max_new_tokens=12))
    assert out.caption.backend == out.backends["caption"] == "vlm:tiny-qwen2.5-vl"
    assert isinstance(out.caption.text, str) and out.caption.text  # random weights: some text, meaning nothing
    assert manifest_row(out, "shards/shard-000000.tar")["caption_backend"] == "vlm:tiny-qwen2.5-vl"


def test_the_vlm_backend_reads_qwen2_vl_too(tmp_path, grid):
    folder = models.qwen_vl_folder(tmp_path / "tiny-qwen2-vl", "qwen2_vl")
    out = captioned(grid, CaptionStage(vlm_path=str(folder), max_new_tokens=12))
    assert out.caption.backend == "vlm:tiny-qwen2-vl" and out.caption.text


def test_the_vlm_backend_batches_clips_as_if_alone(tiny_vlm, grid, portrait):
    """GRID (4 landscape keyframes) and the portrait (8 upright ones) in one generate call, left
    padded: each gets the caption it gets alone."""
    runner = ChainRunner([CaptionStage(vlm_path=tiny_vlm, max_new_tokens=12)])
    together = [out.caption.text for out in runner.run_batch([grid, portrait])]
    alone = [text(out) for c in (grid, portrait) for out in runner.run(c)]
    assert together == alone and all(together), together


def test_a_missing_or_unsupported_vlm_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="caption.vlm_path"):
        CaptionStage(vlm_path=str(tmp_path / "nowhere")).setup()
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="'gpt2' model"):
        VlmCaptioner(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "no-such-model"}')
    with pytest.raises(ValueError, match="caption.vlm_path"):
        VlmCaptioner(str(tmp_path))


def test_a_gpu_is_requested_only_for_a_vlm_on_cuda():
    assert CaptionStage(vlm_path="/models/qwen", device="cuda").worker_resources().gpus == 1
    assert CaptionStage(vlm_path="/models/qwen").worker_resources().gpus == 0
    assert CaptionStage(device="cuda").worker_resources().gpus == 0  # the embedded captioner runs no model
    with pytest.raises(ValueError, match="caption.device"):
        CaptionStage(device="tpu").validate()


@pytest.mark.gpu
def test_the_vlm_backend_on_a_gpu(tiny_vlm, grid):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    on_gpu = captioned(grid, CaptionStage(vlm_path=tiny_vlm, device="cuda", max_new_tokens=12))
    assert on_gpu.caption.backend == "vlm:tiny-qwen2.5-vl" and on_gpu.caption.text
