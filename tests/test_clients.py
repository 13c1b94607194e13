"""A run's output read by the libraries people already use, as the README shows: webdataset, Ray
Data and wids (random access through index.json, the shards read where they are), with the face
arrays decoded by schemas.manifest.decode_face_member."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
import wids

from pipeline.config import RunConfig
from pipeline.executor import ray_session
from schemas.face import decode_face_npz
from schemas.manifest import decode_face_member

pytestmark = pytest.mark.slow

FACE_ARRAYS = ("landmarks", "boxes", "detected", "mouth_opening", "crop_box")


@pytest.fixture(scope="module")
def kept(demo_shards) -> dict[str, dict]:
    rows = pq.read_table(demo_shards / "manifest.parquet").to_pylist()
    return {row["key"]: row for row in rows if row["status"] == "kept"}


def expected_face(demo_shards, key: str) -> dict[str, np.ndarray]:
    shard = str(next((demo_shards / "shards").glob("*.tar")))
    (sample,) = [s for s in wds.WebDataset(shard, shardshuffle=False) if s["__key__"] == key]
    face = decode_face_npz(sample["face.npz"])
    return {name: getattr(face, name) for name in FACE_ARRAYS}


def assert_face(sample: dict, prefix: str, expected: dict[str, np.ndarray]) -> None:
    assert f"{prefix}.npz" not in sample
    for name in FACE_ARRAYS:
        np.testing.assert_array_equal(np.asarray(sample[f"{prefix}.{name}"]), expected[name])


def test_webdataset(demo_shards, kept):
    shards = sorted(str(p) for p in (demo_shards / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).map(decode_face_member))
    assert sorted(s["__key__"] for s in samples) == sorted(kept)
    for sample in samples:
        assert sample["face.landmarks"].shape == (kept[sample["__key__"]]["num_frames"], 478, 3)


def test_ray_data(demo_shards, kept):
    shards = sorted(str(p) for p in (demo_shards / "shards").glob("*.tar"))
    config = RunConfig()
    config.execution.num_cpus = 1
    with ray_session(None, config):  # a local instance of its own, as a run starts one
        rows = ray.data.read_webdataset(shards, decoder=[True, decode_face_member]).take_all()
    assert sorted(row["__key__"] for row in rows) == sorted(kept)
    key = rows[0]["__key__"]
    assert_face(rows[0], "face", expected_face(demo_shards, key))
    assert json.loads(json.dumps(rows[0]["json"]))["key"] == key


def test_wids_reads_the_shards_in_place(demo_shards, kept, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "cache"))  # where wids would copy them
    dataset = wids.ShardListDataset(str(demo_shards / "index.json"), localname=lambda url: url)
    assert len(dataset) == len(kept)
    last = decode_face_member(dataset[len(dataset) - 1])  # random access: straight to the last sample
    assert last["__key__"] in kept and last[".json"]["key"] == last["__key__"]
    assert_face(last, ".face", expected_face(demo_shards, last["__key__"]))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing copied
