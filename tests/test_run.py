"""End to end: whole runs on a real local Ray instance over real media, read back with webdataset.

One run (`curated`, in this process) over the demo media, every broken kind, the hostile names and
files with hard cuts is shared by most tests; the kill-and-resume test compares its own output with
it. Runs that must be killed, and the command line itself, run as `talkcurate` subprocesses
(tests/runs.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import media
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import soundfile
import webdataset as wds
from runs import Talkcurate, output_files, shard_samples, talkcurate

from pipeline.config import RunConfig
from pipeline.executor import ray_session
from pipeline.inputs import InputError, discover
from pipeline.placement import PlacementError
from pipeline.run import RunResult, run
from schemas.manifest import SAMPLE_MEMBERS
from schemas.records import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, source_id_for
from stages.sync import SyncStage

pytestmark = pytest.mark.slow

SETTINGS = ["shards.target_shard_mb=0.3"]  # several shards, published while the run goes on
SET_ARGS = [arg for setting in SETTINGS for arg in ("--set", setting)]
COMPARED = ("key", "source", "status", "reason", "start_s", "end_s")  # what a resumed run must reproduce


# -- reading an output folder ------------------------------------------------------------------


def manifest_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def compared(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(r[c] for c in COMPARED) for r in rows)


def read_index(out: Path) -> dict:
    return json.loads((out / "index.json").read_text())


def read_samples(out: Path) -> list[dict]:
    """Every sample of every indexed shard, as webdataset gives them to a trainer."""
    urls = [str(out / entry["url"]) for entry in read_index(out)["shardlist"]]
    return list(wds.WebDataset(urls, shardshuffle=False))


def shard_files(out: Path) -> set[str]:
    return {f"shards/{p.name}" for p in (out / "shards").iterdir()} if (out / "shards").is_dir() else set()


def published_tars(out: Path) -> set[str]:
    return {name for name in shard_files(out) if name.endswith(".tar")}


def file_states(folder: Path) -> dict[str, tuple[str, int]]:
    """md5 and mtime of every file under `folder`."""
    return {
        str(p.relative_to(folder)): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def listing(folders: list[Path]) -> dict[str, tuple[int, int]]:
    """Size and mtime of the folders and of everything in them (a folder's mtime changes when an
    entry is created or removed in it)."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for f in folders for p in [f, *sorted(f.rglob("*"))]}


