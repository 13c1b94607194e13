"""`talkcurate dedup` and `talkcurate split` on a real run (`talkcurate run` in a subprocess, real
local Ray), read back from the manifest it rewrites.

The run's inputs: three GRID speakers (three different people), two re-uploads of the first (one
re-encoded and cropped, one also cut 0.6 s later, with Opus audio), and two 5 s excerpts of the
portrait as two files (one person, other words, the same room and clothes: other takes of one
speaker). The excerpts' lip-sync confidence is low because they are short (0.14-0.20), so the run
accepts 0.1: what is tested here is what happens after curation.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import media
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.split import TRAIN, VAL, assign
from schemas.records import source_id_for
from train.data import list_samples

pytestmark = pytest.mark.slow

TALKCURATE = str(Path(sys.executable).with_name("talkcurate"))
SETTINGS = ["sync.min_confidence_embedded=0.1", "execution.progress=false"]
LATER = media.GRID[2]  # the input an extended run adds


def curate(inputs: list[Path], out: Path) -> subprocess.CompletedProcess:
    settings = [arg for setting in SETTINGS for arg in ("--set", setting)]
    return subprocess.run(
        [TALKCURATE, "run", *map(str, inputs), "--out", str(out), *settings],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )


def manifest(out: Path) -> dict[str, dict]:
    return {row["key"]: row for row in pq.read_table(out / "manifest.parquet").to_pylist()}


def kept(rows: dict[str, dict]) -> dict[str, dict]:
    return {key: row for key, row in rows.items() if row["status"] == "kept"}


def command(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@dataclass(frozen=True)
class Run:
    out: Path
    inputs: list[Path]
    copies: list[Path]  # re-uploads of GRID[0]: re-encoded and cropped; also cut elsewhere
    excerpts: list[Path]  # two files of the portrait


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    folder = tmp_path_factory.mktemp("dedup_inputs")
    copies = [folder / "bbaf2n reupload.mp4", folder / "bbaf2n cut.mkv"]
    media.reencoded_crop(media.GRID[0], copies[0])
    media.cut_elsewhere(media.GRID[0], copies[1], 15)
    excerpts = [folder / "portrait a.mp4", folder / "portrait b.mp4"]
    for i, path in enumerate(excerpts):
        media.excerpt(media.PORTRAIT, path, 5.0 * i, 5.0, 540)
    inputs = [media.GRID[0], *copies, media.GRID[1], media.GRID[3], *excerpts]
    out = tmp_path_factory.mktemp("dedup_run") / "out"
    curate(inputs, out)
    return Run(out, inputs, copies, excerpts)


@pytest.fixture(scope="module")
def deduped(run, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the run after `talkcurate dedup`, and what it printed."""
    out = tmp_path_factory.mktemp("deduped") / "out"
    shutil.copytree(run.out, out)
    done = subprocess.run([TALKCURATE, "dedup", str(out)], check=True, capture_output=True, text=True, timeout=120)
    return out, done.stdout


def rows_of(rows: dict[str, dict], source: Path) -> list[dict]:
    return [row for row in rows.values() if row["source_id"] == source_id_for(str(source))]


def test_every_input_has_a_kept_clip_with_fingerprints(run):
    rows = kept(manifest(run.out))
    assert {row["source_id"] for row in rows.values()} == {source_id_for(str(p)) for p in run.inputs}
    for row in rows.values():
        assert len(row["video_phash"]) == 8 and len(row["video_motion"]) == row["num_frames"]
        assert len(row["audio_fingerprint"]) == 4 * (row["num_frames"] - 1)
        assert row["duplicate_of"] is None and row["split"] is None  # nothing decided before the commands run


def test_dedup_marks_the_reuploads_and_nothing_else(run, deduped):
    out, printed = deduped
    rows = kept(manifest(out))
    (original,) = rows_of(rows, media.GRID[0])
    copies = [row for path in run.copies for row in rows_of(rows, path)]
    assert [copy["duplicate_of"] for copy in copies] == [original["key"]] * 2  # the original has the most pixels
    assert {key for key, row in rows.items() if row["duplicate_of"] is not None} == {copy["key"] for copy in copies}
    # both rules found the copies (the cut one at its offset); the portrait's two takes (the same
    # person, room and clothes) matched neither
    assert "audio: bit error rate" in printed and "video: looks" in printed
    assert re.search(r"at offset -?15 frames", printed)
    assert "1 groups, 2 clips marked duplicate_of" in printed
    assert all(rows_of(rows, path)[0]["duplicate_of"] is None for path in run.excerpts)


def test_dedup_spread_over_ray_decides_the_same(run, deduped, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run.out, out)
    # --address without an address: a local Ray instance of its own, as `talkcurate run` starts
    done = subprocess.run(
        [TALKCURATE, "dedup", str(out), "--address"], check=True, capture_output=True, text=True, timeout=180
    )
    assert done.stdout == deduped[1]
    spread, alone = manifest(out), manifest(deduped[0])
    assert {key: row["duplicate_of"] for key, row in spread.items()} == {
        key: row["duplicate_of"] for key, row in alone.items()
    }


