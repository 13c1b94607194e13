"""ShardWriter: size-targeted rotation, publish-by-rename, md5/size bookkeeping, and tars that
WebDataset reads back as the samples that went in."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import media
import numpy as np
import pytest
import soundfile
import webdataset as wds

from core.storage import TMP_SUFFIX, OutputDir
from pipeline.shards import SHARD_FOLDER, ShardRecord, ShardsConfig, ShardWriter
from schemas.manifest import SAMPLE_MEMBERS
from schemas.records import FPS, SAMPLE_RATE, CandidateClip, Status
from stages.chunk import ChunkStage
from stages.encode import EncodeStage
from stages.face import FaceStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage


@pytest.fixture(scope="module")
def clips(run_chain) -> list[CandidateClip]:
    """Real kept clips: the GRID files cut into 1.5 s clips (two per file)."""
    kept = []
    for path in media.GRID:
        out = run_chain(
            path,
            [ProbeStage(), ChunkStage()],
            [
                NormalizeStage(preset="ultrafast"),
                SceneCutStage(min_clip_s=1.0, max_clip_s=1.5),
                FaceStage(),
                EncodeStage(),
            ],
        )
        kept += [o for o in out if isinstance(o, CandidateClip) and o.status is not Status.REJECTED]
    assert len(kept) == 2 * len(media.GRID)
    return kept


def write(folder: Path, clips: list[CandidateClip], first_number: int = 0, **options) -> list[ShardRecord]:
    """All clips through one writer, flushing when full and at the end, as the driver does."""
    published: list[ShardRecord] = []
    writer = ShardWriter(OutputDir(str(folder)), ShardsConfig(**options), first_number, published.append)
    for clip in clips:
        writer.add(clip)
        writer.flush_if_full()
    writer.flush()
    return published


def test_tiny_target_puts_each_sample_in_its_own_shard(tmp_path, clips):
    records = write(tmp_path, clips, first_number=7, target_shard_mb=1e-6)
    assert [r.url for r in records] == [f"{SHARD_FOLDER}/shard-{n:06d}.tar" for n in range(7, 7 + len(clips))]
    assert [r.keys for r in records] == [(clip.key,) for clip in clips]
    assert sorted(p.name for p in (tmp_path / SHARD_FOLDER).iterdir()) == [Path(r.url).name for r in records]


def test_sample_limit_rotates_shards(tmp_path, clips):
    records = write(tmp_path, clips, target_shard_mb=1024.0, max_samples_per_shard=3)
    sizes = [3] * (len(clips) // 3) + ([len(clips) % 3] if len(clips) % 3 else [])
    assert [r.nsamples for r in records] == sizes
    assert [key for r in records for key in r.keys] == [clip.key for clip in clips]


def test_size_target_closes_a_shard_once_it_is_reached(tmp_path, clips):
    target = 2.5 * max(len(clip.video.mp4) for clip in clips)  # bytes
    records = write(tmp_path, clips, target_shard_mb=target / 1e6)
    assert len(records) > 1
    for record in records[:-1]:
        assert record.filesize >= target  # closed only once full...
        with tarfile.open(tmp_path / record.url) as tar:
            last_sample_at = next(m.offset for m in tar.getmembers() if m.name.startswith(record.keys[-1]))
        # ...and not later: before its last sample it was not (the tar stream writes 10 KiB records).
        assert last_sample_at < target + tarfile.RECORDSIZE


def test_a_shard_is_published_by_rename_only_when_complete(tmp_path, clips):
    published: list[ShardRecord] = []
    out = OutputDir(str(tmp_path))
    writer = ShardWriter(out, ShardsConfig(), 0, published.append)
    url = writer.add(clips[0])
    writer.add(clips[1])
    shards = tmp_path / SHARD_FOLDER
    partial = shards / f".shard-000000.tar{TMP_SUFFIX}"
    assert url == writer.current_url == f"{SHARD_FOLDER}/shard-000000.tar"
    assert partial.exists() and not (tmp_path / url).exists()
    writer.flush_if_full()  # far below the 1 GB default: stays open
    assert partial.exists() and not published
    writer.flush()
    assert not partial.exists() and (tmp_path / url).exists()
    assert writer.current_url is None and [r.url for r in published] == [url]
    writer.flush()  # nothing open: nothing published
    assert len(published) == 1
    assert not list(tmp_path.rglob(f"*{TMP_SUFFIX}"))


def test_record_md5_and_size_match_the_file(tmp_path, clips):
    records = write(tmp_path, clips, max_samples_per_shard=3)
    for record in records:
        data = (tmp_path / record.url).read_bytes()
        assert record.md5sum == hashlib.md5(data).hexdigest()
        assert record.filesize == len(data)
        assert record.nsamples == len(record.keys)
        assert record.index_entry() == {
            "url": record.url,
            "md5sum": record.md5sum,
            "nsamples": record.nsamples,
            "filesize": record.filesize,
        }


def test_tar_members_are_adjacent_per_key(tmp_path, clips):
    (record,) = write(tmp_path, clips)
    with tarfile.open(tmp_path / record.url) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == [f"{clip.key}.{suffix}" for clip in clips for suffix in SAMPLE_MEMBERS]
    assert SAMPLE_MEMBERS == ("mp4", "wav", "json", "txt", "face.npz")
    assert all(m.mtime == 0 and m.mode == 0o644 and m.isfile() for m in members)
    assert all("." not in clip.key for clip in clips)


def test_same_samples_give_the_same_bytes(tmp_path, clips):
    first = write(tmp_path / "a", clips)
    second = write(tmp_path / "b", clips)
    assert [r.md5sum for r in first] == [r.md5sum for r in second]


def test_webdataset_reads_back_what_was_written(tmp_path, clips):
    records = write(tmp_path, clips, max_samples_per_shard=5)
    urls = [str(tmp_path / r.url) for r in records]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    by_key = {clip.key: clip for clip in clips}
    assert [s["__key__"] for s in samples] == [clip.key for clip in clips]
    for sample in samples:
        clip = by_key[sample["__key__"]]
        assert set(sample) >= set(SAMPLE_MEMBERS)
        assert sample["mp4"] == clip.video.mp4
        assert sample["txt"] == b""
        meta = json.loads(sample["json"])
        assert (meta["key"], meta["num_frames"], meta["fps"], meta["sample_rate"]) == (
            clip.key,
            clip.num_frames,
            FPS,
            SAMPLE_RATE,
        )
        assert (meta["width"], meta["height"]) == (clip.video.width, clip.video.height)
        assert meta["source"] == clip.source.uri and meta["source_info"]["video_codec"] == "mpeg1video"
        info = soundfile.info(io.BytesIO(sample["wav"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLE_RATE, 1, "PCM_16", "WAV")
        audio, rate = soundfile.read(io.BytesIO(sample["wav"]), dtype="int16")
        assert rate == SAMPLE_RATE and np.array_equal(audio, clip.audio)
        assert len(audio) == clip.num_frames * SAMPLE_RATE // FPS


def test_validate_rejects_a_non_positive_target():
    ShardsConfig().validate()
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="target_shard_mb"):
            ShardsConfig(target_shard_mb=bad).validate()
