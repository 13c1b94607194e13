"""Benchmark talkcurate end to end against its compute floor and the staged baseline.

    python bench/bench.py [INPUT_DIR] [--long-minutes N] [--memory-check] [--set KEY=VALUE ...]
                          [--no-baseline] [--out RESULTS.json] [--work DIR]

Cases: INPUT_DIR (e.g. demo/media) and, with --long-minutes, a long input built from the demo
clips (hard cuts, 25 fps, 640x360; bench/long_inputs.py). For each case, in one run:

* the pipeline end to end on a fresh local Ray instance, in a fresh driver process: per-stage wall
  and CPU seconds (summed over parallel workers), frames per second, share of the end-to-end
  time; peak RSS of the driver and of every Ray worker process, CPU seconds by kind of process
  (bench/process_sampler.py);
* the compute floor (bench/compute_floor.py): one threaded decode of each input and the model
  calls the run's configuration needs on the clips the run produced, each timed alone in a fresh
  process with a Ray worker's thread settings; floor wall = max(decode wall, CPU s / cores);
* the staged baseline on the same inputs (bench/baseline.py), wall time, and how talkcurate's
  manifest covers the clips it keeps: each one kept by talkcurate too, rejected for a recorded
  reason, or not covered by any row (which should not happen);
* ratios end-to-end / floor and baseline / end-to-end, per case and for case `all`: with two or more
  cases, one more run of the pipeline and of the baseline over all their inputs together (Ray
  starts once, as for a user's run), whose floor is the cases' floors combined.

--memory-check builds 1-minute and 10-minute 1080p inputs (--memory-minutes to change) and runs
the pipeline on each, reporting each worker's peak memory (it should not grow with the input).
Prints tables and writes every number to JSON (default bench/results/<timestamp>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))  # the pipeline packages, also in the spawned processes

from baseline import baseline_coverage, run_staged_baseline  # noqa: E402
from compute_floor import combine_floors, measure_floor  # noqa: E402
from long_inputs import build_long_input  # noqa: E402
from process_sampler import ProcessSampler  # noqa: E402

from schemas.records import FPS  # noqa: E402

RAY_WORKER_ENV = {"OMP_NUM_THREADS": "1"}  # what Ray gives a 1-CPU task: the floor's model calls run the same way
STAGE_FLOOR = {  # the floor parts that stand for each stage's essential work
    "normalize": ["decode"],
    "face": ["face detection: mediapipe", "face detection: retinaface", "face landmarks: mesh"],
    "encode": ["encode: x264"],  # held clips; those too large to hold are encoded in scene_cut
    "transcribe": ["speech: VAD", "speech: whisper", "speech: whisper encoder (features)"],
}


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def in_fresh_process(fn, *args, env: dict[str, str] | None = None):
    """`fn(*args)` in a new spawned process (its memory and thread settings its own)."""
    with _environment(env or {}), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def run_pipeline(input_dir: str, out: str, overrides: list[str]) -> dict:
    """One end-to-end run of pipeline.run.run with memory sampling; meant for a fresh process."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import pyarrow.parquet as pq

    from pipeline.config import RunConfig
    from pipeline.definition import ALL_STAGES
    from pipeline.run import run

    config = RunConfig.load(None, overrides)
    with ProcessSampler() as processes:
        started = time.perf_counter()
        result = run([input_dir], out, config)
        wall = time.perf_counter() - started
    order = [cls.name for cls in ALL_STAGES]
    stages = dict(
        sorted(result.stage_stats.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    )
    rows = pq.read_table(Path(out) / "manifest.parquet", columns=["source", "source_duration_s"]).to_pylist()
    durations = {row["source"]: row["source_duration_s"] or 0.0 for row in rows}
    summary = result.summary
    return {
        "wall_s": wall,
        "cores": config.execution.num_cpus or os.cpu_count(),
        "stages": stages,
        "source_s": sum(durations.values()),
        "sources": summary["sources"],
        "kept": summary["kept"],
        "rejected": summary["rejected"],
        "rejected_by_reason": summary["rejected_by_reason"],
        "processes": processes.result(),
    }


# -- cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    input_dir: str
    files: list[str] = field(default_factory=list)
    pipeline: dict = field(default_factory=dict)
    floor: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)
    coverage: dict = field(default_factory=dict)  # the baseline's kept clips in talkcurate's manifest
    build_s: float | None = None  # seconds spent making the input (built cases only)
    load_before: float = 0.0  # 1-minute load average when the case started: other work skews timings


