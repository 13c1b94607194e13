"""Cost of the paper metrics of `talkcurate evaluate`: Sync-C/D per second of video, and the Fréchet
distance (FID's 2048-D and FVD's 400-D features) per pair of feature sets.

    python bench/paper_metrics_bench.py [--syncnet syncnet_v2.model] [--repeats 3] [--samples 2048]
                                        [--device cpu] [--out RESULTS.json]

Sync-C/D: GRID's first clip (3 s, 25 fps), a fixed 160 px box around the speaker's face (resized
to 224 inside), its audio; SyncNet with --syncnet's weights or, without it, a randomly initialised
one in the same format (the speed does not depend on the weights). The first call (loading the
weights) is timed apart from the repeats. Fréchet distance: --samples random features per set
(the time is sqrtm's, which depends only on the dimension). Prints a table and writes JSON
(default bench/results/paper-metrics-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.media_io import decode_audio  # noqa: E402
from evaluate.realism import frechet_distance  # noqa: E402
from evaluate.syncnet_scores import sync_c_d  # noqa: E402
from stages.sync_models import syncnet_model_class  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GRID = ROOT / "demo" / "media" / "grid_bbaf2n.mpg"
FACE_BOX = (75, 100, 235, 260)  # x0, y0, x1, y1 of the speaker's face and chin in GRID's 360 x 288


def grid_face() -> tuple[np.ndarray, np.ndarray]:
    x0, y0, x1, y1 = FACE_BOX
    with av.open(str(GRID)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24")[y0:y1, x0:x1] for f in container.decode(video=0)])
    return frames, decode_audio(str(GRID)).astype(np.float32) / 32768


def timed(call, *args, **kwargs) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--syncnet", help="syncnet_v2.model (default: random weights in its format)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / f"paper-metrics-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()

    import torch

    frames, audio = grid_face()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        weights = args.syncnet
        if weights is None:
            weights = str(Path(work) / "syncnet_v2.model")
            torch.save(syncnet_model_class()().state_dict(), weights)
        first = timed(sync_c_d, weights, frames, audio, device=args.device)
        runs = [timed(sync_c_d, weights, frames, audio, device=args.device) for _ in range(args.repeats)]
    video_s = len(frames) / 25
    rows.append(
        {
            "metric": "sync_c_d",
            "input": f"{len(frames)} frames",
            "first_s": first,
            "median_s": float(np.median(runs)),
            "video_s_per_wall_s": video_s / float(np.median(runs)),
        }
    )

    rng = np.random.default_rng(0)
    for dim in (400, 2048):
        a = rng.standard_normal((args.samples, dim)).astype(np.float32)
        b = rng.standard_normal((args.samples, dim)).astype(np.float32) + 0.1
        runs = [timed(frechet_distance, a, b) for _ in range(args.repeats)]
        rows.append(
            {
                "metric": f"frechet_distance_{dim}d",
                "input": f"2 x {args.samples} x {dim}",
                "first_s": runs[0],
                "median_s": float(np.median(runs)),
                "video_s_per_wall_s": None,
            }
        )

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, SyncNet weights {args.syncnet or 'random'}")
    print(f"{'metric':<24} {'input':>18} {'first s':>8} {'median s':>9} {'video s / wall s':>17}")
    for row in rows:
        speed = "" if row["video_s_per_wall_s"] is None else f"{row['video_s_per_wall_s']:.2f}"
        print(f"{row['metric']:<24} {row['input']:>18} {row['first_s']:>8.2f} {row['median_s']:>9.2f} {speed:>17}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
