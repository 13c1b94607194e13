"""Training data: windows read from real shards (the demo media curated once, `demo_shards`), and
the sampler's order, split, buckets, balance and exact resume on synthetic listings."""

from __future__ import annotations

import copy
import io
import subprocess
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from av.video.reformatter import Interpolation, VideoReformatter

from schemas.face import decode_face_npz
from schemas.records import FPS
from schemas.text import decode_features, frame_feature_window
from stages.face_models import MediapipeDetector
from train.data import Batch, ClipDataset, DataConfig, SampleInfo, View, Window, collate, decode_frames, list_samples
from train.loader import ClipLoader
from train.window_sampler import DistributedClipSampler, balance_labels

PORTRAIT_FRAMES, GRID_FRAMES = 250, 75


def shard_members(out: Path, key: str) -> dict[str, bytes]:
    """A sample's members straight from its tar (sequential read, independent of the loader)."""
    members = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                name, _, suffix = info.name.partition(".")
                if name == key:
                    members[suffix] = tar.extractfile(info).read()
    return members


def dataset(out: Path, **overrides) -> ClipDataset:
    config = DataConfig(shards=str(out), **overrides)
    return ClipDataset(config, list_samples(config.shards))


def portrait_index(data: ClipDataset) -> int:
    return next(i for i, s in enumerate(data.samples) if s.num_frames == PORTRAIT_FRAMES)


# -- reading real shards ---------------------------------------------------------------------------


@pytest.mark.slow
def test_listing_is_the_manifests_kept_clips_and_members_are_read_by_key(demo_shards):
    samples = list_samples(str(demo_shards))
    rows = [r for r in pq.read_table(demo_shards / "manifest.parquet").to_pylist() if r["status"] == "kept"]
    assert sorted(s.key for s in samples) == sorted(r["key"] for r in rows) and len(samples) == 5
    by_key = {r["key"]: r for r in rows}
    for s in samples:
        row = by_key[s.key]
        assert (s.shard, s.num_frames, s.width, s.height, s.source_id) == (
            row["shard"],
            row["num_frames"],
            row["width"],
            row["height"],
            row["source_id"],
        )
        # the person the run found among its clips (pipeline/people.py), as the manifest has it
        assert s.identity_id == row["identity_id"] and s.identity_id.startswith("person-")
    assert sorted((s.width, s.height, s.num_frames) for s in samples) == [(360, 288, GRID_FRAMES)] * 4 + [
        (720, 1280, PORTRAIT_FRAMES)
    ]
    data = ClipDataset(DataConfig(shards=str(demo_shards)), samples)
    for s in samples:
        expected = shard_members(demo_shards, s.key)
        assert data.reader.read(s.shard, s.key, ("txt", "whisper.npy", "face.npz", "absent")) == {
            suffix: expected[suffix] for suffix in ("txt", "whisper.npy", "face.npz")
        }


@pytest.mark.slow
def test_samples_have_the_documented_layout(demo_shards):
    data = dataset(demo_shards, resolution=(40, 56), num_frames=6, frame_stride=3)
    for index, info in enumerate(data.samples):
        window = Window(index, start=5, num_frames=6, stride=3, reference=60, height=40, width=56)
        sample = data[window]
        assert sample.key == info.key and sample.window == window
        assert sample.video.shape == (3, 6, 40, 56) and sample.reference.shape == (3, 40, 56)
        assert sample.audio.shape == (6, 10, 384)
        assert sample.face_mask.shape == sample.lip_mask.shape == (6, 40, 56)
        for tensor in (sample.video, sample.reference, sample.audio, sample.face_mask, sample.lip_mask):
            assert tensor.dtype == torch.float32
        assert (
            -1 <= sample.video.min() < sample.video.max() <= 1
            and -1 <= sample.reference.min() < sample.reference.max() <= 1
        )
        assert set(sample.face_mask.unique().tolist()) == set(sample.lip_mask.unique().tolist()) == {0.0, 1.0}
        members = shard_members(demo_shards, info.key)
        assert sample.caption == members["txt"].decode() and sample.caption.startswith("A ")
        features = decode_features(members["whisper.npy"])
        expected = np.stack([frame_feature_window(features, frame, FPS) for frame in window.frames]).astype(np.float32)
        assert list(window.frames) == [5, 8, 11, 14, 17, 20]
        assert torch.equal(sample.audio, torch.from_numpy(expected))


