"""Benchmark talkcurate against the ffmpeg decode floor.

    python bench/bench.py INPUT_DIR [--out RESULTS.json] [--work DIR] [--set KEY=VALUE ...] [--long-minutes N]

For each case (INPUT_DIR, and with --long-minutes a long hard-cut concatenation of the demo clips
built first in the work folder) it times `ffmpeg -i X -f null -` over every input, runs the
pipeline end to end in-process on a fresh local Ray instance (in a fresh spawned driver process,
so one case's memory does not count against the next), samples peak RSS of the driver, of the
largest Ray worker and of the whole Ray session, then prints one table and writes every number
to JSON (default bench/results/<timestamp>.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MB = 2**20
sys.path.insert(0, str(ROOT))  # the pipeline packages, also in the spawned driver processes

from schemas.records import FPS  # noqa: E402


def _load_test_media():
    """tests/media.py by path (tests/ is not a package), for its demo clips and concat_shots."""
    spec = importlib.util.spec_from_file_location("talkcurate_test_media", ROOT / "tests" / "media.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- measurements -----------------------------------------------------------------------------


def decode_floor(files: list[str]) -> dict:
    """Wall seconds of an ffmpeg decode-only pass (default threads) over each file, one at a time."""
    per_file, failed = {}, []
    for path in files:
        started = time.perf_counter()
        done = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-f", "null", "-"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        per_file[path] = time.perf_counter() - started
        if done.returncode:
            failed.append(path)  # still timed: the pipeline meets the same file
    return {"total_s": sum(per_file.values()), "per_file_s": per_file, "failed": failed}


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # raylet's helpers, titled like workers


def _is_ray_worker(cmdline: list[str]) -> bool:
    line = " ".join(cmdline)
    return ("ray::" in line or "default_worker.py" in line) and not line.startswith(RAY_AGENTS)


class MemorySampler:
    """Samples RSS of this process and its descendants (raylet, GCS, workers) every `interval` s."""

    def __init__(self, interval: float = 0.2):
        import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
        import psutil

        self._psutil = psutil
        self.root = psutil.Process()
        self.interval = interval
        self.peak = {"driver_mb": 0.0, "worker_mb": 0.0, "session_mb": 0.0, "worker_cmdline": "", "processes": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        total = 0
        procs = [self.root, *self.root.children(recursive=True)]
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                worker = proc is not self.root and _is_ray_worker(proc.cmdline())
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            total += rss
            if proc is self.root:
                self.peak["driver_mb"] = max(self.peak["driver_mb"], rss / MB)
            elif worker and rss / MB > self.peak["worker_mb"]:
                self.peak["worker_mb"] = rss / MB
                self.peak["worker_cmdline"] = " ".join(proc.cmdline()).strip()[:120]
        self.peak["session_mb"] = max(self.peak["session_mb"], total / MB)
        self.peak["processes"] = max(self.peak["processes"], len(procs))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def _source_seconds(out: Path) -> tuple[float, int]:
    """Sum of probe durations over the sources of a run, from its manifest; and sources without one."""
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "manifest.parquet", columns=["source", "source_duration_s"]).to_pylist()
    durations = {}
    for row in rows:
        durations[row["source"]] = durations.get(row["source"]) or row["source_duration_s"]
    return sum(d or 0.0 for d in durations.values()), sum(d is None for d in durations.values())


def run_pipeline(input_dir: str, out: str, overrides: list[str]) -> dict:
    """One end-to-end run of pipeline.run.run with memory sampling; meant for a fresh process."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.config import RunConfig
    from pipeline.definition import ALL_STAGES
    from pipeline.run import run

    config = RunConfig.load(None, overrides)
    with MemorySampler() as memory:
        started = time.perf_counter()
        result = run([input_dir], out, config)
        wall = time.perf_counter() - started
    order = [cls.name for cls in ALL_STAGES]
    stages = dict(sorted(result.stage_stats.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    source_s, unprobed = _source_seconds(Path(out))
    summary = result.summary
    return {
        "wall_s": wall,
        "run_wall_s": result.wall_s,
        "stages": stages,
        "source_s": source_s,
        "sources": summary["sources"],
        "sources_without_duration": unprobed,
        "kept": summary["kept"],
        "rejected": summary["rejected"],
        "rejected_by_reason": summary["rejected_by_reason"],
        "memory": {**memory.peak, "samples": memory.samples, "interval_s": memory.interval},
    }


# -- cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    input_dir: str
    files: list[str] = field(default_factory=list)
    decode: dict = field(default_factory=dict)
    pipeline: dict = field(default_factory=dict)
    build_s: float | None = None  # seconds spent making the input (long case only)
    load_before: float = 0.0  # 1-minute load average when the case started: other work skews timings

    def derived(self) -> dict:
        p, stages = self.pipeline, self.pipeline["stages"]
        stage_wall = sum(s["wall_s"] for s in stages.values())
        return {
            "stage_wall_sum_s": stage_wall,
            "stage_share": {n: s["wall_s"] / stage_wall if stage_wall else 0.0 for n, s in stages.items()},
            "stage_video_s_per_wall_s": {n: s["video_s"] / s["wall_s"] if s["wall_s"] and s["video_s"] else None
                                         for n, s in stages.items()},
            "stage_ms_per_item": {n: 1000 * s["wall_s"] / s["items"] if s["items"] else None for n, s in stages.items()},
            "source_s_per_wall_s": p["source_s"] / p["wall_s"],
            "wall_over_decode": p["wall_s"] / self.decode["total_s"] if self.decode["total_s"] else None,
        }


def build_long_input(folder: Path, minutes: float) -> Path:
    """Demo GRID clips and the portrait at one size and 25 fps, hard cuts, about `minutes` long."""
    media = _load_test_media()
    folder.mkdir(parents=True)
    shots = []
    for grid in media.GRID:  # alternate speakers so every join is a real cut
        shots += [(grid, 3.0), (media.PORTRAIT, 10.0)]
    cycle = folder.parent / "long-cycle.mp4"  # one pass over the clips; repeated below, not re-decoded from 1080p
    media.concat_shots(cycle, shots)
    cycle_s = sum(s for _, s in shots)
    total_s, repeats = minutes * 60, []
    while sum(s for _, s in repeats) < total_s - 1e-6:
        repeats.append((cycle, min(cycle_s, total_s - sum(s for _, s in repeats))))
    out = folder / f"long-{minutes:g}min.mp4"
    media.concat_shots(out, repeats)
    cycle.unlink()
    return out


def bench_case(case: Case, out: Path, overrides: list[str]) -> None:
    from pipeline.inputs import discover

    case.files = [s.uri for s in discover([case.input_dir])]
    case.load_before = os.getloadavg()[0]
    print(f"[{case.name}] ffmpeg decode-only over {len(case.files)} files", flush=True)
    case.decode = decode_floor(case.files)
    shutil.rmtree(out, ignore_errors=True)
    print(f"[{case.name}] pipeline -> {out}", flush=True)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as driver:
        case.pipeline = driver.submit(run_pipeline, case.input_dir, str(out), overrides).result()


# -- report -----------------------------------------------------------------------------------


def _speed(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 1e4 else f"{value:.1e}"


def render(cases: list[Case]) -> str:
    lines = ["Stages (wall and CPU s are summed over all parallel workers; share = of the summed stage wall)",
             f"{'case':<10} {'stage':<10} {'items':>6} {'wall s':>8} {'CPU s':>8} {'ms/item':>8} {'video s/wall s':>15} "
             f"{'RTF':>6} {'frames/s':>9} {'share':>7}"]
    for case in cases:
        d = case.derived()
        for name, s in case.pipeline["stages"].items():
            speed = d["stage_video_s_per_wall_s"][name]
            frames = _speed(speed * FPS) if speed is not None else "-"
            rtf = f"{1 / speed:.3f}" if speed else "-"
            lines.append(f"{case.name:<10} {name:<10} {s['items']:>6} {s['wall_s']:>8.2f} {s['cpu_s']:>8.2f} "
                         f"{_speed(d['stage_ms_per_item'][name]):>8} {_speed(speed):>15} {rtf:>6} {frames:>9} {d['stage_share'][name]:>7.1%}")
        lines.append(f"{case.name:<10} {'(sum)':<10} {'':>6} {d['stage_wall_sum_s']:>8.2f} "
                     f"{sum(s['cpu_s'] for s in case.pipeline['stages'].values()):>8.2f} {'':>8} {'':>15} {'':>6} {'':>9} "
                     f"{sum(d['stage_share'].values()):>7.1%}")
    lines.append("(items: sources for probe and chunk, chunks for normalize and scene_cut, the clips that reach the later stages,\n"
                 " so ms/item of face, sync, keyframes, transcribe and caption is their cost per clip; RTF = wall s per second\n"
                 " of video (transcribe's real-time factor); normalize's video s is the chunk spans it decoded; scene_cut's,\n"
                 " those of the chunks it consumed; probe's, the durations it found)")
    rows = [
        ("input files", lambda c, d: f"{len(c.files)}"),
        ("load average before (CPUs: %d)" % os.cpu_count(), lambda c, d: f"{c.load_before:.2f}"),
        ("source video s (probe durations)", lambda c, d: f"{c.pipeline['source_s']:.1f}"),
        ("end-to-end wall s", lambda c, d: f"{c.pipeline['wall_s']:.2f}"),
        ("source s / end-to-end wall s", lambda c, d: f"{d['source_s_per_wall_s']:.2f}"),
        ("ffmpeg decode-only s", lambda c, d: f"{c.decode['total_s']:.2f}"),
        ("end-to-end wall / decode-only", lambda c, d: f"{d['wall_over_decode']:.1f}x"),
        ("peak RSS driver MB", lambda c, d: f"{c.pipeline['memory']['driver_mb']:.0f}"),
        ("peak RSS one Ray worker MB", lambda c, d: f"{c.pipeline['memory']['worker_mb']:.0f}"),
        ("peak RSS sum, Ray session MB", lambda c, d: f"{c.pipeline['memory']['session_mb']:.0f}"),
        ("kept clips", lambda c, d: f"{c.pipeline['kept']}"),
        ("rejected", lambda c, d: " ".join([str(c.pipeline["rejected"]),
                                            *(f"{k}:{v}" for k, v in c.pipeline["rejected_by_reason"].items())])),
    ]
    lines += ["", f"{'end to end':<34}" + "".join(f"{c.name:>22}" for c in cases)]
    for label, value in rows:
        lines.append(f"{label:<34}" + "".join(f"{value(c, c.derived()):>22}" for c in cases))
    lines.append("(session sum counts the driver, raylet, GCS and all workers; shared object-store pages count in each)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_dir")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/<timestamp>.json)")
    parser.add_argument("--work", type=Path, help="work folder for outputs and the long input (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="pipeline option, as for talkcurate run")
    parser.add_argument("--long-minutes", type=float, default=0, help="also benchmark a long concatenated input (0: off)")
    args = parser.parse_args(argv)
    from pipeline.config import RunConfig

    overrides = ["execution.progress=false", *args.set]
    try:
        RunConfig.load(None, overrides)  # a bad --set fails before any work
    except (KeyError, ValueError) as exc:
        parser.error(str(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work or Path(tempfile.mkdtemp(prefix="talkcurate-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    source = Path(args.input_dir).resolve()
    cases = [Case(source.name[:10] or "input", str(source))]
    try:
        if args.long_minutes > 0:
            folder = work / "long-input"
            shutil.rmtree(folder, ignore_errors=True)
            print(f"building a {args.long_minutes:g} min input in {folder}", flush=True)
            started = time.perf_counter()
            build_long_input(folder, args.long_minutes)
            cases.append(Case("long", str(folder), build_s=time.perf_counter() - started))
        for number, case in enumerate(cases):
            bench_case(case, work / f"out-{number}-{case.name}", overrides)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(render(cases))
    out = args.out or RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"created": stamp, "input_dir": args.input_dir, "overrides": overrides, "cpus": multiprocessing.cpu_count(),
               "cases": [{**asdict(c), **c.derived()} for c in cases]}
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
