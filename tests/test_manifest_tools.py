"""Manifest queries (`inspect --where/--by/--hist/--columns`) and `talkcurate subset` (copied
shards and sample lists) on the demo media curated once (`demo_shards`: four GRID clips and the
portrait kept, the clip without audio rejected), read back by `verify` and the training dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from core.storage import OutputDir
from pipeline.cli import main
from pipeline.query import select
from pipeline.verify import verify, verify_sample_list
from schemas.manifest import SCHEMA_VERSION
from train.data import ClipDataset, DataConfig, Window, list_samples

field = pc.field
TALKCURATE = str(Path(sys.executable).with_name("talkcurate"))


def manifest(folder: Path) -> pa.Table:
    return pq.read_table(folder / "manifest.parquet")


def cli_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def cli_error(capsys, *argv: str) -> str:
    """stderr of a command that must refuse its input with exit code 2."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"talkcurate {argv[0]}: ") and "Traceback" not in err
    return err


def tar_members(folder: Path) -> dict[str, dict[str, bytes]]:
    """key -> suffix -> bytes of every sample in a folder's shards, read sequentially."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((folder / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, suffix = info.name.partition(".")
                samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples


def read_window(shards: str, key: str):
    """A small window of one sample through the training dataset."""
    samples = list_samples(shards)
    data = ClipDataset(DataConfig(shards=shards, resolution=(32, 40), num_frames=4), samples)
    index = [s.key for s in samples].index(key)
    return data[Window(index, start=8, num_frames=4, stride=2, reference=50, height=32, width=40)]


def assert_same_sample(a, b) -> None:
    assert a.key == b.key and a.caption == b.caption and a.caption
    for name in ("video", "reference", "audio", "face_mask", "lip_mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# -- queries -------------------------------------------------------------------------------------

# Each predicate with the filter written directly in pyarrow (SQL's nulls: a comparison with a null
# selects nothing, `not in` included). Every one selects some of the demo's six rows, not all.
PREDICATES = {
    "sync_confidence > 0.5 and language = 'en'": (field("sync_confidence") > 0.5) & (field("language") == "en"),
    "status = 'rejected' or width < 400": (field("status") == "rejected") | (field("width") < 400),
    "not (width > 400) and status = 'kept'": ~(field("width") > 400) & (field("status") == "kept"),
    "reason is null": field("reason").is_null(),
    "reason IS NOT NULL Or num_faces != 1": field("reason").is_valid() | (field("num_faces") != 1),
    "source like '%grid_b%'": pc.match_like(field("source"), "%grid_b%"),
    "language not in ('de', 'fr')": field("language").is_valid() & ~field("language").isin(["de", "fr"]),
    "reason in ('no_audio', 'no_face')": field("reason").isin(["no_audio", "no_face"]),
    "source >= 'grid_c' and source < 'm'": (field("source") >= "grid_c") & (field("source") < "m"),
    "(width = 720 or width = 360) and not source like '%sbwe%'": ((field("width") == 720) | (field("width") == 360))
    & ~pc.match_like(field("source"), "%sbwe%"),
    '"num_faces" = 1 AND NOT duration_s > 5.5e0': (field("num_faces") == 1) & ~(field("duration_s") > 5.5),
    "sync_offset_ms > -1000 and 0 < duration_s": (field("sync_offset_ms") > -1000) & (field("duration_s") > 0),
}


@pytest.mark.parametrize("where", PREDICATES)
def test_where_selects_exactly_the_rows_of_a_direct_pyarrow_filter(demo_shards, capsys, where):
    table = manifest(demo_shards)
    expected = table.filter(PREDICATES[where])["key"].to_pylist()
    assert 0 < len(expected) < table.num_rows
    assert select(table, where)["key"].to_pylist() == expected
    report = cli_json(capsys, "inspect", str(demo_shards), "--where", where, "--columns", "key")
    assert [row["key"] for row in report["rows"]] == expected
    assert report["selected_rows"] == report["candidate_clips"] == len(expected)


def test_inspect_groups_by_columns(demo_shards, capsys):
    rows = manifest(demo_shards).to_pylist()
    report = cli_json(capsys, "inspect", str(demo_shards), "--by", "status,reason")
    groups = {(g["status"], g["reason"]): g for g in report["groups"]["groups"]}
    assert report["groups"]["by"] == ["status", "reason"]
    assert {k: g["rows"] for k, g in groups.items()} == Counter((r["status"], r["reason"]) for r in rows)
    assert groups[("kept", None)]["kept"] == 5 and groups[("kept", None)]["kept_s"] == pytest.approx(22.0)
    assert groups[("rejected", "no_audio")] == {
        "status": "rejected",
        "reason": "no_audio",
        "rows": 1,
        "kept": 0,
        "rejected": 1,
        "kept_s": 0.0,
    }

    by_shard = cli_json(capsys, "inspect", str(demo_shards), "--where", "width < 400", "--by", "shard")["groups"][
        "groups"
    ]
    assert by_shard == [
        {"shard": "shards/shard-000000.tar", "rows": 4, "kept": 4, "rejected": 0, "kept_s": pytest.approx(12.0)}
    ]
    assert main(["inspect", str(demo_shards), "--by", "language"]) == 0
    text = capsys.readouterr().out
    assert any(line.split()[:4] == ["en", "5", "5", "0"] for line in text.splitlines())


def test_inspect_histograms_match_numpy(demo_shards, capsys):
    table = manifest(demo_shards)
    report = cli_json(
        capsys, "inspect", str(demo_shards), "--hist", "sync_confidence", "--hist", "duration_s", "--bins", "4"
    )
    for hist in report["histograms"]:
        values = np.array(table[hist["column"]].drop_null().to_pylist(), float)
        counts, edges = np.histogram(values, bins=4)
        assert [b["count"] for b in hist["bins"]] == counts.tolist()
        assert [b["low"] for b in hist["bins"]] + [hist["bins"][-1]["high"]] == pytest.approx(edges.tolist())
        assert (hist["count"], hist["missing"]) == (len(values), table.num_rows - len(values))
        assert (hist["min"], hist["max"]) == pytest.approx((values.min(), values.max()))
    assert report["histograms"][0]["count"] == 5  # the rejected clip has no sync score

    assert (
        main(["inspect", str(demo_shards), "--where", "status = 'kept'", "--hist", "sync_confidence", "--bins", "3"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sync_confidence: 5 values, 0 missing"))
    bars = [line.count("#") for line in lines[start + 1 : start + 4]]
    assert max(bars) == 40 and sum(n > 0 for n in bars) >= 2


def test_queries_work_on_columns_other_tools_add(demo_shards, tmp_path, capsys):
    """The split name and duplicate mark that `talkcurate split`/`dedup` fill in are columns like any."""
    table = manifest(demo_shards)
    keys = table["key"].to_pylist()
    split = ["val" if i % 2 else "train" for i in range(table.num_rows)]
    duplicate_of = [keys[0] if i == 1 else None for i in range(table.num_rows)]
    extended = table.set_column(table.schema.get_field_index("split"), "split", pa.array(split))
    extended = extended.set_column(
        extended.schema.get_field_index("duplicate_of"), "duplicate_of", pa.array(duplicate_of, pa.string())
    )
    pq.write_table(extended, tmp_path / "manifest.parquet")
    shutil.copy(demo_shards / "index.json", tmp_path / "index.json")

    expected = [k for k, s, d in zip(keys, split, duplicate_of) if s == "val" and d is None]
    report = cli_json(
        capsys, "inspect", str(tmp_path), "--where", "split = 'val' and duplicate_of is null", "--by", "split", "--rows"
    )
    assert [row["key"] for row in report["rows"]] == expected and len(expected) == 2
    assert set(report["rows"][0]) == {"key", "status", "reason", "shard", "duration_s", "split", "duplicate_of"}
    assert [(g["split"], g["rows"]) for g in report["groups"]["groups"]] == [("val", 2)]
    assert select(extended, "duplicate_of is not null")["key"].to_pylist() == [keys[1]]


# -- bad input ------------------------------------------------------------------------------------

BAD_PREDICATES = {
    "sync_confidnce > 0.5": [
        "no column 'sync_confidnce'",
        "did you mean 'sync_confidence'",
        "the columns are: key, source,",
        "language",
    ],
    "sync_confidence >": ["expected a column or a value, found the end"],
    "(width < 400": ["expected ')'"],
    "width < 400 width": ["expected 'and', 'or' or the end, found 'width'"],
    "width = 'wide'": ["cannot compare 'width' (number column) with 'wide' (string)"],
    "status = kept": ["no column 'kept'", "single quotes: 'kept'"],
    "language = 'en": ["unterminated string"],
    "reason = null": ["use 'is null'"],
    "language": ["'language' is a string column"],
    "source like 3": ["expected a 'quoted' pattern"],
    "": ["empty predicate"],
}


@pytest.mark.parametrize("where", BAD_PREDICATES)
def test_bad_predicates_are_clear_errors(demo_shards, tmp_path, capsys, where):
    for command in (
        ["inspect", str(demo_shards)],
        ["subset", str(demo_shards), "--list", str(tmp_path / "never.json")],
    ):
        err = cli_error(capsys, *command, "--where", where)
        for fragment in BAD_PREDICATES[where]:
            assert fragment in err
        assert f"\n  {where}\n" in err  # the predicate with a caret under the problem
    assert list(tmp_path.iterdir()) == []


def test_python_in_a_predicate_is_never_run(demo_shards, tmp_path, monkeypatch, capsys):
    where = "__import__('os').system('touch pwned')"
    done = subprocess.run(
        [TALKCURATE, "inspect", str(demo_shards), "--where", where],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        done.returncode == 2
        and done.stderr.startswith("talkcurate inspect: unexpected character '.'")
        and "Traceback" not in done.stderr
    )
    monkeypatch.chdir(tmp_path)
    refusals = {
        "open('pwned', 'w')": "no column 'open'",
        "status = 'kept' or exec('x')": "no column 'exec'",
        "(lambda: 1)()": "unexpected character ':'",
        "1; import os": "unexpected character ';'",
    }
    for where, message in refusals.items():
        assert message in cli_error(capsys, "inspect", str(demo_shards), "--where", where)
    assert list(tmp_path.iterdir()) == []


# -- inspect --sql --------------------------------------------------------------------------------


def test_sql_gives_what_pyarrow_computes_and_joins_the_users_tables(demo_shards, tmp_path, capsys):
    table = manifest(demo_shards)
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("key,rating\n" + "".join(f"{k},{i % 3}\n" for i, k in enumerate(table["key"].to_pylist())))
    query = (
        "select key, round(duration_s * 1000) as ms, upper(language) as lang, r.rating from manifest "
        "join ratings r using (key) where status = 'kept' and sync_confidence between 0.3 and 2 order by key"
    )
    assert main(["inspect", str(demo_shards), "--sql", query, "--table", f"ratings={ratings}", "--json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rating = {k: i % 3 for i, k in enumerate(table["key"].to_pylist())}
    kept = table.filter(
        (field("status") == "kept") & (field("sync_confidence") >= 0.3) & (field("sync_confidence") <= 2)
    ).sort_by("key")
    expected = [
        {"key": k, "ms": round(r["duration_s"] * 1000), "lang": r["language"].upper(), "rating": rating[k]}
        for k, r in ((r["key"], r) for r in kept.to_pylist())
    ]
    assert got == expected
    assert len(got) >= 4
    # As a table for people: a header and a row per result.
    assert main(["inspect", str(demo_shards), "--sql", "select count(*) as n from manifest"]) == 0
    assert capsys.readouterr().out.split() == ["n", str(table.num_rows)]


def test_sql_cannot_touch_files_and_errors_are_clear(demo_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    refusals = {
        "copy manifest to 'out.csv'": "file system operations are disabled",
        "select * from read_csv('/etc/passwd')": "file system operations are disabled",
        "attach 'other.db'": "file system operations are disabled",
        "install httpfs": "Permission Error",
        "set enable_external_access = true": "Cannot change configuration",
        "select * from os": "Table with name os does not exist",  # Python's variables are not tables
        "select 1; copy manifest to 'out.parquet'": "file system operations are disabled",
        "select nonsense from manifest": "nonsense",
        "": "the query is empty",
    }
    for query, message in refusals.items():
        assert message in cli_error(capsys, "inspect", str(demo_shards), "--sql", query), query
    assert "cannot read" in cli_error(
        capsys, "inspect", str(demo_shards), "--sql", "select 1", "--table", "mine=missing.csv"
    )
    assert "without --where" in cli_error(
        capsys, "inspect", str(demo_shards), "--sql", "select 1", "--where", "status = 'kept'"
    )
    assert list(tmp_path.iterdir()) == []


def test_bad_grouping_and_histogram_columns_are_clear_errors(demo_shards, capsys):
    assert "--by: no column 'speaker'" in cli_error(capsys, "inspect", str(demo_shards), "--by", "speaker")
    assert "--by: 'identity_embedding' is a list<element: float> column" in cli_error(
        capsys, "inspect", str(demo_shards), "--by", "identity_embedding"
    )
    err = cli_error(capsys, "inspect", str(demo_shards), "--hist", "language")
    assert "--hist: 'language' is a string column; use one of:" in err and "sync_confidence" in err
    assert "--bins must be at least 1" in cli_error(
        capsys, "inspect", str(demo_shards), "--hist", "duration_s", "--bins", "0"
    )
    assert "--columns: no column 'nope'" in cli_error(capsys, "inspect", str(demo_shards), "--columns", "key,nope")
    assert "has no manifest.parquet" in cli_error(capsys, "inspect", str(demo_shards / "shards"))


# -- subset: copied shards --------------------------------------------------------------------------

SUBSET_WHERE = "width < 400 or status = 'rejected'"


@pytest.fixture(scope="module")
def copied(demo_shards, tmp_path_factory) -> Path:
    """The GRID clips and the rejected row, copied into shards of at least 1 MB (two 0.6 MB clips)."""
    out = tmp_path_factory.mktemp("subset") / "grid"
    assert main(["subset", str(demo_shards), "--where", SUBSET_WHERE, "--out", str(out), "--target-shard-mb", "1"]) == 0
    return out


def test_subset_passes_verify_with_the_selected_rows_and_samples(demo_shards, copied):
    assert verify(OutputDir(str(copied))) == (2, [])
    source, subset = manifest(demo_shards), manifest(copied)
    selected = source.filter((field("width") < 400) | (field("status") == "rejected"))
    assert subset["key"].to_pylist() == selected["key"].to_pylist() and subset.num_rows == 5
    assert subset.drop_columns(["shard"]).equals(selected.drop_columns(["shard"]))  # every other column as it was
    assert subset.schema.metadata == source.schema.metadata
    index = json.loads((copied / "index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["talkcurate_subset"] == {
        "source": str(demo_shards),
        "where": SUBSET_WHERE,
    }
    assert [e["nsamples"] for e in index["shardlist"]] == [2, 2] and index["shardlist"][0]["filesize"] >= 1e6
    assert {r["shard"] for r in subset.to_pylist() if r["status"] == "kept"} == {e["url"] for e in index["shardlist"]}
    assert [r["shard"] for r in subset.to_pylist() if r["status"] == "rejected"] == [None]
    copies, originals = tar_members(copied), tar_members(demo_shards)
    assert sorted(copies) == sorted(selected.filter(field("status") == "kept")["key"].to_pylist())
    assert all(copies[key] == originals[key] for key in copies)  # member for member, byte for byte


def test_training_reads_a_copied_subset(demo_shards, copied):
    samples = list_samples(str(copied))
    assert sorted(s.key for s in samples) == sorted(tar_members(copied))
    assert {(s.width, s.height, s.num_frames) for s in samples} == {(360, 288, 75)}
    assert_same_sample(read_window(str(copied), samples[-1].key), read_window(str(demo_shards), samples[-1].key))


def test_subset_refuses_an_existing_output_and_an_empty_selection(demo_shards, copied, capsys):
    assert "already holds" in cli_error(
        capsys, "subset", str(demo_shards), "--where", "width < 400", "--out", str(copied)
    )
    assert "is the source folder" in cli_error(capsys, "subset", str(demo_shards), "--out", str(demo_shards))
    err = cli_error(
        capsys, "subset", str(demo_shards), "--where", "width > 5000", "--out", str(copied.parent / "empty")
    )
    assert "selects no kept clips" in err and not (copied.parent / "empty" / "manifest.parquet").exists()


def test_a_subset_of_a_subset(copied, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["subset", str(copied), "--where", "source like '%lwbsza%'", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: 1 samples in 1 shards (0.6 MB), 1 manifest rows\n"
    assert verify(OutputDir(str(out))) == (1, [])
    report = cli_json(capsys, "inspect", str(out))
    assert (report["kept"], report["rejected"], [s["nsamples"] for s in report["shards"]]) == (1, 0, [1])


# -- subset: sample lists ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_list(demo_shards, tmp_path_factory) -> Path:
    """Two GRID clips and the portrait, named in place."""
    path = tmp_path_factory.mktemp("lists") / "some.json"
    assert (
        main(["subset", str(demo_shards), "--where", "source like '%grid_b%' or duration_s > 5", "--list", str(path)])
        == 0
    )
    return path


def test_a_sample_list_names_the_selected_kept_clips_and_passes_verify(demo_shards, sample_list, capsys):
    listing = json.loads(sample_list.read_text())
    table = manifest(demo_shards)
    expected = table.filter(pc.match_like(field("source"), "%grid_b%") | (field("duration_s") > 5))
    assert listing["__kind__"] == "talkcurate-sample-list-v1" and listing["source"] == str(demo_shards)
    assert sorted((s["key"], s["shard"]) for s in listing["samples"]) == sorted(
        zip(expected["key"].to_pylist(), expected["shard"].to_pylist())
    )
    assert len(listing["samples"]) == 3
    assert verify_sample_list(str(sample_list)) == (1, [])
    assert main(["verify", str(sample_list)]) == 0 and "1 shards checked, 0 problems" in capsys.readouterr().out


def test_training_reads_a_sample_list_in_place(demo_shards, sample_list):
    samples = list_samples(str(sample_list))
    keys = [s["key"] for s in json.loads(sample_list.read_text())["samples"]]
    assert [s.key for s in samples] == sorted(keys)
    full = {s.key: s for s in list_samples(str(demo_shards))}
    for sample in samples:
        other = full[sample.key]
        assert sample == other and sample.identity_id is not None
    portrait = next(s.key for s in samples if s.num_frames == 250)
    assert_same_sample(read_window(str(sample_list), portrait), read_window(str(demo_shards), portrait))


def test_a_relative_source_is_taken_from_the_lists_folder(demo_shards, sample_list, tmp_path):
    listing = json.loads(sample_list.read_text())
    listing["source"] = os.path.relpath(demo_shards, tmp_path)
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(listing))
    assert [s.key for s in list_samples(str(moved))] == [s.key for s in list_samples(str(sample_list))]


def test_stale_and_foreign_lists_are_clear_errors(sample_list, tmp_path, capsys):
    listing = json.loads(sample_list.read_text())
    listing["samples"][0]["key"] = "0000000000000000_00000000"
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(listing))
    with pytest.raises(ValueError, match="1 listed samples are not kept clips .* write the list again"):
        list_samples(str(stale))
    checked, problems = verify_sample_list(str(stale))
    assert problems == [
        f"{stale}: 0000000000000000_00000000 is not a kept clip of {listing['source']} in shards/shard-000000.tar"
    ]
    assert main(["verify", str(stale)]) == 1
    capsys.readouterr()
    foreign = tmp_path / "other.json"
    foreign.write_text('{"shardlist": []}')
    with pytest.raises(ValueError, match="other.json is not a talkcurate sample list"):
        list_samples(str(foreign))
    assert "is not a talkcurate sample list" in cli_error(capsys, "verify", str(foreign))
    assert "ends in .json" in cli_error(capsys, "subset", str(sample_list.parent), "--list", str(tmp_path / "list.txt"))


@pytest.mark.parametrize("command", [["inspect"], ["verify"], ["dedup"], ["split"], ["browse", "--out", "PAGE"]])
def test_reading_commands_leave_a_missing_folder_missing(tmp_path, capsys, command):
    missing = tmp_path / "no run here"
    argv = [command[0], str(missing), *(str(tmp_path / a) if a == "PAGE" else a for a in command[1:])]
    assert main(argv) == 2
    assert "no manifest.parquet" in capsys.readouterr().err
    assert not missing.exists()


def test_output_into_a_closed_pipe_ends_quietly(demo_shards):
    """`talkcurate inspect --json | head -1`: the reader goes away before the output is written."""
    process = subprocess.Popen(
        [TALKCURATE, "inspect", str(demo_shards), "--json", "--rows"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and not err.strip(), err.decode()


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    printed = capsys.readouterr().out.strip()
    assert (
        exited.value.code == 0 and printed == f"talkcurate {version('talkcurate')} (manifest schema {SCHEMA_VERSION})"
    )
