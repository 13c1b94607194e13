"""Training throughput of a preset on this machine, through the real trainer.

    python bench/train_bench.py SHARDS [--nproc 2] [--steps 30] [--set KEY=VALUE ...] [--out RESULTS.json]

SHARDS is a talkcurate run's output folder curated with `transcribe.store_features=true`. Runs
`torchrun --nproc_per_node N -m train` for the given steps (tiny preset unless overridden), then
reports from its metrics: steps, samples and tokens per second (the first steps, which include
start-up, are left out), and peak memory; prints a table and writes JSON (default
bench/results/train-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WARMUP_STEPS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="trainer option, as for python -m train"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / f"train-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    with tempfile.TemporaryDirectory() as work:
        command = [
            str(Path(sys.executable).with_name("torchrun")),
            "--nproc_per_node",
            str(args.nproc),
            "-m",
            "train",
            f"data.shards={args.shards}",
            f"out={work}",
            f"curriculum=[{{steps={args.steps}}}]",
            "metrics.every=1",
            "checkpoint.every=0",
            *args.set,
        ]
        started = time.perf_counter()
        subprocess.run(
            command, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        )
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(work) / "metrics.jsonl").read_text().splitlines()]
        config = (Path(work) / "config.toml").read_text()
    timed = records[WARMUP_STEPS:]
    summary = {
        "nproc": args.nproc,
        "steps": args.steps,
        "launch_wall_s": wall,
        "params": records[-1]["params"],
        "samples_per_s": sum(r["samples_per_s"] for r in timed) / len(timed),
        "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed),
        "max_rss_mb_rank0": max(r["max_rss_mb"] for r in records),
        "max_cuda_mb_rank0": max((r.get("max_cuda_mb", 0) for r in records), default=0),
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
    }
    print(f"{'metric':<26} value")
    for name, value in summary.items():
        print(f"{name:<26} {value:.4g}" if isinstance(value, float) else f"{name:<26} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"summary": summary, "overrides": args.set, "config": config, "steps": records}, indent=1)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
