"""Sample lists of one split of bench/sync_people.json, from a run over the development corpus.

    python bench/sync_people.py RUN_DIR --split train --list train.json

How the shipped lip-sync model (stages/models/lip_sync.npz) was made, from the repository root:

    talkcurate run ../shared/media/talking demo/media/grid_*.mpg demo/media/latentsync_demo1_video.mp4 \\
        --out corpus-run --set sync.mode=measure
    python bench/sync_people.py corpus-run --split train --list train.json
    talkcurate train-sync train.json --out stages/models/lip_sync.npz

`sync.mode=measure` keeps the corpus's audio as it was published (nothing shifted, nothing
rejected for sync); the list keeps the split's single-face clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.storage import OutputDir  # noqa: E402
from pipeline.subset import write_sample_list  # noqa: E402

PEOPLE = Path(__file__).resolve().parent / "sync_people.json"


def predicate(split: str) -> str:
    """The manifest rows of the split's files with one face (a row names its source relative to the
    run's input: the file's name, or a path ending in it)."""
    files = [name for names in json.loads(PEOPLE.read_text())[split].values() for name in names]
    sources = " or ".join(f"source = '{name}' or source like '%/{name}'" for name in files)
    return f"({sources}) and num_faces = 1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run's output folder over the corpus")
    parser.add_argument("--split", required=True, choices=("train", "tune", "test"))
    parser.add_argument("--list", required=True, metavar="FILE.json", help="the sample list to write")
    args = parser.parse_args()
    selected = write_sample_list(OutputDir(args.run), predicate(args.split), args.list)
    print(f"{args.list}: {selected} samples of {args.run} ({args.split})")


if __name__ == "__main__":
    main()
