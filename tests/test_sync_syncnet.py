"""The SyncNet backend (stages/sync_models.py): checkpoint loading, the evaluation procedure, face crops.

No SyncNet weights exist offline, so the real network runs with random weights saved in the published
`syncnet_v2.model` format (tests/models.py). Random weights carry no audio-video correspondence: on a
real clip the mean distance curve is flat to a fraction of a percent and its minimum sits at +-max_offset,
put there by the zero embeddings the procedure pads the audio with (a distance to a zero vector is the
video embedding's norm, shorter than a distance to a real audio embedding). So with the real network
the tests check the bookkeeping exactly where it is exact: delaying the audio by k frames translates the
audio embeddings by k windows, and the distance matrix by k offsets, on the windows the padding does
not touch. The argmin itself is checked through `score` with a stand-in network whose embeddings are
readable (a window's loudness), on frames painted with the real clip's loudness: there the unshifted
clip must come out at offset 0 and a k-frame delay at exactly +k.
"""

from __future__ import annotations

import media
import models
import numpy as np
import pytest
import python_speech_features
import torch

from pipeline.runner import ChainRunner
from schemas.records import CandidateClip, SourceVideo
from stages.chunk import ChunkStage
from stages.face import FaceStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from stages.sync_models import (
    CROP_SCALE,
    MODEL_PATH_OPTION,
    SAMPLES_PER_FRAME,
    SyncEstimate,
    SyncNetScorer,
    crop_for_syncnet,
    estimate_from_distances,
    offset_distances,
    syncnet_model_class,
)

