"""A run's output read by the libraries people already use, as the README shows: webdataset, Ray
Data and wids (random access through index.json, the shards read where they are), with the face
arrays decoded by schemas.manifest.decode_face_member; Hugging Face datasets through the output's
dataset card; the manifest in pandas, polars and DuckDB."""

from __future__ import annotations

import importlib.util
import json

import datasets
import duckdb
import numpy as np
import pandas
import polars
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
import wids

from pipeline.cli import main
from pipeline.config import RunConfig
from pipeline.dataset_card import SAMPLE_TYPE
from pipeline.executor import ray_session
from schemas.face import decode_face_npz
from schemas.manifest import SAMPLE_METADATA_TYPE, decode_face_member

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


def test_hugging_face_datasets_reads_the_dataset_card(demo_shards, kept, tmp_path):
    """`load_dataset(DIR)` takes its types from DIR/README.md: the videos and audio as bytes (so no
    torchcodec, which is not installed), KEY.json with the types of SAMPLE_METADATA_TYPE whatever
    the first samples hold, the face arrays and Whisper features as nested lists."""
    assert importlib.util.find_spec("torchcodec") is None
    cache = str(tmp_path / "cache")  # datasets reads HF_HOME once, at import
    clips = datasets.load_dataset(str(demo_shards), split="train", cache_dir=cache)
    assert clips.features.arrow_schema.remove_metadata() == pa.schema(list(SAMPLE_TYPE))
    assert sorted(clips["__key__"]) == sorted(kept)
    tars = {
        s["__key__"]: s
        for p in (demo_shards / "shards").glob("*.tar")
        for s in wds.WebDataset(str(p), shardshuffle=False)
    }
    for clip in clips:
        key, meta = clip["__key__"], clip["json"]
        assert clip["mp4"] == tars[key]["mp4"] and clip["wav"] == tars[key]["wav"]
        assert meta["key"] == key and meta["sync"]["offset_ms"] == kept[key]["sync_offset_ms"]
        assert meta["transcript"]["words"] == json.loads(tars[key]["json"])["transcript"]["words"]
        face = expected_face(demo_shards, key)
        assert np.asarray(clip["face.npz"]["landmarks"], np.float16).shape == face["landmarks"].shape
        np.testing.assert_array_equal(np.asarray(clip["face.npz"]["mouth_opening"], np.float32), face["mouth_opening"])
        assert np.asarray(clip["whisper.npy"]).ndim == 2  # the demo run stores Whisper features
    streamed = next(iter(datasets.load_dataset(str(demo_shards), split="train", streaming=True, cache_dir=cache)))
    assert streamed["__key__"] in kept and streamed["json"]["key"] == streamed["__key__"]

    # Another output folder of the same name with other shards loads its own samples, not the
    # first's from datasets' cache (which knows a local folder by its name and the card's config).
    other = tmp_path / "elsewhere" / demo_shards.name
    assert main(["subset", str(demo_shards), "--where", "source like 'grid%'", "--out", str(other)]) == 0
    grid = sorted(key for key, row in kept.items() if row["source"].startswith("grid"))
    assert 0 < len(grid) < len(kept)
    assert sorted(datasets.load_dataset(str(other), split="train", cache_dir=cache)["__key__"]) == grid


def test_every_sample_json_has_exactly_the_typed_fields(demo_shards):
    """KEY.json carries every field of SAMPLE_METADATA_TYPE, null or not, and nothing else: the
    dataset card's types cover it, and a new field must be typed there."""

    def check(value, data_type: pa.DataType, where: str) -> None:
        if value is None:
            return
        if pa.types.is_struct(data_type):
            assert set(value) == {f.name for f in data_type}, where
            for f in data_type:
                check(value[f.name], f.type, f"{where}.{f.name}")
        elif pa.types.is_list(data_type):
            for item in value:
                check(item, data_type.value_type, f"{where}[]")

    samples = [
        s for p in (demo_shards / "shards").glob("*.tar") for s in wds.WebDataset(str(p), shardshuffle=False).decode()
    ]
    assert samples
    for sample in samples:
        check(sample["json"], SAMPLE_METADATA_TYPE, sample["__key__"])
    pa.array([s["json"] for s in samples], SAMPLE_METADATA_TYPE)  # and each value has its field's type


def test_the_manifest_in_pandas_polars_and_duckdb(demo_shards, kept):
    """manifest.parquet as analysts open it: the same kept rows, identity ids and sources (relative
    names, no path of the machine that ran the job) in each."""
    path = str(demo_shards / "manifest.parquet")
    expected = sorted((key, row["source"], row["identity_id"]) for key, row in kept.items())
    frame = pandas.read_parquet(path)
    in_pandas = frame[frame.status == "kept"][["key", "source", "identity_id"]]
    assert sorted(map(tuple, in_pandas.itertuples(index=False))) == expected
    in_polars = polars.read_parquet(path).filter(polars.col("status") == "kept").select("key", "source", "identity_id")
    assert sorted(in_polars.iter_rows()) == expected
    query = f"select key, source, identity_id from read_parquet('{path}') where status = 'kept' order by key"
    assert duckdb.sql(query).fetchall() == expected
    assert not any(source.startswith("/") for _, source, _ in expected)