def test_dedup_keeps_its_decisions_on_rejected_rows_null(deduped):
    rows = manifest(deduped[0])
    assert all(row["duplicate_of"] is None for row in rows.values() if row["status"] == "rejected")


def test_the_run_finds_its_people(run, capsys):
    """By the default identity model: GRID[0] and its two re-uploads are one person, the portrait's
    two takes (other words, dedup matches neither) another, GRID[1] and GRID[3] one each."""
    rows = manifest(run.out)
    person = {Path(row["source"]).name: row["identity_id"] for row in kept(rows).values()}
    assert all(row["identity_id"] is None for row in rows.values() if row["status"] == "rejected")
    groups = [{name for name, p in person.items() if p == one} for one in set(person.values())]
    assert sorted(map(sorted, groups)) == sorted(
        [
            sorted([media.GRID[0].name, *(path.name for path in run.copies)]),
            [media.GRID[1].name],
            [media.GRID[3].name],
            sorted(path.name for path in run.excerpts),
        ]
    )
    code, printed, _ = command(capsys, "inspect", str(run.out), "--by", "identity_id")
    assert code == 0 and all(p in printed for p in person.values())


def test_split_keeps_people_sources_and_duplicates_on_one_side(run, deduped, tmp_path, capsys):
    """By the default identity model: the portrait's two takes (the same person; dedup matched neither)
    are one cluster, the three GRID speakers three, the re-uploads join their original."""
    out = tmp_path / "out"
    shutil.copytree(deduped[0], out)
    code, printed, _ = command(capsys, "split", str(out), "--val", "0.5")
    assert code == 0
    assert "split by identity: the clips of each of 4 people (identity_id) are kept on one side" in printed
    rows = manifest(out)
    takes = {row["split"] for path in run.excerpts for row in rows_of(kept(rows), path)}
    assert len(takes) == 1
    sides: dict[str, set[str]] = {}
    for row in kept(rows).values():
        sides.setdefault(row["source_id"], set()).add(row["split"])
    assert all(len(side) == 1 and side <= {TRAIN, VAL} for side in sides.values())
    for row in kept(rows).values():
        if row["duplicate_of"]:
            assert row["split"] == rows[row["duplicate_of"]]["split"]  # a re-upload never leaks across
    assert all(row["split"] is None for row in rows.values() if row["status"] == "rejected")
    assert (
        f"4 clusters, {len(kept(rows))} kept clips" in printed
    )  # GRID[0] with its copies, GRID[1], GRID[3], the portrait
    # the same manifest gives the same split
    assert command(capsys, "split", str(out), "--val", "0.5")[0] == 0
    assert {k: r["split"] for k, r in manifest(out).items()} == {k: r["split"] for k, r in rows.items()}


