"""`talkcurate` as a user runs it, in subprocesses a test can kill and clean up after, and what
a run wrote, read back for comparison.

Each run is a session of its own with a tag in its environment: Ray's workers start sessions of
their own, so the tag is what finds every process a run started, to kill it by id afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import signal
import subprocess
import sys
import tarfile
import termios
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest

from schemas.records import source_id_for

TALKCURATE = str(Path(sys.executable).with_name("talkcurate"))
TAG = "TALKCURATE_TEST_RUN"


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (zombies show an empty environment)."""
    needle = f"{TAG}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def tagged_env(tag: str) -> dict[str, str]:
    """The environment to start processes with, so that `kill_tagged(tag)` finds them and all they start."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[TAG] = tag
    return env


def kill_tagged(tag: str, timeout: float = 30) -> None:
    """SIGKILL every process started with `tagged_env(tag)`, until none is left."""
    deadline = time.monotonic() + timeout
    while pids := tagged_processes(tag):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of a test survived SIGKILL")
        time.sleep(0.1)


def process_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def busy_worker(pids: list[int], operator: str, since: dict[int, float], busy_s: float = 1.0) -> int | None:
    """A Ray worker among `pids` that has been running a task of `operator` (e.g. "MapBatches(clips)")
    for `busy_s`, so well inside it: Ray titles a worker `ray::<operator>` while it runs a task of
    it. `since` keeps when each worker was first seen busy, between calls."""
    now = time.monotonic()
    working = {pid for pid in pids if process_title(pid).startswith("ray::") and operator in process_title(pid)}
    for pid in set(since) - working:
        del since[pid]
    for pid in working:
        since.setdefault(pid, now)
    return next((pid for pid, start in since.items() if now - start >= busy_s), None)


class Talkcurate:
    """`talkcurate ARGS` in a session of its own; leaving the `with` block kills all it started."""

    def __init__(self, args: list[str], logs: Path, terminal: bool = False, env: dict[str, str] | None = None):
        self.tag = uuid.uuid4().hex
        env = {**tagged_env(self.tag), **(env or {})}
        self.stdout, self.stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
        self._reader = None
        if terminal:
            self._start_in_terminal([TALKCURATE, *args], env)
            return
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [TALKCURATE, *args], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )

    def _start_in_terminal(self, command: list[str], env: dict[str, str]) -> None:
        """As a user runs it: a pseudo-terminal on stdin, stdout and stderr, and as the session's
        controlling terminal, so processes in other process groups of the session can be stopped
        by SIGTTOU when they touch it. Everything it prints lands in the stdout log."""
        master, slave = os.openpty()

        def become_terminal_owner():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            command,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=become_terminal_owner,
        )
        os.close(slave)
        self.stderr.write_bytes(b"")

        def drain():
            with open(self.stdout, "wb") as out:
                while True:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # the terminal closes when the last process holding it exits
                        break
                    if not data:
                        break
                    out.write(data)
            os.close(master)

        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()

    def __enter__(self) -> Talkcurate:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(30)
        return rc

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 300) -> None:
        """Poll `condition`; fail if the run ends first (the kill would come too late to test anything)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (exit {self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.02)

    def kill_driver(self) -> None:
        """kill -9 the driver, as a crash or the OOM killer would, then its process group."""
        os.kill(self.proc.pid, signal.SIGKILL)
        os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: its group id stays ours
        self._kill_group()
        assert self.proc.wait() == -signal.SIGKILL, "the run ended on its own before it was killed"

    def processes(self) -> list[int]:
        """Every live process this run started: the driver, its children, Ray's workers."""
        return tagged_processes(self.tag)

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
            self._kill_group()
            self.proc.wait()
        kill_tagged(self.tag)  # Ray's workers, in sessions of their own


def talkcurate(
    *args: str | Path, logs: Path, timeout: float = 300, terminal: bool = False, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the command line to its end: (exit status, stdout, stderr)."""
    with Talkcurate([str(a) for a in args], logs, terminal, env) as proc:
        rc = proc.finish(timeout)
        return rc, proc.stdout.read_text(), proc.stderr.read_text()


# -- what a run wrote, as {relative name: bytes} (a local folder or a bucket's objects) ----------

COMPARED = ("key", "source", "status", "reason", "start_s", "end_s")  # what a resumed or retried run must reproduce


def output_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def shard_samples(files: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
    """key -> {member suffix: bytes}, from every tar under shards/; a member seen twice fails."""
    samples: dict[str, dict[str, bytes]] = {}
    for name, data in files.items():
        if name.startswith("shards/") and name.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for info in tar:
                    key, _, suffix = info.name.partition(".")
                    assert suffix not in samples.get(key, {}), f"{info.name} twice"
                    samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples


def manifest_of(files: dict[str, bytes]) -> list[dict]:
    return pq.read_table(io.BytesIO(files["manifest.parquet"])).to_pylist()


def compared(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(r[c] for c in COMPARED) for r in rows)


def comparable(samples: dict[str, dict[str, bytes]]) -> dict[str, dict[str, object]]:
    """Samples as two runs must reproduce them: every member's bytes, except the video's, which
    x264 does not reproduce byte for byte between runs: its frame count and size instead."""
    result = {}
    for key, members in samples.items():
        with av.open(io.BytesIO(members["mp4"])) as container:
            frames = [(f.width, f.height) for f in container.decode(video=0)]
        result[key] = {**members, "mp4": (len(frames), set(frames))}
    return result


def reference_for(reference: dict[str, bytes], sources: list[str]) -> tuple[list[tuple], dict[str, dict[str, object]]]:
    """What a run over `sources` must give, taken from a reference run over them and more (same
    settings): its `compared` manifest rows and its `comparable` samples."""
    ids = {source_id_for(os.path.abspath(source)) for source in sources}
    rows = [row for row in manifest_of(reference) if row["source_id"] in ids]
    keys = {row["key"] for row in rows}
    return compared(rows), {
        key: members for key, members in comparable(shard_samples(reference)).items() if key in keys
    }


def train_tiny(shards: Path, out: Path, *options: str, timeout: float = 600) -> Path:
    """The tiny preset on `shards`, one rank, as a user launches it (`torchrun -m train`), with
    `options` (KEY=VALUE) after the test defaults: a run folder in `out`."""
    subprocess.run(
        [
            str(Path(sys.executable).with_name("torchrun")),
            "--nproc_per_node",
            "1",
            "-m",
            "train",
            f"data.shards={shards}",
            f"out={out}",
            "data.num_workers=0",
            "data.num_frames=8",
            *options,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )
    return out