SHIFTS = (-7, -3, 0, 4, 9)
MAX_OFFSET = 15


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return models.syncnet_checkpoint(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model", seed=0)


@pytest.fixture(scope="module")
def scorer(checkpoint) -> SyncNetScorer:
    return SyncNetScorer(str(checkpoint))


@pytest.fixture(scope="module")
def grid_clip() -> CandidateClip:
    """GRID[0] (3 s, one speaker) through normalize, scene cut and the face stage, frames kept."""
    ingest = ChainRunner([ProbeStage(), ChunkStage()])
    clips = ChainRunner([NormalizeStage(preset="ultrafast"), SceneCutStage(), FaceStage()], keep_frames=True)
    out = [o for item in ingest.run(SourceVideo.from_uri(str(media.GRID[0]))) for o in clips.run(item)]
    (clip,) = [o for o in out if isinstance(o, CandidateClip)]
    assert clip.face is not None and clip.face.track is not None and clip.frames is not None
    assert len(clip.audio) == clip.num_frames * SAMPLES_PER_FRAME
    return clip


@pytest.fixture(scope="module")
def grid_crops(grid_clip) -> np.ndarray:
    return crop_for_syncnet(grid_clip.frames, grid_clip.face.track.boxes)


def delay(audio: np.ndarray, frames: int) -> np.ndarray:
    """The audio `frames` video frames later (negative: earlier), same length: zeros in, the end out."""
    out = np.zeros_like(audio)
    n = frames * SAMPLES_PER_FRAME
    if n >= 0:
        out[n:] = audio[: len(audio) - n]
    else:
        out[:n] = audio[-n:]
    return out


# -- 1. loading the published checkpoint format ---------------------------------------------------


def test_published_format_loads(checkpoint, scorer):
    saved = torch.load(checkpoint, weights_only=True)
    assert not any(
        name.startswith("module.") for name in saved
    )  # the names of syncnet-python's S, as loadParameters wants
    own = scorer.model.state_dict()
    assert set(saved) == {name for name in own if not name.endswith("num_batches_tracked")}
    for name, tensor in saved.items():
        assert torch.equal(own[name], tensor), name
    assert not scorer.model.training
    assert scorer.name == "syncnet"


def test_state_dict_with_batch_counters_loads(tmp_path):
    path = models.syncnet_checkpoint(tmp_path / "with_counters.model", seed=1, drop_batch_counters=False)
    SyncNetScorer(str(path))


def test_bad_checkpoints_are_refused_clearly(tmp_path, checkpoint):
    state = torch.load(checkpoint, weights_only=True)

    renamed = dict(state)
    renamed["netcnnaud.99.weight"] = renamed.pop("netcnnaud.0.weight")
    torch.save(renamed, tmp_path / "renamed.model")
    with pytest.raises(ValueError, match=r"netcnnaud\.99\.weight.*missing from the file: netcnnaud\.0\.weight"):
        SyncNetScorer(str(tmp_path / "renamed.model"))

    prefixed = {f"module.{name}": tensor for name, tensor in state.items()}
    torch.save(prefixed, tmp_path / "prefixed.model")
    with pytest.raises(ValueError, match="'module.' prefix"):
        SyncNetScorer(str(tmp_path / "prefixed.model"))

    reshaped = dict(state)
    reshaped["netfcaud.3.weight"] = torch.zeros(512, 512)  # 1024 x 512 in the network
    torch.save(reshaped, tmp_path / "reshaped.model")
    with pytest.raises(ValueError, match=r"netfcaud\.3\.weight: file \(512, 512\), network \(1024, 512\)"):
        SyncNetScorer(str(tmp_path / "reshaped.model"))

    truncated = {name: tensor for name, tensor in state.items() if not name.startswith("netfclip")}
    torch.save(truncated, tmp_path / "truncated.model")
    with pytest.raises(ValueError, match=r"missing from the file: netfclip"):
        SyncNetScorer(str(tmp_path / "truncated.model"))

    torch.save(syncnet_model_class()(), tmp_path / "pickled_module.model")  # a whole pickled network: code, not weights
    with pytest.raises(ValueError, match="not a plain state dict"):
        SyncNetScorer(str(tmp_path / "pickled_module.model"))


def test_missing_file_names_the_option(tmp_path):
    for path in (str(tmp_path / "nowhere" / "syncnet_v2.model"), ""):
        with pytest.raises(FileNotFoundError, match=MODEL_PATH_OPTION.replace(".", r"\.")):
            SyncNetScorer(path)


# -- 2. the procedure ----------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """Stands in for the network and keeps what each stream was fed."""

    def __init__(self):
        super().__init__()
        self.lip, self.aud = [], []

    def forward_lip(self, x):
        self.lip.append(x.clone())
        return torch.zeros(len(x), 8)

    def forward_aud(self, x):
        self.aud.append(x.clone())
        return torch.zeros(len(x), 8)


def test_network_inputs_are_syncnet_pythons(scorer, monkeypatch):
    """Colour in BGR order, raw 0-255 floats, 5-frame windows at every frame; raw int16 MFCCs
    (13 x 20, window i from MFCC frame 4 i); min(frames, samples // 640) - 5 windows; batches of 20."""
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (31, 224, 224, 3), dtype=np.uint8)
    audio = rng.integers(-8000, 8000, 30 * SAMPLES_PER_FRAME + 300, dtype=np.int16)  # 30 whole frames of audio
    recorder = Recorder()
    monkeypatch.setattr(scorer, "model", recorder)
    estimate = scorer.score(crops, audio, max_offset=4)

    lip, aud = torch.cat(recorder.lip), torch.cat(recorder.aud)
    assert len(lip) == len(aud) == 30 - 5
    assert max(len(b) for b in recorder.lip + recorder.aud) == 20
    bgr = crops[..., ::-1].astype(np.float32)
    for i in (0, 7, 24):
        assert lip.shape[1:] == (3, 5, 224, 224)
        np.testing.assert_array_equal(lip[i].permute(1, 2, 3, 0).numpy(), bgr[i : i + 5])
    mfcc = python_speech_features.mfcc(audio, 16000).T.astype(np.float32)
    assert mfcc.shape[0] == 13
    for i in (0, 7, 24):
        assert aud.shape[1:] == (1, 13, 20)
        np.testing.assert_allclose(aud[i, 0].numpy(), mfcc[:, 4 * i : 4 * i + 20], rtol=1e-6)
    assert estimate.distances.shape == (9,)

    with pytest.raises(ValueError, match="too short"):
        scorer.score(crops[:5], audio)
    with pytest.raises(ValueError, match="int16"):
        scorer.score(crops, audio.astype(np.float32))


