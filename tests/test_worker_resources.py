"""What a worker's models cost beyond their work: thread pools sized to the worker's CPUs, and no
heavy import for a small table. Each check runs in a fresh interpreter, as a Ray worker starts,
because thread settings and imports are per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from media import GRID

from stages.face_models import RetinaFaceDetector

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def _first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def test_retinaface_runs_on_the_workers_threads_with_the_same_faces(tmp_path):
    frame = tmp_path / "frame.npy"
    np.save(frame, _first_frame(GRID[0]))
    code = (
        "import json, numpy as np, retinaface\n"
        "from stages.face_models import RetinaFaceDetector\n"
        f"faces = RetinaFaceDetector(0.5, 320).detect([np.load({str(frame)!r})])[0]\n"
        "print(json.dumps([retinaface.ONNX_SESSION.get_session_options().intra_op_num_threads,"
        " [[float(v) for v in f.box] + [float(f.score)] for f in faces]]))\n"
    )
    threads, faces = json.loads(_python(code, OMP_NUM_THREADS="1"))  # what Ray gives a 1-CPU task
    assert threads == 1
    expected = RetinaFaceDetector(0.5, 320).detect([np.load(frame)])[0]  # ORT's default threads
    assert len(faces) == len(expected) == 1
    assert faces[0] == [float(v) for v in expected[0].box] + [float(expected[0].score)]


def test_caption_language_names_do_not_load_torch():
    code = (
        "import sys\nfrom stages.caption_embedded import language_name\n"
        "print(language_name('en'), language_name('de'), language_name('xx'), 'torch' in sys.modules)"
    )
    assert _python(code) == "English German xx False"


def test_the_runs_workers_run_at_normal_priority():
    """Ray starts workers at niceness 15; beside any CPU-bound process they then starve (6% of a
    core each, a 40 s run past 10 minutes). The local instance a run starts keeps them at 0."""
    code = (
        "import os, ray\n"
        "from pipeline.config import RunConfig\n"
        "from pipeline.executor import ray_session\n"
        "config = RunConfig()\n"
        "config.execution.num_cpus = 1\n"
        "with ray_session(None, config):\n"
        "    print(ray.get(ray.remote(lambda: os.nice(0)).remote()))\n"
    )
    assert _python(code) == "0"
