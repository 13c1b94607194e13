"""The staged baseline (../shared/tools/staged_baseline.py: one pass per stage over intermediate
files, a process pool per stage, LatentSync's structure) on the same inputs, in this environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGED_BASELINE = ROOT.parent / "shared" / "tools" / "staged_baseline.py"


def run_staged_baseline(input_dir: str, out: Path, workers: int) -> dict:
    """Wall time of one staged-baseline run over `input_dir`, with its own per-stage times and counts."""
    if not STAGED_BASELINE.is_file():
        return {"error": f"{STAGED_BASELINE} not found"}
    shutil.rmtree(out, ignore_errors=True)
    # Its stages call the `scenedetect` command, which lives next to this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(STAGED_BASELINE), input_dir, str(out), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode:
        tail = done.stdout.decode(errors="replace").strip().splitlines()[-5:]
        return {"wall_s": wall, "error": f"exit {done.returncode}: " + " | ".join(tail)}
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": wall,
        "stage_wall_s": summary["stage_wall_s"],
        "clips_after_segment": summary["clips_after_segment"],
        "clips_kept": summary["clips_kept"],
        "kept_seconds": summary["kept_seconds"],
        "children_cpu_s": summary["children_cpu_s"],
    }