def test_real_network_shift_bookkeeping(scorer, grid_clip, grid_crops):
    """Random weights, real clip: delaying the audio k frames translates everything by +k offsets,
    exactly, wherever neither the zero audio at the ends nor the procedure's padding is involved."""
    audio = grid_clip.audio
    n = scorer.num_windows(len(grid_crops), len(audio))
    assert n == grid_clip.num_frames - 5
    video = scorer.video_features(grid_crops, n)

    unshifted = scorer.score(grid_crops, audio, max_offset=MAX_OFFSET)
    assert isinstance(unshifted, SyncEstimate)
    assert unshifted.distances.shape == (2 * MAX_OFFSET + 1,)
    audio0 = scorer.audio_features(audio, n)
    base = offset_distances(video, audio0, MAX_OFFSET)
    again = estimate_from_distances(base, MAX_OFFSET)
    np.testing.assert_allclose(unshifted.distances, again.distances, rtol=1e-5)
    assert unshifted.offset_frames == again.offset_frames
    assert unshifted.confidence == pytest.approx(float(np.median(again.distances) - again.distances.min()), abs=1e-5)

    v = MAX_OFFSET
    for k in SHIFTS:
        shifted = scorer.audio_features(delay(audio, k), n)
        # Audio windows whose samples all came across (window 0 also has a changed pre-emphasis sample when k < 0).
        clean = np.arange(max(k, 0) + 1, n + min(k, 0))
        np.testing.assert_allclose(shifted[clean], audio0[clean - k], rtol=1e-4, atol=1e-5)

        dist = offset_distances(video, shifted, MAX_OFFSET)
        assert dist.shape == (n, 2 * v + 1)
        # Row i, column j compares video window i with audio window i + j - v: equal to the unshifted
        # row's column j - k wherever that audio window is clean and both columns exist.
        columns = np.arange(max(0, k), min(2 * v, 2 * v + k) + 1)
        rows = np.array([i for i in range(n) if np.isin(i + columns - v, clean).all()])
        assert len(rows) >= 20
        np.testing.assert_allclose(dist[np.ix_(rows, columns)], base[np.ix_(rows, columns - k)], rtol=1e-4, atol=1e-5)
        # So on these windows the mean curve is the unshifted one translated, and its minimum moves by exactly k.
        curve, curve0 = dist[rows][:, columns].mean(0), base[rows][:, columns - k].mean(0)
        np.testing.assert_allclose(curve, curve0, rtol=1e-5)
        assert (columns[np.argmin(curve)] - v) - ((columns - k)[np.argmin(curve0)] - v) == k