def bench_case(case: Case, work: Path, overrides: list[str], baseline: bool, floor: bool, cores: int) -> None:
    from pipeline.inputs import discover

    case.files = [s.uri for s in discover([case.input_dir]).sources]
    case.load_before = os.getloadavg()[0]
    out = work / f"out-{case.name}"
    shutil.rmtree(out, ignore_errors=True)
    print(f"[{case.name}] pipeline over {len(case.files)} files -> {out}", flush=True)
    case.pipeline = in_fresh_process(run_pipeline, case.input_dir, str(out), overrides)
    if floor:
        print(f"[{case.name}] compute floor", flush=True)
        case.floor = in_fresh_process(measure_floor, case.files, str(out), overrides, env=RAY_WORKER_ENV)
    if baseline:
        print(f"[{case.name}] staged baseline", flush=True)
        case.baseline = run_staged_baseline(case.input_dir, work / f"baseline-{case.name}", cores)
        if "error" not in case.baseline:
            case.coverage = baseline_coverage(case.baseline["kept_spans"], manifest_spans(out))


def manifest_spans(out: Path) -> list[dict]:
    """Every manifest row's source, span, status and reason."""
    import pyarrow.parquet as pq

    columns = ["source", "start_s", "end_s", "status", "reason"]
    return pq.read_table(out / "manifest.parquet", columns=columns).to_pylist()


def together_case(cases: list[Case], work: Path) -> Case:
    """Every case's inputs in one folder (links), for one run over all of them: what a user would
    run, and Ray starts once. Its floor is the cases' floors combined (the same clips)."""
    folder = work / "input-all"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for case in cases:
        for path in case.files:
            (folder / f"{case.name}-{Path(path).name}").symlink_to(Path(path).resolve())
    together = Case("all", str(folder))
    if all(c.floor for c in cases):
        together.floor = combine_floors([c.floor for c in cases])
    return together


def built_case(name: str, work: Path, minutes: float, size: tuple[int, int]) -> Case:
    folder = work / f"input-{name}"
    shutil.rmtree(folder, ignore_errors=True)
    print(f"building a {minutes:g} min {size[0]}x{size[1]} input in {folder}", flush=True)
    started = time.perf_counter()
    build_long_input(folder, minutes, size)
    return Case(name, str(folder), build_s=time.perf_counter() - started)


# -- derived numbers --------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratios(case: Case) -> dict:
    """End-to-end, floor and baseline walls of a case, and their ratios."""
    e2e, floor = case.pipeline["wall_s"], case.floor.get("wall_s")
    base = case.baseline.get("wall_s") if "error" not in case.baseline else None
    return {
        "e2e_wall_s": e2e,
        "floor_wall_s": floor,
        "baseline_wall_s": base,
        "e2e_over_floor": _ratio(e2e, floor),
        "baseline_over_e2e": _ratio(base, e2e),
    }


# -- report -----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if value < 1e4 else f"{value:.1e}"


def render_stages(cases: list[Case]) -> list[str]:
    lines = [
        "Stages (wall and CPU s summed over parallel workers; % e2e = stage wall / end-to-end wall, so parallel",
        "stages may add up past 100%; floor CPU s: the floor parts that stand for the stage's essential work)",
        f"{'case':<8} {'stage':<11} {'items':>6} {'wall s':>8} {'CPU s':>8} {'frames/s':>9} {'% e2e':>7} "
        f"{'floor CPU s':>12}",
    ]
    for case in cases:
        e2e = case.pipeline["wall_s"]
        parts = {"decode": case.floor["decode"], **case.floor["models"]} if case.floor else {}
        for name, s in case.pipeline["stages"].items():
            fps = s["video_s"] * FPS / s["wall_s"] if s["wall_s"] and s["video_s"] else None
            floor = [parts[p]["cpu_s"] for p in STAGE_FLOOR.get(name, []) if p in parts]
            lines.append(
                f"{case.name:<8} {name:<11} {s['items']:>6} {s['wall_s']:>8.2f} {s['cpu_s']:>8.2f} {_num(fps, 0):>9} "
                f"{s['wall_s'] / e2e:>7.1%} {_num(sum(floor) if floor else None):>12}"
            )
        lines.append(
            f"{case.name:<8} {'(end to end)':<11} {'':>6} {e2e:>8.2f} {'':>8} "
            f"{_num(case.pipeline['source_s'] * FPS / e2e, 0):>9} "
            f"{'':>7} {'':>12}"
        )
        cores, cpu = case.pipeline["cores"], case.pipeline["processes"]["cpu_s"]
        in_stages = sum(s["cpu_s"] for s in case.pipeline["stages"].values())
        lines.append(
            f"{case.name:<8} core-seconds of the run: {cores} x {e2e:.1f} = {cores * e2e:.1f}; CPU in stages "
            f"{in_stages:.1f}, "
            f"in workers outside stages {cpu['workers'] - in_stages:.1f}, driver {cpu['driver']:.1f}, "
            f"Ray services {cpu['ray services']:.1f}, other processes {cpu['other processes']:.1f}; "
            f"idle {cores * e2e - sum(cpu.values()):.1f}"
        )
    lines.append(
        "(workers outside stages: start-up, imports, model loading, Ray Data's task code; other processes:\n"
        " the rest of the machine's CPU use meanwhile, when cores are more than the run's)"
    )
    return lines