def decode_whole(mp4: bytes, view: View) -> np.ndarray:
    """Every frame of a clip in order, scaled and placed as the loader does: (frames, H, W, 3) uint8."""
    reformatter = VideoReformatter()
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack(
            [
                view.place(
                    reformatter.reformat(
                        frame,
                        width=view.scaled_width,
                        height=view.scaled_height,
                        format="rgb24",
                        interpolation=Interpolation.AREA,
                    ).to_ndarray()
                )
                for frame in container.decode(video=0)
            ]
        )


@pytest.mark.slow
def test_window_decoding_gives_the_pixels_of_the_whole_clip(demo_shards):
    """A late window of the 10 s portrait and an early reference: the same pixels as every frame
    of the clip decoded in order, sliced."""
    data = dataset(demo_shards, resolution=(48, 32))
    index = portrait_index(data)
    info = data.samples[index]
    window = Window(index, start=200, num_frames=5, stride=2, reference=30, height=48, width=32)
    sample = data[window]
    members = shard_members(demo_shards, info.key)
    x0, y0, x1, y1 = decode_face_npz(members["face.npz"]).crop_box
    view = View.fit(info.width, info.height, (48, 32), "crop", ((x0 + x1) / 2, (y0 + y1) / 2))
    whole = decode_whole(members["mp4"], view)
    assert len(whole) == PORTRAIT_FRAMES
    to_unit = lambda pixels: torch.from_numpy(pixels).float() / 127.5 - 1  # noqa: E731
    assert torch.equal(sample.video, to_unit(whole[200:209:2]).permute(3, 0, 1, 2))
    assert torch.equal(sample.reference, to_unit(whole[30]).permute(2, 0, 1))


@pytest.mark.slow
def test_window_decoding_seeks_to_the_key_frame_before_the_window(demo_shards, tmp_path):
    """The portrait re-encoded with a key frame every 12 frames and B-frames: windows that start on,
    after and just before a key frame, read with a seek, match the whole clip's frames."""
    data = dataset(demo_shards)
    members = shard_members(demo_shards, data.samples[portrait_index(data)].key)
    (tmp_path / "in.mp4").write_bytes(members["mp4"])
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(tmp_path / "in.mp4"),
            "-vf",
            "scale=144:256",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "12",
            "-bf",
            "2",
            "-x264-params",
            "scenecut=0",
            str(tmp_path / "gop.mp4"),
        ],
        check=True,
    )
    mp4 = (tmp_path / "gop.mp4").read_bytes()
    view = View.fit(144, 256, (64, 48), "crop", (0.5, 0.4))
    whole = decode_whole(mp4, view)
    assert len(whole) == PORTRAIT_FRAMES
    for frames in ([120, 121, 122], [125, 130, 135], [131, 140, 20], [249]):
        got = decode_frames(mp4, frames, view)
        assert sorted(got) == sorted(frames)
        for frame in frames:
            assert np.array_equal(got[frame], whole[frame]), frame


