"""A Ray worker process killed in the middle of a run: Ray runs its task again
(`execution.task_retries`), and the run ends with exactly the samples of a clean run (the
`demo_shards` fixture, the same inputs and settings)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import media
from runs import Talkcurate, comparable, compared, manifest_of, output_files, shard_samples

pytestmark = pytest.mark.slow

DEMO_SETTINGS = ["transcribe.store_features=true"]  # those of the demo_shards fixture
BUSY_S = 1.0  # how long the victim must have been working on its task: well inside it, not at its start


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _busy_clips_worker(proc: Talkcurate, since: dict[int, float]) -> int | None:
    """A worker of this run that has been running a task of the clips group (decoding, cutting,
    faces, sync) for BUSY_S: Ray titles a worker `ray::<operator>` while it runs a task of it."""
    now = time.monotonic()
    working = {pid for pid in proc.processes() if _title(pid).startswith("ray::") and "MapBatches(clips)" in _title(pid)}
    for pid in list(since):
        if pid not in working:
            del since[pid]
    for pid in working:
        since.setdefault(pid, now)
    return next((pid for pid, start in since.items() if now - start >= BUSY_S), None)


def test_a_worker_killed_mid_task_leaves_the_result_unchanged(demo_shards, tmp_path):
    out = tmp_path / "out"
    args = ["run", str(media.DEMO), "--out", str(out), *(a for s in DEMO_SETTINGS for a in ("--set", s)), "--no-progress"]
    with Talkcurate(args, tmp_path / "run") as proc:
        since: dict[int, float] = {}
        victims: list[int] = []

        def found() -> bool:
            victims.append(_busy_clips_worker(proc, since))
            return victims[-1] is not None

        proc.wait_for(found, "a busy clips worker")
        victim = victims[-1]
        os.kill(victim, signal.SIGKILL)
        assert proc.finish() == 0, proc.output()[-3000:]
        assert victim not in proc.processes()

    clean, retried = output_files(demo_shards), output_files(out)
    assert compared(manifest_of(retried)) == compared(manifest_of(clean))
    samples = shard_samples(retried)  # fails on a member written twice
    kept = {r["key"] for r in manifest_of(clean) if r["status"] == "kept"}
    assert set(samples) == kept and len(kept) == 5
    assert comparable(samples) == comparable(shard_samples(clean))
