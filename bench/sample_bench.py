"""Generation speed of `talkcurate sample`: seconds of video per wall second, by window count.

    python bench/sample_bench.py [--checkpoint RUN] [--config configs/train-tiny.toml] [--windows 1 2 4 8]
                                 [--steps 30] [--order 1] [--window 16] [--overlap 5] [--device cpu]
                                 [--out RESULTS.json]

For each window count n, speech long enough for exactly n windows (JFK's 10 s, repeated and cut)
goes through `train.generate.generate` with guidance on (three predictions per evaluation), and
the whole call is timed: Whisper features, denoising, decoding and H.264 writing. Without
--checkpoint the model of --config is freshly initialised: the speed does not depend on the
weights. Prints a table and writes JSON (default bench/results/sample-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.media_io import decode_audio  # noqa: E402
from schemas.records import SAMPLE_RATE  # noqa: E402
from train.config import load_config  # noqa: E402
from train.denoising import SamplerConfig, window_starts  # noqa: E402
from train.editing import frames_at_25fps  # noqa: E402
from train.generate import WindowConfig, build, generate, load_trained  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SPEECH = ROOT / "tests" / "data" / "jfk_10s.ogg"
PORTRAIT = ROOT / "demo" / "media" / "grid_bbaf2n.mpg"


def frames_for(windows: int, window: WindowConfig) -> int:
    """The frame count that makes exactly `windows` windows."""
    frames = window.frames + (windows - 1) * (window.frames - window.overlap)
    assert len(window_starts(frames, window.frames, window.overlap)) == windows
    return frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="training run folder (default: a fresh model of --config)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "train-tiny.toml"))
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--order", type=int, default=1, choices=(1, 2))
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / f"sample-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args()

    trained = (
        load_trained(args.checkpoint, device=args.device)
        if args.checkpoint
        else build(load_config(args.config), args.device)
    )
    window = WindowConfig(args.window, args.overlap)
    sampler = SamplerConfig(steps=args.steps, order=args.order)
    speech = decode_audio(str(SPEECH))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        portrait = Path(work) / "face.png"
        cv2.imwrite(str(portrait), cv2.cvtColor(next(frames_at_25fps(PORTRAIT)), cv2.COLOR_RGB2BGR))
        for windows in args.windows:
            frames = frames_for(windows, window)
            samples = frames * SAMPLE_RATE // 25
            path = Path(work) / f"speech-{windows}.wav"
            soundfile.write(path, np.resize(speech, samples), SAMPLE_RATE, subtype="PCM_16")
            started = time.perf_counter()
            written = generate(
                trained, portrait, path, Path(work) / f"out-{windows}.mp4", "a person speaking", sampler, window
            )
            wall = time.perf_counter() - started
            rows.append(
                {
                    "windows": windows,
                    "frames": written,
                    "video_s": written / 25,
                    "wall_s": wall,
                    "video_s_per_wall_s": written / 25 / wall,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
    height, width = trained.config.data.resolution
    print(
        f"preset {trained.config.model.preset}, {height}x{width}, {args.steps} steps, order {args.order}, "
        f"window {args.window} overlap {args.overlap}, {args.device}"
    )
    print(f"{'windows':>7} {'frames':>6} {'video s':>8} {'wall s':>8} {'video s / wall s':>17} {'peak RSS MB':>12}")
    for row in rows:
        print(
            f"{row['windows']:>7} {row['frames']:>6} {row['video_s']:>8.2f} {row['wall_s']:>8.2f} "
            f"{row['video_s_per_wall_s']:>17.3f} {row['peak_rss_mb']:>12.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "preset": trained.config.model.preset,
                "resolution": [height, width],
                "steps": args.steps,
                "order": args.order,
                "window": args.window,
                "overlap": args.overlap,
                "device": args.device,
                "checkpoint": args.checkpoint,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