def render_floor(cases: list[Case]) -> list[str]:
    lines = [
        "Compute floor (each part timed alone, one process, OMP_NUM_THREADS=1 as in a Ray worker)",
        f"{'case':<8} {'part':<36} {'items':>14} {'wall s':>8} {'CPU s':>8} {'ms/item':>8}",
    ]
    for case in cases:
        if not case.floor:
            continue
        f = case.floor
        decode = f["decode"]
        lines.append(
            f"{case.name:<8} {'decode (threaded PyAV, each input once)':<36} "
            f"{str(decode['video_frames']) + ' frames':>14} "
            f"{decode['wall_s']:>8.2f} {decode['cpu_s']:>8.2f} "
            f"{_num(1000 * decode['cpu_s'] / max(decode['video_frames'], 1)):>8}"
        )
        for name, part in f["models"].items():
            per = 1000 * part["cpu_s"] / part["items"] if part["items"] else None
            amount = f"{part['items']:.0f} {part['unit']}"
            lines.append(
                f"{case.name:<8} {name:<36} {amount:>14} {part['wall_s']:>8.2f} {part['cpu_s']:>8.2f} {_num(per):>8}"
            )
        floor_name = f"floor: max(decode wall, CPU s / {f['cores']})"
        lines.append(f"{case.name:<8} {floor_name:<36} {'':>14} {f['wall_s']:>8.2f} {f['cpu_s']:>8.2f}")
        clips = f["clips"]
        lines.append(
            f"{case.name:<8} (clips: {clips['faces']} reached the face stage, {clips['speech']} transcription, "
            f"{clips['encode']} kept)"
        )
    return lines


def render_summary(cases: list[Case]) -> list[str]:
    def mem(key):
        return lambda c: f"{c.pipeline['processes'][key]:.0f}"

    rows = [
        ("input files", lambda c: str(len(c.files))),
        ("source video s", lambda c: f"{c.pipeline['source_s']:.1f}"),
        (f"load average before ({os.cpu_count()} CPUs)", lambda c: f"{c.load_before:.2f}"),
        ("end-to-end wall s", lambda c: _num(ratios(c)["e2e_wall_s"])),
        ("compute floor wall s", lambda c: _num(ratios(c)["floor_wall_s"])),
        ("staged baseline wall s", lambda c: _num(ratios(c)["baseline_wall_s"])),
        ("end-to-end / floor", lambda c: _num(ratios(c)["e2e_over_floor"])),
        ("staged baseline / end-to-end", lambda c: _num(ratios(c)["baseline_over_e2e"])),
        ("peak RSS driver MB", mem("driver_mb")),
        (
            "peak RSS per Ray worker MB (top 3)",
            lambda c: " ".join(f"{w['peak_mb']:.0f}" for w in c.pipeline["processes"]["workers"][:3]),
        ),
        (
            "  of it RssAnon (own heap) MB",
            lambda c: " ".join(f"{w['anon_peak_mb']:.0f}" for w in c.pipeline["processes"]["workers"][:3]),
        ),
        ("peak RSS sum, Ray session MB", mem("session_mb")),
        ("kept / rejected clips", lambda c: f"{c.pipeline['kept']} / {c.pipeline['rejected']}"),
        ("staged baseline kept clips", lambda c: str(c.baseline.get("clips_kept", "-"))),
        ("  of them kept by talkcurate", lambda c: str(c.coverage.get("kept", "-"))),
        (
            "  rejected for a reason",
            lambda c: str(sum(c.coverage["rejected_by_reason"].values())) if c.coverage else "-",
        ),
        ("  not covered by any row", lambda c: str(len(c.coverage["not_covered"])) if c.coverage else "-"),
    ]
    lines = [f"{'end to end':<36}" + "".join(f"{c.name:>24}" for c in cases)]
    for label, value in rows:
        lines.append(f"{label:<36}" + "".join(f"{value(c):>24}" for c in cases))
    for case in cases:
        if "error" in case.baseline:
            lines.append(f"[{case.name}] staged baseline failed: {case.baseline['error']}")
        rejected = ", ".join(f"{k} {v}" for k, v in case.pipeline["rejected_by_reason"].items())
        lines.append(f"[{case.name}] rejected: {rejected or 'none'}")
        if case.coverage:
            reasons = ", ".join(f"{k} {v}" for k, v in case.coverage["rejected_by_reason"].items())
            lines.append(f"[{case.name}] the staged baseline's kept clips that talkcurate rejects: {reasons or 'none'}")
            for span in case.coverage["not_covered"]:
                lines.append(
                    f"[{case.name}] NOT COVERED: the baseline's {span['clip']} ({span['source']} "
                    f"{span['start_s']:.2f}-{span['end_s']:.2f} s) overlaps no talkcurate row"
                )
    lines.append(
        "(session sum counts the driver, raylet, GCS and all workers; shared object-store pages count in each)"
    )
    return lines


