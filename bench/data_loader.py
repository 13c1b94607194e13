"""Training data loader throughput over a run's shards.

    python bench/data_loader.py RUN_DIR [--resolution H W] [--num-frames N] [--stride S]
                                [--batch-size B] [--num-workers W] [--epochs E]

Reads E epochs through `ClipLoader` (one rank) and prints samples and batches per second, after
the first batch (worker start-up and the shards' member tables) and overall.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.data import DataConfig  # noqa: E402
from train.loader import ClipLoader  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--resolution", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    config = DataConfig(
        shards=args.run_dir,
        resolution=tuple(args.resolution),
        num_frames=args.num_frames,
        frame_stride=args.stride,
        num_workers=args.num_workers,
    )
    loader = ClipLoader(config, args.batch_size)
    start = time.perf_counter()
    first = None
    samples = batches = 0
    for _ in range(args.epochs):
        for batch in loader:
            first = first or time.perf_counter()
            samples, batches = samples + len(batch.key), batches + 1
    end = time.perf_counter()
    steady = (samples - args.batch_size) / (end - first) if batches > 1 else float("nan")
    print(
        f"{samples} samples in {batches} batches of {tuple(batch.video.shape)} over {args.epochs} epochs, "
        f"{args.num_workers} workers: {samples / (end - start):.1f} samples/s overall, "
        f"{steady:.1f} after the first batch ({(first - start):.2f} s to the first)"
    )


if __name__ == "__main__":
    main()