class Loudness(torch.nn.Module):
    """A network with readable embeddings: the lip stream decodes the loudness painted into the red
    channel of the 5 frames (BGR input: channel 2), the audio stream averages MFCC 0 (log energy)
    over its 20 frames. Painted from the clip's own MFCCs, they agree at the true alignment."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward_lip(self, x):
        red = x[:, 2].mean(dim=(2, 3))  # (B, 5) mean 0-255 level of each frame
        return (self.lo + red / 255 * (self.hi - self.lo)).mean(1, keepdim=True)

    def forward_aud(self, x):
        return x[:, 0, 0, :].mean(1, keepdim=True)


def test_offset_sign_and_alignment(scorer, grid_clip, monkeypatch):
    """Audio delayed by k frames (sound after the lips) gives offset +k, in sync gives 0, through `score`."""
    audio = grid_clip.audio
    energy = python_speech_features.mfcc(audio, 16000)[:, 0]  # 4 per frame, the last frame has 3
    per_frame = np.array([energy[4 * t : 4 * t + 4].mean() for t in range(grid_clip.num_frames)])
    lo, hi = per_frame.min(), per_frame.max()
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (grid_clip.num_frames, 224, 224, 3), dtype=np.uint8)  # green, blue: noise
    crops[..., 0] = np.round((per_frame - lo) / (hi - lo) * 255).astype(np.uint8)[:, None, None]  # red: loudness
    monkeypatch.setattr(scorer, "model", Loudness(lo, hi))
    for k in SHIFTS:
        estimate = scorer.score(crops, delay(audio, k), max_offset=MAX_OFFSET)
        assert estimate.offset_frames == k
        assert estimate.distances.shape == (2 * MAX_OFFSET + 1,)
        assert estimate.distances[MAX_OFFSET + k] == estimate.distances.min()
        assert estimate.confidence > 0.5  # log-energy units; the in-sync distance is quantization only
    narrow = scorer.score(crops, delay(audio, 4), max_offset=5)
    assert narrow.distances.shape == (11,) and narrow.offset_frames == 4


# -- 3. face crops -------------------------------------------------------------------------------


def test_crop_geometry():
    """The box centre lands cs * s above the crop's centre (224 cs / (2 (1 + cs)) = 32 px), the box's
    larger side spans 224 / (1 + cs) = 160 px, and beyond the frame is grey 110."""
    height, width, t = 240, 320, 20
    frames = np.zeros((t, height, width, 3), np.uint8)
    frames[:, 100:141, 150:191] = (255, 0, 0)  # a red square face: centre (170, 120), side 41 px
    frames[:, 120, 170] = (0, 255, 0)  # its centre
    box = np.array([150 / width, 100 / height, 191 / width, 141 / height])
    boxes = np.tile(box, (t, 1))
    crops = crop_for_syncnet(frames, boxes)
    assert crops.shape == (t, 224, 224, 3) and crops.dtype == np.uint8

    expect_x, expect_y = 112, 112 - 224 * CROP_SCALE / (2 * (1 + CROP_SCALE))
    for crop in crops[[0, 10, t - 1]]:
        green = np.argwhere((crop[..., 1] > 60) & (crop[..., 0] < 200))
        y, x = green.mean(0)
        assert abs(x - expect_x) <= 3 and abs(y - expect_y) <= 3
        red = np.argwhere(crop[..., 0] > 128)
        side = red.max(0) - red.min(0) + 1
        assert np.all(np.abs(side - 224 / (1 + CROP_SCALE)) <= 6)

    # A face at the frame's corner: the crop reaches past the frame, into grey 110.
    corner = np.tile(np.array([0.0, 0.0, 0.15, 0.2]), (t, 1))
    crop = crop_for_syncnet(frames, corner)[0]
    assert np.all(crop[:10, :10] == 110)


def test_crop_smoothing_and_gaps():
    """Sizes and centres are median-filtered over 13 frames: a one-frame jump of the box is ignored.
    Frames without a box take one interpolated from their neighbours."""
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (1, 120, 160, 3), dtype=np.uint8), 30, axis=0)
    boxes = np.tile([0.3, 0.3, 0.6, 0.7], (30, 1)).astype(np.float32)
    jumped, gaps = boxes.copy(), boxes.copy()
    jumped[15] = [0.0, 0.0, 0.2, 0.2]
    gaps[[3, 4, 20]] = np.nan
    reference = crop_for_syncnet(frames, boxes)
    np.testing.assert_array_equal(crop_for_syncnet(frames, jumped), reference)
    np.testing.assert_array_equal(crop_for_syncnet(frames, gaps), reference)
    with pytest.raises(ValueError, match="no face box"):
        crop_for_syncnet(frames, np.full((30, 4), np.nan))


def test_grid_crops_are_on_the_face(grid_clip, grid_crops):
    """Real clip: the crops follow the tracked face; the mouth (mesh landmarks 13 and 14, the inner
    lips) lands where the geometry puts it, in the crop's lower half, near the middle."""
    assert grid_crops.shape == (grid_clip.num_frames, 224, 224, 3) and grid_crops.dtype == np.uint8
    track = grid_clip.face.track
    height, width = grid_clip.frames.shape[1:3]
    for t in (0, 30, grid_clip.num_frames - 1):
        box = track.boxes[t] * (width, height, width, height)
        s = max(box[2] - box[0], box[3] - box[1]) / 2
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
        scale = 224 / (2 * s * (1 + CROP_SCALE))
        mouth = track.landmarks[t, [13, 14], :2].astype(np.float64).mean(0) * (width, height)
        # Where the mouth lands in the crop, from the unsmoothed box (the face barely moves in GRID).
        x, y = (mouth - centre) * scale + (112, 112 - 224 * CROP_SCALE / (2 * (1 + CROP_SCALE)))
        assert 80 < x < 144 and 112 < y < 200, (t, x, y)