def render_memory(cases: list[Case]) -> list[str]:
    lines = [
        "Memory check (peak per Ray worker process, MB: RSS, and in brackets RssAnon, its own heap without the",
        "object store's shared pages and mapped libraries)",
        f"{'input':<10} {'source s':>9} {'wall s':>8} {'driver':>7} {'largest worker':>15}  all workers",
    ]
    for case in cases:
        m = case.pipeline["processes"]
        lines.append(
            f"{case.name:<10} {case.pipeline['source_s']:>9.1f} {case.pipeline['wall_s']:>8.1f} {m['driver_mb']:>7.0f} "
            f"{m['worker_mb']:>7.0f} ({m['worker_anon_mb']:>4.0f})  "
            + " ".join(f"{w['peak_mb']:.0f} ({w['anon_peak_mb']:.0f})" for w in m["workers"])
        )
    if len(cases) > 1:
        first, last = cases[0].pipeline["processes"], cases[-1].pipeline["processes"]
        lines.append(
            f"largest worker, {cases[-1].name} / {cases[0].name}: RSS {last['worker_mb'] / first['worker_mb']:.2f}x, "
            f"RssAnon {last['worker_anon_mb'] / first['worker_anon_mb']:.2f}x"
        )
    return lines


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "input_dir", nargs="?", help="a folder of inputs (e.g. demo/media); optional with --memory-check"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/<timestamp>.json)")
    parser.add_argument("--work", type=Path, help="work folder for outputs and built inputs (default: a temporary one)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="pipeline option, as for talkcurate run"
    )
    parser.add_argument(
        "--long-minutes", type=float, default=0, help="also benchmark a long input of this many minutes (0: off)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the staged baseline")
    parser.add_argument("--no-floor", action="store_true", help="skip the compute floor")
    parser.add_argument(
        "--memory-check", action="store_true", help="peak worker memory on a short and a long 1080p input"
    )
    parser.add_argument(
        "--memory-minutes", default="1,10", help="lengths of the memory check's inputs, comma-separated (default 1,10)"
    )
    args = parser.parse_args(argv)
    if not args.input_dir and not args.memory_check:
        parser.error("give INPUT_DIR, --memory-check, or both")
    from pipeline.config import RunConfig

    overrides = ["execution.progress=false", *args.set]
    try:
        config = RunConfig.load(None, overrides)  # a bad --set fails before any work
        memory_minutes = [float(m) for m in args.memory_minutes.split(",")]
    except (KeyError, ValueError) as exc:
        parser.error(str(exc))
    cores = config.execution.num_cpus or os.cpu_count() or 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.work or Path(tempfile.mkdtemp(prefix="talkcurate-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    out = args.out or RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cases, memory_cases = [], []

    def write_results() -> None:  # after every case, so a run cut short keeps what it measured
        results = {
            "created": stamp,
            "input_dir": args.input_dir,
            "overrides": overrides,
            "cpus": os.cpu_count(),
            "cores": cores,
            "cases": [{**asdict(c), "ratios": ratios(c)} for c in cases if c.pipeline],
            "memory_check": [asdict(c) for c in memory_cases if c.pipeline],
        }
        out.write_text(json.dumps(results, indent=1))

    try:
        if args.input_dir:
            source = Path(args.input_dir).resolve()
            cases.append(Case(source.name[:8] or "input", str(source)))
        if args.long_minutes > 0:
            cases.append(built_case("long", work, args.long_minutes, (640, 360)))
        for case in cases:
            bench_case(case, work, overrides, baseline=not args.no_baseline, floor=not args.no_floor, cores=cores)
            write_results()
        if len(cases) > 1:
            cases.append(together_case(cases, work))
            bench_case(cases[-1], work, overrides, baseline=not args.no_baseline, floor=False, cores=cores)
            write_results()
        if args.memory_check:
            for minutes in memory_minutes:
                case = built_case(f"{minutes:g}min", work, minutes, (1920, 1080))
                memory_cases.append(case)
                bench_case(case, work, overrides, baseline=False, floor=False, cores=cores)
                write_results()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    lines = []
    if cases:
        lines += ["", *render_stages(cases), "", *render_floor(cases), "", *render_summary(cases)]
    if memory_cases:
        lines += ["", *render_memory(memory_cases)]
    print("\n".join(lines))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