# -- the shared run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the in-process runs (the executor uses an initialized Ray),
    started as a run starts its own: with its workers at normal priority, among other settings."""
    with ray_session(None, RunConfig()):
        yield


def run_config(*overrides: str) -> RunConfig:
    config = RunConfig.load(None, [*SETTINGS, *overrides])
    config.execution.progress = False
    return config


CUT_PLANS = {  # hard cuts, several clips per file; the 1 s shot is `too_short`
    "cuts a.mp4": [(media.GRID[0], 3.0), (media.PORTRAIT, 6.0), (media.GRID[1], 3.0), (media.GRID[2], 2.8)],
    "cuts b.mp4": [(media.PORTRAIT, 8.0), (media.GRID[3], 3.0), (media.GRID[0], 1.0), (media.GRID[1], 3.0)],
}


@pytest.fixture(scope="module")
def cut_media(tmp_path_factory) -> dict[Path, list[int]]:
    """Files with hard cuts: path -> first frame of each later shot."""
    folder = tmp_path_factory.mktemp("cuts")
    return {folder / name: media.concat_shots(folder / name, shots) for name, shots in CUT_PLANS.items()}


@dataclass
class Curated:
    inputs: list[str]
    input_folders: list[Path]
    out: Path
    result: RunResult
    rows: list[dict]
    broken: dict[str, str | None]  # path -> expected reason
    hostile: list[Path]
    cuts: dict[Path, list[int]]
    before: dict
    after: dict
    worker_cwd: str

    def rows_of(self, source: Path | str) -> list[dict]:
        return [r for r in self.rows if r["source_id"] == source_id_for(os.path.abspath(source))]

    @property
    def kept(self) -> dict[str, dict]:
        return {r["key"]: r for r in self.rows if r["status"] == "kept"}


@pytest.fixture(scope="module")
def curated(local_ray, tmp_path_factory, broken_media, hostile_media, cut_media) -> Curated:
    broken_folder, reasons = broken_media
    folders = [media.DEMO, broken_folder, hostile_media[0].parent, next(iter(cut_media)).parent]
    inputs = [str(f) for f in folders]
    out = tmp_path_factory.mktemp("curated") / "out"
    before = listing(folders)
    result = run(inputs, str(out), run_config())
    after = listing(folders)

    @ray.remote
    def cwd() -> str:
        return os.getcwd()

    return Curated(
        inputs=inputs,
        input_folders=folders,
        out=out,
        result=result,
        rows=manifest_rows(out),
        broken={str(broken_folder / name): reason for name, reason in reasons.items()},
        hostile=hostile_media,
        cuts=cut_media,
        before=before,
        after=after,
        worker_cwd=ray.get(cwd.remote()),
    )


# -- one run over good, broken and hostile inputs -------------------------------------------------


def test_every_input_has_rows_and_the_run_went_on(curated):
    sources = discover(curated.inputs).sources
    assert len(sources) == 6 + len(curated.broken) + len(curated.hostile) + len(curated.cuts)
    assert {r["source_id"] for r in curated.rows} == {s.source_id for s in sources}
    # Recorded relative to the input that named them (inputs.source_paths): no path of this machine.
    assert {r["source"] for r in curated.rows} == {s.name for s in sources}
    assert not [r["source"] for r in curated.rows if os.path.isabs(r["source"]) or "pytest-" in r["source"]]
    # The scan names what it left out: the demo folder's attribution file.
    skipped = json.loads((curated.out / "summary.json").read_text())["last_run"]["skipped_inputs"]
    assert {"path": str(media.DEMO / "SOURCES.md"), "reason": ".md is not a video suffix"} in skipped
    assert curated.result.sources_processed == len(sources)
    for grid in media.GRID + [media.PORTRAIT]:  # the good demo clips
        assert [r["status"] for r in curated.rows_of(grid)] == ["kept"], grid
    assert len(curated.kept) >= 15


def test_broken_inputs_are_rejected_with_their_reason(curated):
    for path, reason in curated.broken.items():
        rows = curated.rows_of(path)
        if reason is None:  # readable after all
            assert rows and all(r["status"] == "kept" for r in rows), (path, rows)
            continue
        assert [(r["status"], r["reason"]) for r in rows] == [("rejected", reason)], path
        assert rows[0]["reason_detail"], path
        assert rows[0]["shard"] is None


def test_input_without_audio_is_rejected_no_audio(curated):
    rows = curated.rows_of(media.NO_AUDIO)
    assert [(r["status"], r["reason"], r["rejected_by"]) for r in rows] == [("rejected", "no_audio", "probe")]


def test_hostile_names_give_samples_under_their_exact_path(curated):
    assert len(curated.hostile) == len(media.HOSTILE_NAMES)
    for path in curated.hostile:
        rows = curated.rows_of(path)
        assert rows and all(r["status"] == "kept" for r in rows), path
        assert all(r["source"] == path.name and "." not in r["key"] for r in rows)


def test_hard_cuts_start_new_clips(curated):
    for path, cuts in curated.cuts.items():
        rows = curated.rows_of(path)
        assert sorted(round(r["start_s"] * FPS) for r in rows) == [0, *cuts], path
        shorts = [r for r in rows if r["reason"] == "too_short"]
        expected_short = 1 if any(seconds < 2 for _, seconds in CUT_PLANS[path.name]) else 0
        assert len(shorts) == expected_short
        # The portrait cropped to 360x288 keeps a face of about 70 px: too small to train on.
        starts = np.cumsum([0] + [round(seconds * FPS) for _, seconds in CUT_PLANS[path.name]])
        portrait_starts = {int(s) for s, (src, _) in zip(starts, CUT_PLANS[path.name]) if src == media.PORTRAIT}
        others = [r for r in rows if r["status"] == "rejected" and r["reason"] != "too_short"]
        assert others and all(r["reason"] == "face_too_small" for r in others)
        assert {round(r["start_s"] * FPS) for r in others} == portrait_starts


def test_nothing_is_written_outside_out(curated):
    assert curated.after == curated.before  # inputs untouched: same entries, sizes and mtimes
    places = [Path.cwd(), Path(curated.worker_cwd), *curated.input_folders, curated.out.parent]
    assert not [p for p in places if (p / "pwned").exists()]
    assert not list(curated.out.rglob("pwned"))
    assert {p.name for p in curated.out.parent.iterdir()} == {"out"}


# -- what a trainer reads ---------------------------------------------------------------------


def test_shards_read_back_with_webdataset_are_the_kept_rows(curated):
    samples = read_samples(curated.out)
    kept = curated.kept
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(kept)
    for sample in samples:
        key = sample["__key__"]
        row = kept[key]
        assert "." not in key
        assert {k for k in sample if not k.startswith("__")} == set(SAMPLE_MEMBERS)
        assert Path(sample["__url__"]).relative_to(curated.out).as_posix() == row["shard"]

        meta = json.loads(sample["json"])
        assert (meta["key"], meta["source"], meta["start_s"], meta["end_s"]) == (
            key,
            row["source"],
            row["start_s"],
            row["end_s"],
        )
        # Every kept clip was measured in sync (or corrected into it) by the default backend.
        assert (meta["sync"]["offset_ms"], meta["sync"]["confidence"]) == (
            row["sync_offset_ms"],
            row["sync_confidence"],
        )
        assert row["sync_backend"] == meta["sync"]["backend"] == meta["backends"]["sync"] == "mouth-audio-cca"
        assert row["sync_confidence"] >= SyncStage().min_confidence_embedded
        assert abs(row["sync_offset_ms"]) <= SyncStage().max_correction_ms
        # Text: a transcript by the embedded Whisper, the caption in KEY.txt, the manifest and the JSON.
        assert (
            row["transcript"]
            and row["transcript_backend"] == meta["backends"]["transcript"] == meta["transcript"]["backend"]
        )
        assert meta["transcript"]["text"] == row["transcript"] and meta["transcript"]["words"]
        assert (
            sample["txt"].decode("utf-8") == row["caption"] == meta["caption"]["text"] and "speaking" in row["caption"]
        )
        assert row["caption_backend"] == meta["backends"]["caption"] == "embedded"
        frames = round((row["end_s"] - row["start_s"]) * FPS)
        assert frames == row["num_frames"] == meta["num_frames"] > 0

        audio, rate = soundfile.read(io.BytesIO(sample["wav"]), dtype="int16", always_2d=True)
        assert rate == SAMPLE_RATE
        assert audio.shape == (frames * SAMPLES_PER_FRAME, 1), key  # mono, to the sample

        with av.open(io.BytesIO(sample["mp4"])) as container:
            assert not container.streams.audio
            video = container.streams.video[0]
            assert video.codec_context.name == "h264"
            assert video.average_rate == FPS
            decoded = [(f.width, f.height) for f in container.decode(video)]
        assert len(decoded) == frames, key
        assert set(decoded) == {(row["width"], row["height"])}


def test_index_describes_the_shard_files(curated):
    index = read_index(curated.out)
    assert index["__kind__"] == "wids-shard-index-v1"
    entries = index["shardlist"]
    assert len(entries) >= 3
    assert {e["url"] for e in entries} == shard_files(curated.out)  # nothing else in shards/
    in_tars = Counter(Path(s["__url__"]).relative_to(curated.out).as_posix() for s in read_samples(curated.out))
    for entry in entries:
        data = (curated.out / entry["url"]).read_bytes()
        assert entry["md5sum"] == hashlib.md5(data).hexdigest()
        assert entry["filesize"] == len(data)
        assert entry["nsamples"] == in_tars[entry["url"]] > 0
    assert sum(e["nsamples"] for e in entries) == len(curated.kept)


# -- verify, inspect, report -------------------------------------------------------------------


def test_verify_accepts_the_output(curated, tmp_path):
    rc, stdout, stderr = talkcurate("verify", curated.out, logs=tmp_path / "verify")
    assert rc == 0, stdout + stderr
    assert f"{len(read_index(curated.out)['shardlist'])} shards checked, 0 problems" in stdout


def _problems(stdout: str) -> list[str]:
    return [
        line for line in stdout.splitlines() if line and not re.fullmatch(r"\d+ shards checked, \d+ problems", line)
    ]


def test_verify_names_a_corrupt_shard(curated, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(curated.out, copy)
    entries = read_index(copy)["shardlist"]
    url = entries[len(entries) // 2]["url"]
    data = bytearray((copy / url).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / url).write_bytes(bytes(data))
    rc, stdout, stderr = talkcurate("verify", copy, logs=tmp_path / "verify")
    assert rc == 1, stdout + stderr
    problems = _problems(stdout)
    assert problems and all(line.startswith(f"{url}:") for line in problems), stdout
    assert any("md5" in line for line in problems)


def test_verify_names_a_missing_shard(curated, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(curated.out, copy)
    url = read_index(copy)["shardlist"][0]["url"]
    (copy / url).unlink()
    rc, stdout, stderr = talkcurate("verify", copy, logs=tmp_path / "verify")
    assert rc == 1, stdout + stderr
    assert _problems(stdout) == [f"{url}: missing"]


def test_verify_names_a_shard_the_index_does_not_list(curated, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(curated.out, copy)
    url = read_index(copy)["shardlist"][0]["url"]
    stray = url.replace(".tar", "-copy.tar")
    shutil.copyfile(copy / url, copy / stray)
    rc, stdout, stderr = talkcurate("verify", copy, logs=tmp_path / "verify")
    assert rc == 1, stdout + stderr
    assert _problems(stdout) == [f"{stray}: in the shard folder but not in the index"]


def test_inspect_agrees_with_the_manifest(curated, tmp_path):
    rc, stdout, stderr = talkcurate("inspect", curated.out, "--json", logs=tmp_path / "json")
    assert rc == 0, stderr
    summary = json.loads(stdout)
    rejected = Counter(r["reason"] for r in curated.rows if r["status"] == "rejected")
    assert summary["kept"] == len(curated.kept)
    assert summary["rejected"] == sum(rejected.values())
    assert summary["rejected_by_reason"] == dict(rejected)
    assert summary["candidate_clips"] == len(curated.rows)
    assert summary["sources"] == len({r["source_id"] for r in curated.rows})
    kept_seconds = sum(r["end_s"] - r["start_s"] for r in curated.kept.values())
    assert summary["hours_kept"] * 3600 == pytest.approx(kept_seconds)
    index = read_index(curated.out)
    assert [s["url"] for s in summary["shards"]] == [e["url"] for e in index["shardlist"]]
    assert all(s["manifest_rows"] == s["nsamples"] for s in summary["shards"])

    rc, text, stderr = talkcurate("inspect", curated.out, logs=tmp_path / "text")
    assert rc == 0, stderr
    for reason, count in rejected.items():
        assert re.search(rf"^\s+{reason}\s+{count}$", text, re.MULTILINE), (reason, text)
    assert re.search(rf"^kept\s+{len(curated.kept)}\s", text, re.MULTILINE)


def test_report_embeds_its_plots(curated):
    html = (curated.out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 2
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    for reason in {r["reason"] for r in curated.rows if r["status"] == "rejected"}:
        assert f"<td>{reason}</td>" in html


# -- runs over an existing output -------------------------------------------------------------


def test_second_run_does_no_work(curated, tmp_path):
    shards, journal = file_states(curated.out / "shards"), file_states(curated.out / ".talkcurate")
    manifest = pq.read_table(curated.out / "manifest.parquet")
    index = read_index(curated.out)
    rc, stdout, stderr = talkcurate(
        "run", *curated.inputs, "--out", curated.out, *SET_ARGS, "--no-progress", logs=tmp_path / "again"
    )
    assert rc == 0, stderr
    assert re.search(r"^0 sources processed", stdout, re.MULTILINE), stdout
    assert json.loads((curated.out / "summary.json").read_text())["last_run"]["sources_processed"] == 0
    assert file_states(curated.out / "shards") == shards  # same bytes, never rewritten
    assert file_states(curated.out / ".talkcurate") == journal
    assert pq.read_table(curated.out / "manifest.parquet").equals(manifest)
    assert read_index(curated.out) == index


def test_execution_options_may_change_on_resume(curated, tmp_path):
    rc, stdout, stderr = talkcurate(
        "run",
        *curated.inputs,
        "--out",
        curated.out,
        *SET_ARGS,
        "--no-progress",
        "--set",
        "execution.max_workers=1",
        logs=tmp_path / "again",
    )
    assert rc == 0, stderr
    assert re.search(r"^0 sources processed", stdout, re.MULTILINE), stdout


def test_config_change_is_refused(curated, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(curated.out, copy)
    before = listing([copy])
    rc, stdout, stderr = talkcurate(
        "run", *curated.inputs, "--out", copy, *SET_ARGS, "--set", "scene_cut.max_clip_s=5", logs=tmp_path / "changed"
    )
    assert rc == 2, stdout + stderr
    assert "different configuration" in stderr and "scene_cut" in stderr and "--out" in stderr, stderr
    assert "Traceback" not in stderr
    assert listing([copy]) == before


# -- lip sync -------------------------------------------------------------------------------------


def test_a_clip_with_late_audio_is_stored_in_sync(local_ray, tmp_path):
    """GRID[1] with its sound 200 ms after the lips: the stored wav is the source's audio from the
    measured offset on, sample for sample (zeros past the end of the recording)."""
    source = tmp_path / "late audio.mkv"
    media.audio_shifted(media.GRID[1], source, 200)
    out = tmp_path / "out"
    run([str(source)], str(out), run_config())
    (row,) = manifest_rows(out)
    assert row["status"] == "kept", row["reason_detail"]
    assert row["sync_backend"] == "mouth-audio-cca" and row["sync_confidence"] >= SyncStage().min_confidence_embedded
    shift = round(row["sync_offset_ms"] * SAMPLE_RATE / 1000)
    assert shift > 0  # late sound: the in-sync audio is taken later
    (sample,) = read_samples(out)
    assert json.loads(sample["json"])["sync"]["audio_shift"] == shift
    stored, _ = soundfile.read(io.BytesIO(sample["wav"]), dtype="int16")
    expected = np.zeros_like(stored)
    later = media.decoded_audio(source)[shift : shift + len(stored)]
    expected[: len(later)] = later
    np.testing.assert_array_equal(stored, expected)


# -- inputs ---------------------------------------------------------------------------------------


def test_list_file_and_single_file_inputs(local_ray, tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    (lists / "sub").mkdir(parents=True)
    relative = lists / "sub" / "listed by relative path.mpg"
    shutil.copyfile(media.GRID[1], relative)
    list_file = lists / "inputs.txt"
    list_file.write_text(f"# clips to curate\n\n{media.GRID[0]}\n  ./sub/{relative.name}  \n# {media.GRID[3]}\n")
    monkeypatch.chdir(tmp_path)
    single = media.GRID[2]
    out = tmp_path / "out"
    # The relatively listed file is also named directly: still one source.
    result = run([str(list_file), os.path.relpath(single), str(relative)], str(out), run_config())
    rows = manifest_rows(out)
    # Each named relative to the input that named it: the list file's folder, or the file's own.
    assert sorted({r["source"] for r in rows}) == sorted([media.GRID[0].name, f"sub/{relative.name}", single.name])
    assert [r["status"] for r in rows] == ["kept"] * 3
    assert result.sources_processed == 3
    assert {s["__key__"] for s in read_samples(out)} == {r["key"] for r in rows}


def test_a_stage_asking_for_a_gpu_the_cluster_lacks_is_a_clear_error(local_ray, tmp_path):
    if ray.cluster_resources().get("GPU"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(PlacementError, match="text stages ask for 1 GPU per worker; the cluster has 0"):
        run([str(media.GRID[0])], str(tmp_path / "out"), run_config("transcribe.device=cuda"))


def test_missing_input_is_a_clear_error(tmp_path):
    missing = tmp_path / "no such clip.mp4"
    out = tmp_path / "out"
    rc, stdout, stderr = talkcurate("run", media.GRID[0], missing, "--out", out, logs=tmp_path / "missing")
    assert rc == 2
    assert f"input not found: {missing}" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_unknown_option_is_a_clear_error(tmp_path):
    rc, stdout, stderr = talkcurate(
        "run", media.GRID[0], "--out", tmp_path / "out", "--set", "shards.no_such_option=1", logs=tmp_path / "option"
    )
    assert rc == 2
    assert "no_such_option" in stderr and "Traceback" not in stderr


# -- kill and resume --------------------------------------------------------------------------


def test_killed_runs_resume_to_the_uninterrupted_result(curated, tmp_path):
    out = tmp_path / "out"
    args = ["run", *curated.inputs, "--out", str(out), *SET_ARGS, "--no-progress"]
    journal = out / ".talkcurate"
    reference_shards = len(read_index(curated.out)["shardlist"])

    def records() -> set[str]:
        return {p.name for p in (journal / "shards").glob("*.json")}

    # Shortly after start: the journal exists, Ray is still starting.
    with Talkcurate(args, tmp_path / "run1") as proc:
        proc.wait_for(lambda: (journal / "config.json").exists(), "the journal")
        proc.kill_driver()
    assert not published_tars(out)

    # After the first shard is published, with work left to do.
    with Talkcurate(args, tmp_path / "run2") as proc:
        proc.wait_for(lambda: published_tars(out), "the first shard")
        proc.kill_driver()
    assert not (out / "manifest.parquet").exists()
    assert len(published_tars(out)) < reference_shards

    # A resumed run, killed after it published a shard of its own.
    earlier = records()
    with Talkcurate(args, tmp_path / "run3") as proc:
        proc.wait_for(lambda: records() - earlier, "a shard of the resumed run")
        proc.kill_driver()
    done = len(list((journal / "sources").glob("*.parquet")))
    assert done > 0
    # What a kill between a shard's rename and its journal record leaves (too brief a moment to hit
    # by timing), and a temporary shard of a number no later run reuses: both must go.
    shutil.copyfile(out / min(published_tars(out)), out / "shards" / "shard-000999.tar")
    (out / "shards" / ".shard-000998.tar.partial").write_bytes(b"half a shard")

    with Talkcurate(args, tmp_path / "run4") as proc:
        assert proc.finish() == 0, proc.output()[-3000:]
        processed = re.search(r"^(\d+) sources processed", proc.stdout.read_text(), re.MULTILINE)
    total = len({r["source_id"] for r in curated.rows})
    assert processed and int(processed.group(1)) == total - done  # done sources were not redone

    rows = manifest_rows(out)
    assert compared(rows) == compared(curated.rows)
    kept = {r["key"]: r["shard"] for r in rows if r["status"] == "kept"}
    samples = read_samples(out)
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys))  # no sample written twice
    assert set(keys) == set(kept) == set(curated.kept)
    # Byte for byte, videos included: a worker runs x264 on one thread (OMP_NUM_THREADS is its CPUs),
    # where the same pictures give the same stream (issue 15).
    assert shard_samples(output_files(out)) == shard_samples(output_files(curated.out))
    assert all(kept[s["__key__"]] == Path(s["__url__"]).relative_to(out).as_posix() for s in samples)
    assert {e["url"] for e in read_index(out)["shardlist"]} == shard_files(out)
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
    rc, stdout, stderr = talkcurate("verify", out, logs=tmp_path / "verify")
    assert rc == 0, stdout + stderr


def test_a_run_in_a_terminal_finishes_with_progress_and_no_library_noise(tmp_path):
    """A user's terminal, not a pipe: Ray's worker processes share it from other process groups,
    where touching it stops them (SIGTTOU). PySceneDetect runs `ffmpeg` at import, which used to
    hang every such run. The run must end, show its progress line, and print none of mediapipe's
    C++ notices."""
    rc, output, _ = talkcurate(
        "run", media.GRID[0], "--out", tmp_path / "out", logs=tmp_path / "tty", timeout=240, terminal=True
    )
    assert rc == 0, output[-3000:]
    assert "1 sources processed" in output
    assert re.search(r"progress: 1/1 sources, \d+ clips \(\d+ kept\), 0\.00 h of video, [\d:]+ elapsed, done", output)
    assert "W0000" not in output and "XNNPACK" not in output and "GetPrototype" not in output


def test_inputs_are_listed_once_and_largest_first(tmp_path, monkeypatch):
    """The run starts the biggest inputs first, so no big file is left to one worker at the end;
    a file named twice (in a folder, directly and in a list) is one source."""
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    for name, size in {"b.mp4": 300, "a.mp4": 300, "nested/c.mkv": 900, "d.mov": 10, "notes.txt.bak": 5000}.items():
        (folder / name).write_bytes(b"\0" * size)
    (folder / ".hidden.mp4").write_bytes(b"\0" * 9999)
    listed = tmp_path / "more.txt"
    listed.write_text(f"# a comment\n{folder / 'd.mov'}\nin/a.mp4\n")
    (folder / "talk.m4a").write_bytes(b"\0" * 50)
    (folder / ".cache").mkdir()
    found = discover([str(folder), str(folder / "b.mp4"), str(listed)])
    sources = found.sources
    assert [Path(s.uri).name for s in sources] == ["c.mkv", "a.mp4", "b.mp4", "d.mov"]
    assert all(os.path.isabs(s.uri) for s in sources) and len({s.source_id for s in sources}) == 4
    # The scan names what it left out, and why.
    assert found.skipped == [
        (str(folder / ".cache"), "hidden folder"),
        (str(folder / ".hidden.mp4"), "hidden file"),
        (str(folder / "notes.txt.bak"), ".bak is not a video suffix"),
        (str(folder / "talk.m4a"), ".m4a is audio only: a sample needs a video with sound"),
    ]
    # What the manifest records (inputs.source_paths); the same sources whichever way they are named.
    monkeypatch.chdir(tmp_path)
    named = {
        mode: [s.name for s in discover(["in", "in/b.mp4", str(listed)], mode).sources]
        for mode in ("relative", "given", "absolute")
    }
    assert named == {
        "relative": ["nested/c.mkv", "a.mp4", "b.mp4", "d.mov"],
        "given": ["in/nested/c.mkv", "in/a.mp4", "in/b.mp4", "in/d.mov"],
        "absolute": [s.uri for s in sources],
    }
    with pytest.raises(InputError, match="source_paths must be one of"):
        discover([str(folder)], "home")
