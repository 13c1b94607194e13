"""A Ray worker process killed in the middle of a run: Ray runs its task again
(`execution.task_retries`), and the run ends with exactly the samples of a clean run (the
`demo_shards` fixture's, with the same settings, over the same four GRID clips)."""

from __future__ import annotations

import os
import signal

import media
import pytest
from runs import Talkcurate, busy_worker, comparable, compared, manifest_of, output_files, reference_for, shard_samples

pytestmark = pytest.mark.slow

DEMO_SETTINGS = ["transcribe.store_features=true"]  # those of the demo_shards fixture


def test_a_worker_killed_mid_task_leaves_the_result_unchanged(demo_shards, tmp_path):
    out = tmp_path / "out"
    grid = [str(path) for path in media.GRID]
    args = ["run", *grid, "--out", str(out), *(a for s in DEMO_SETTINGS for a in ("--set", s)), "--no-progress"]
    with Talkcurate(args, tmp_path / "run") as proc:
        since: dict[int, float] = {}
        victims: list[int] = []

        def found() -> bool:
            victims.append(busy_worker(proc.processes(), "MapBatches(clips)", since))  # decoding, cutting, faces, sync
            return victims[-1] is not None

        proc.wait_for(found, "a busy clips worker")
        victim = victims[-1]
        os.kill(victim, signal.SIGKILL)
        assert proc.finish() == 0, proc.output()[-3000:]
        assert victim not in proc.processes()

    rows, samples = reference_for(output_files(demo_shards), grid)
    retried = output_files(out)
    assert compared(manifest_of(retried)) == rows and len(rows) == 4
    assert comparable(shard_samples(retried)) == samples  # shard_samples fails on a member written twice