def test_training_reads_the_train_side_without_duplicates(deduped, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(deduped[0], out)
    assert command(capsys, "split", str(out))[0] == 0  # the default --val 0.05
    listing = tmp_path / "train.json"
    code, _, err = command(
        capsys, "subset", str(out), "--where", "split = 'train' and duplicate_of is null", "--list", str(listing)
    )
    assert code == 0, err
    rows = kept(manifest(out))
    expected = {key for key, row in rows.items() if row["split"] == TRAIN and row["duplicate_of"] is None}
    assert {sample.key for sample in list_samples(str(listing))} == expected
    assert not expected & {key for key, row in rows.items() if row["duplicate_of"] is not None}


def people_manifest(run_out: Path, sources: int, people: int, seed: int = 0) -> pa.Table:
    """The run's kept rows copied into `sources` sources of `people` people (source s shows person
    s % people): ArcFace-like embeddings, one direction per person plus noise (cosine about 0.8
    within a person, about 0 between people); the last source's rows have no embedding."""
    table = pq.read_table(run_out / "manifest.parquet")
    template = [row for row in table.to_pylist() if row["status"] == "kept"][:2]
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((people, 512))
    rows = []
    for s in range(sources):
        for i, row in enumerate(template):
            embedding = directions[s % people] / np.sqrt(512) + rng.standard_normal(512) * 0.5 / np.sqrt(512)
            rows.append(
                {
                    **row,
                    "key": f"{s:04x}{i:012x}_00000000",
                    "source": f"source {s}",
                    "source_id": f"{s:016x}",
                    "identity_backend": "insightface",
                    "identity_id": None,  # split finds these people
                    "identity_embedding": None
                    if s == sources - 1
                    else (embedding / np.linalg.norm(embedding)).tolist(),
                }
            )
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_split_by_identity_keeps_each_person_on_one_side(run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    table = people_manifest(run.out, sources=48, people=8)
    pq.write_table(table, out / "manifest.parquet")
    code, printed, _ = command(capsys, "split", str(out), "--val", "0.3")
    assert code == 0 and "split by identity: the clips of each of 8 people" in printed
    assert "2 kept clips have no embedding" in printed
    assert "9 clusters" in printed  # 8 people, and the source without embeddings on its own
    rows = manifest(out)
    split = {key: row["split"] for key, row in rows.items()}
    assert all(len(side) == 1 for side in person_sides(rows, split).values())
    assert {side for (side,) in person_sides(rows, split).values()} == {TRAIN, VAL}
    # no clip in train is the same person (cosine >= 0.5) as a clip in val
    embeddings = {
        side: np.array(
            [r["identity_embedding"] for r in rows.values() if r["split"] == side and r["identity_embedding"]]
        )
        for side in (TRAIN, VAL)
    }
    assert (embeddings[TRAIN] @ embeddings[VAL].T).max() < 0.5
    # by source alone, the same rows would put some person on both sides: the identity rule is what keeps them together
    embedding = table.schema.get_field_index("identity_embedding")
    without = table.set_column(
        embedding, table.schema.field(embedding), pa.nulls(len(table), table.schema.field(embedding).type)
    )
    by_source, _ = assign(without, 0.3)
    assert any(len(side) > 1 for side in person_sides(rows, by_source).values())


def person_sides(rows: dict[str, dict], split: dict[str, str]) -> dict[int, set[str]]:
    """Person (people_manifest's) -> the sides their clips are on; the source without embeddings left out."""
    sides: dict[int, set[str]] = {}
    for key, row in rows.items():
        if row["identity_embedding"] is not None:
            sides.setdefault(int(row["source_id"], 16) % 8, set()).add(split[key])
    return sides


def test_split_is_the_same_for_the_same_rows_in_any_order(run):
    table = people_manifest(run.out, sources=20, people=5, seed=1)
    first, _ = assign(table, 0.4)
    shuffled, _ = assign(table.take(np.random.default_rng(0).permutation(len(table))), 0.4)
    assert first == shuffled and set(first.values()) == {TRAIN, VAL}


def test_split_warns_when_a_side_is_empty(run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    table = pq.read_table(run.out / "manifest.parquet")
    one_cluster = table.filter(pc.equal(table["source_id"], source_id_for(str(media.GRID[1]))))
    pq.write_table(one_cluster, out / "manifest.parquet")
    code, printed, _ = command(capsys, "split", str(out), "--val", "0.5")
    assert code == 0 and "1 clusters, 1 kept clips" in printed
    assert (
        "warning: one side is empty: with 1 clusters and --val 0.5, about 0.5 clusters are expected in val" in printed
    )


def test_annotations_survive_an_extended_run(deduped, tmp_path, capsys, run):
    out = tmp_path / "out"
    shutil.copytree(deduped[0], out)
    assert command(capsys, "split", str(out), "--val", "0.5")[0] == 0
    before = kept(manifest(out))
    extended = curate([*run.inputs, LATER], out)
    assert "1 kept clips came after the last `talkcurate dedup`" in extended.stderr
    after = kept(manifest(out))
    (added,) = rows_of(after, LATER)
    assert added["duplicate_of"] is None and added["split"] is None
    for key, row in before.items():
        assert (after[key]["duplicate_of"], after[key]["split"]) == (row["duplicate_of"], row["split"])
    # splitting again assigns the new clip and moves no other (its source joins no cluster)
    assert command(capsys, "split", str(out), "--val", "0.5")[0] == 0
    again = kept(manifest(out))
    assert again[added["key"]]["split"] in (TRAIN, VAL)
    assert all(again[key]["split"] == row["split"] for key, row in before.items())
    # people keep their ids; the new speaker is a new person
    assert all(after[key]["identity_id"] == row["identity_id"] for key, row in before.items())
    assert added["identity_id"] is not None and added["identity_id"] not in {r["identity_id"] for r in before.values()}


def test_bad_input_is_a_clear_error(run, tmp_path, capsys):
    code, _, err = command(capsys, "dedup", str(tmp_path / "nowhere"))
    assert code == 2 and "has no manifest.parquet" in err and "Traceback" not in err
    code, _, err = command(capsys, "split", str(run.out), "--val", "1.5")
    assert code == 2 and "--val is the expected share of clusters for validation" in err
    old = tmp_path / "old"
    old.mkdir()
    table = pq.read_table(run.out / "manifest.parquet")
    pq.write_table(table.drop_columns(["video_phash", "video_motion", "audio_fingerprint"]), old / "manifest.parquet")
    code, _, err = command(capsys, "dedup", str(old))
    assert code == 2 and f"{old}/manifest.parquet" in err and "video_phash" in err
    kept_row = pc.equal(table["status"], "kept")
    nulled = table.set_column(
        table.schema.get_field_index("audio_fingerprint"),
        table.schema.field("audio_fingerprint"),
        pc.if_else(kept_row, pa.scalar(None, pa.binary()), table["audio_fingerprint"]),
    )
    pq.write_table(nulled, old / "manifest.parquet")
    code, _, err = command(capsys, "dedup", str(old))
    assert code == 2 and "kept clips have no fingerprints" in err
    code, _, err = command(capsys, "dedup", str(run.out), "--max-audio-ber", "0.7")
    assert code == 2 and "bit error rate threshold" in err