@pytest.mark.slow
@pytest.mark.parametrize(("fit", "resolution"), [("crop", (128, 128)), ("letterbox", (192, 192)), ("crop", (96, 160))])
def test_masks_lie_on_the_faces_in_the_frames(demo_shards, fit, resolution):
    """mediapipe finds the face in the loaded frames themselves: the face mask's centroid is at
    the detected box's centre, and the lip mask lies inside the face mask, below its centre."""
    detector = MediapipeDetector(min_confidence=0.5)
    data = dataset(demo_shards, resolution=resolution, fit=fit)
    height, width = resolution
    for index in range(len(data)):
        sample = data[Window(index, start=20, num_frames=3, stride=10, reference=0, height=height, width=width)]
        frames = [((sample.video[:, t].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy() for t in range(3)]
        for t, faces in enumerate(detector.detect(frames)):
            assert len(faces) == 1, (sample.key, t)
            x0, y0, x1, y1 = faces[0].box
            ys, xs = np.nonzero(sample.face_mask[t].numpy())
            centre_x, centre_y = (xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height
            assert abs(centre_x - (x0 + x1) / 2) < 0.15 * (x1 - x0), (sample.key, t)
            assert abs(centre_y - (y0 + y1) / 2) < 0.15 * (y1 - y0), (sample.key, t)
            lips, face = sample.lip_mask[t], sample.face_mask[t]
            assert lips.sum() > 0 and (lips * face).sum() >= 0.95 * lips.sum()
            assert np.nonzero(lips.numpy())[0].mean() > ys.mean()


@pytest.mark.slow
def test_loader_with_two_workers_gives_the_planned_batches_and_resumes_exactly(demo_shards):
    """Two epochs with 2 data-loader workers: the same batches as loading in this process; stopped
    after 3 batches and resumed from the state by a new loader, the same batches again."""
    config = DataConfig(shards=str(demo_shards), resolution=(32, 32), num_frames=8, frame_stride=2, num_workers=2)

    def batches(loader: ClipLoader, count: int) -> list[Batch]:
        out = []
        while len(out) < count:
            for batch in loader:
                out.append(batch)
                if len(out) == count:
                    break
        return out

    in_process = batches(ClipLoader(replace(config, num_workers=0), batch_size=2), 6)  # 3 batches an epoch (one padded)
    uninterrupted = batches(ClipLoader(config, batch_size=2), 6)
    first = ClipLoader(config, batch_size=2)
    head = batches(first, 2)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (0, 2)
    resumed = ClipLoader(config, batch_size=2)
    resumed.load_state_dict(state)
    tail = batches(resumed, 4)
    for batches_ in (uninterrupted, head + tail):
        assert [b.key for b in batches_] == [b.key for b in in_process]
        for got, expected in zip(batches_, in_process):
            assert torch.equal(got.video, expected.video) and torch.equal(got.audio, expected.audio)
    epoch = [key for batch in in_process[:3] for key in batch.key]
    assert sorted(set(epoch)) == sorted(s.key for s in first.dataset.samples) and len(epoch) == 6
    assert (resumed.state_dict()["epoch"], resumed.state_dict()["position"]) == (2, 0)  # both epochs consumed
    batch = in_process[0]
    assert batch.video.shape == (2, 3, 8, 32, 32) and batch.reference.shape == (2, 3, 32, 32)
    assert batch.audio.shape == (2, 8, 10, 384) and batch.face_mask.shape == batch.lip_mask.shape == (2, 8, 32, 32)
    assert len(batch.caption) == len(batch.key) == 2


# -- the sampler on synthetic listings -----------------------------------------------------------


def listing(count: int, seed: int = 0) -> list[SampleInfo]:
    """Clips of three shapes and lengths 40-250 frames from a few sources of unequal size."""
    rng = np.random.default_rng(seed)
    shapes = [(360, 288), (720, 1280), (512, 512)]
    out = []
    for i in range(count):
        width, height = shapes[i % 3]
        out.append(
            SampleInfo(
                f"{i:04d}",
                "shards/shard-000000.tar",
                int(rng.integers(40, 251)),
                width,
                height,
                f"source{min(i % 7, 3)}",
                None,
            )
        )
    return out


def config(**overrides) -> DataConfig:
    return DataConfig(shards="unused", **overrides)


def epoch_windows(sampler: DistributedClipSampler, worker: int = 0, num_workers: int = 1) -> list[list[Window]]:
    return list(sampler.batches(worker, num_workers))


def test_windows_are_deterministic_per_seed_and_epoch():
    samples = listing(30)
    a, b = DistributedClipSampler(samples, config(), 2), DistributedClipSampler(samples, config(), 2)
    first = epoch_windows(a)
    assert first == epoch_windows(b) and len(first) == 15
    assert (a.epoch, a.position) == (0, 15)
    second = epoch_windows(a)  # the next iteration is the next epoch
    assert a.epoch == 1 and second == epoch_windows(b) and second != first
    assert sorted(w.index for batch in second for w in batch) == list(range(30))
    assert epoch_windows(DistributedClipSampler(samples, config(seed=1), 2)) != first


def test_buckets_give_one_shape_per_batch_and_the_longest_window_that_fits():
    buckets = config(
        resolution=(64, 64), aspect_buckets=((48, 64), (96, 48)), num_frames=16, length_buckets=(32, 64), frame_stride=2
    )
    samples = listing(60)
    sampler = DistributedClipSampler(samples, buckets, 3)
    expected_size = {(360, 288): (48, 64), (720, 1280): (96, 48), (512, 512): (64, 64)}
    seen = set()
    for batch in epoch_windows(sampler):
        assert len({(w.height, w.width, w.num_frames) for w in batch}) == 1
        for w in batch:
            info = samples[w.index]
            assert (w.height, w.width) == expected_size[(info.width, info.height)]
            assert w.num_frames == max(n for n in (16, 32, 64) if (n - 1) * 2 + 1 <= info.num_frames)
            assert w.stride == 2 and w.start >= 0 and w.frames[-1] < info.num_frames
            span = range(w.start, w.frames[-1] + 1)
            assert (
                w.reference not in span and 0 <= w.reference < info.num_frames
            )  # every clip is longer than its window
            seen.add((w.height, w.width, w.num_frames))
    assert len(seen) >= 6


def test_reference_frame_policies():
    samples = [replace(s, num_frames=n) for s, n in zip(listing(3), (16, 17, 200))]
    outside = [w for batch in epoch_windows(DistributedClipSampler(samples, config(num_frames=16), 1)) for w in batch]
    by_clip = {w.index: w for w in outside}
    assert by_clip[0].start == by_clip[0].reference == 0  # the window is the whole clip
    assert by_clip[1].reference in (0, 16) and by_clip[1].reference != by_clip[1].start
    first = [
        w
        for batch in epoch_windows(DistributedClipSampler(samples, config(num_frames=16, reference="first"), 1))
        for w in batch
    ]
    assert all(w.reference == w.start for w in first)


def test_too_short_clips_are_never_read():
    samples = [replace(s, num_frames=n) for s, n in zip(listing(4), (20, 31, 200, 10))]
    sampler = DistributedClipSampler(samples, config(num_frames=16, frame_stride=2), 1)
    assert sorted(w.index for batch in epoch_windows(sampler) for w in batch) == [1, 2]


def take(sampler: DistributedClipSampler, count: int) -> list[list[Window]]:
    """`count` batches as a training loop in this process consumes them, across epochs."""
    out: list[list[Window]] = []
    while len(out) < count:
        for batch in sampler:
            out.append(batch)
            if len(out) == count:
                break
    return out


def worker_shares(sampler: DistributedClipSampler, num_workers: int) -> list[list[list[Window]]]:
    """The rest of the epoch as each DataLoader worker reads it (each a copy of the sampler)."""
    return [list(copy.deepcopy(sampler).batches(worker, num_workers)) for worker in range(num_workers)]


def interleave(shares: list[list[list[Window]]]) -> list[list[Window]]:
    """The DataLoader's order: one batch from each worker in turn."""
    out = []
    for turn in range(max(len(s) for s in shares)):
        out += [share[turn] for share in shares if turn < len(share)]
    return out


def test_two_ranks_of_two_workers_read_every_clip_once_per_epoch():
    samples = listing(48)  # one bucket, 48 = 4 global batches of 2 ranks x 6
    seen = []
    for rank in range(2):
        sampler = DistributedClipSampler(samples, config(), 6, rank, 2)
        shares = worker_shares(sampler, 2)
        assert [len(s) for s in shares] == [2, 2]
        whole = epoch_windows(sampler)
        assert interleave(shares) == whole  # the DataLoader's turn order is the rank's order
        seen += [w.index for batch in whole for w in batch]
    assert sorted(seen) == list(range(48))
    assert sampler.plan(0).padding == sampler.plan(0).dropped == 0


def test_incomplete_global_batches_are_padded_or_dropped_by_bucket():
    samples = listing(50)  # three shapes: 17, 17 and 16 clips
    buckets = dict(resolution=(64, 64), aspect_buckets=((48, 64), (96, 48)))
    for drop_last in (False, True):
        counts: Counter[int] = Counter()
        for rank in range(2):
            sampler = DistributedClipSampler(samples, config(drop_last=drop_last, **buckets), 2, rank, 2)
            counts.update(w.index for batch in epoch_windows(sampler) for w in batch)
        plan = sampler.plan(0)
        if drop_last:  # 17, 17, 16 clips in global batches of 4: 1 + 1 + 0 left out
            assert plan.dropped == 2 and plan.padding == 0
            assert max(counts.values()) == 1 and len(counts) == 48
        else:
            assert plan.padding == 3 + 3 and plan.dropped == 0
            assert set(counts) == set(range(50)) and sum(counts.values()) == 56


@pytest.mark.parametrize("balance", ["", "source_id"])
def test_resuming_mid_epoch_continues_with_exactly_the_remaining_batches(balance):
    """Stopped after any number of batches (inside, at the end of, or past the first epoch), a new
    sampler loaded with the state and read by two workers gives exactly the rest of two epochs."""
    samples = listing(41)
    settings = config(balance=balance, aspect_buckets=((48, 80),), length_buckets=(32,))
    for rank in range(2):
        per_epoch = len(DistributedClipSampler(samples, settings, 2, rank, 2))
        uninterrupted = take(DistributedClipSampler(samples, settings, 2, rank, 2), 2 * per_epoch)
        for stop in (0, 1, 5, per_epoch - 1, per_epoch, per_epoch + 3):
            sampler = DistributedClipSampler(samples, settings, 2, rank, 2)
            head = take(sampler, stop)
            resumed = DistributedClipSampler(samples, settings, 2, rank, 2)
            resumed.load_state_dict(sampler.state_dict())
            tail: list[list[Window]] = []
            while len(head) + len(tail) < len(uninterrupted):
                resumed.state_dict()  # an exhausted epoch rolls over, as ClipLoader does
                rest = interleave(worker_shares(resumed, 2))
                resumed.position += len(rest)
                tail += rest
            assert head + tail == uninterrupted, (rank, stop)


def test_state_of_another_split_is_refused():
    samples = listing(20)
    state = DistributedClipSampler(samples, config(), 2, 0, 2).state_dict()
    with pytest.raises(ValueError, match="another split"):
        DistributedClipSampler(samples, config(), 2, 0, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="another split"):
        DistributedClipSampler(samples[:10], config(), 2, 0, 2).load_state_dict(state)


def test_balancing_by_source_draws_every_source_equally_often():
    samples = [
        SampleInfo(f"{i:03d}", "s.tar", 100, 360, 288, "big" if i < 30 else f"small{i % 5}", None) for i in range(40)
    ]
    plain = Counter(
        samples[w.index].source_id for b in epoch_windows(DistributedClipSampler(samples, config(), 1)) for w in b
    )
    assert plain["big"] == 30
    sampler = DistributedClipSampler(samples, config(balance="source_id"), 1)
    for _ in range(3):
        draws = [w.index for batch in epoch_windows(sampler) for w in batch]
        per_source = Counter(samples[i].source_id for i in draws)
        assert len(draws) == 40 and max(per_source.values()) - min(per_source.values()) <= 1
        big = [i for i in draws if i < 30]
        assert len(big) == len(set(big))  # a group's clips come in a cycle, none twice before all once


def test_balancing_by_identity_groups_clips_of_one_person():
    """Three people (16, 4 and 4 clips over six sources) and a source whose clips have no person:
    each of the four groups gets a quarter of the epoch's draws."""
    person = ["person-a"] * 16 + ["person-b"] * 4 + ["person-c"] * 4
    samples = [SampleInfo(f"{i:03d}", "s.tar", 100, 360, 288, f"src{i % 6}", person[i]) for i in range(24)]
    samples += [SampleInfo(f"n{i}", "s.tar", 100, 360, 288, "no-embedding") for i in range(3)]
    labels = balance_labels(samples, "identity")
    assert labels[:24] == person and set(labels[24:]) == {"source:no-embedding"}
    assert balance_labels(samples, "source_id") == [s.source_id for s in samples]
    sampler = DistributedClipSampler(samples, config(balance="identity"), 3)
    per_label = Counter(labels[w.index] for batch in epoch_windows(sampler) for w in batch)
    assert sorted(per_label.values()) == [6, 7, 7, 7]


def test_collate_refuses_mixed_shapes():
    def sample(frames: int):
        zeros = torch.zeros
        return type(
            "S",
            (),
            dict(
                video=zeros(3, frames, 4, 4),
                reference=zeros(3, 4, 4),
                audio=zeros(frames, 10, 8),
                face_mask=zeros(frames, 4, 4),
                lip_mask=zeros(frames, 4, 4),
                caption="",
                key="k",
            ),
        )()

    batch = collate([sample(2), sample(2)]).to("cpu")
    assert batch.video.shape == (2, 3, 2, 4, 4) and batch.audio.shape == (2, 2, 10, 8) and batch.key == ["k", "k"]
    with pytest.raises(ValueError, match="one shape"):
        collate([sample(2), sample(3)])
