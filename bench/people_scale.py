"""How finding people (pipeline/people.py) grows with the number of clips: planted people in
synthetic identity embeddings, 10,000 to 1,000,000 clips, each size in its own process.

Embeddings are shaped like the default model's (dlib's ResNet, 128-d) on real faces: a direction
shared by all faces, one per person and noise per clip, mixed so that one person's clips measure
about 0.985 and two people's about 0.88 (tests/test_people.py uses the same shape). People have 1 to
40 clips (geometric, mean 10). The run's own path is timed: a manifest table with the embedding
column, `assign` on it.

Prints a table and writes JSON (default bench/results/people_scale.json): wall seconds, peak resident
memory of the process, people found against planted, found people holding two planted ones, and
planted people split over two ids.

    python bench/people_scale.py [--sizes 10000,100000,1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

DIMS = 128


def planted_people(clips: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.geometric(0.1, size=clips), 40)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), clips) + 1]
    person = np.repeat(np.arange(len(sizes)), sizes)[:clips]
    embeddings = np.empty((clips, DIMS), np.float32)
    shared = _unit(rng, 1)[0]
    directions = _unit(rng, len(sizes))
    for start in range(0, clips, 100_000):  # in blocks: float64 temporaries stay small
        stop = min(clips, start + 100_000)
        mixed = np.sqrt(0.88) * shared + np.sqrt(0.105) * directions[person[start:stop]]
        embeddings[start:stop] = mixed + np.sqrt(0.015) * _unit(rng, stop - start)
    return embeddings, person


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIMS))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def measure(clips: int) -> dict:
    from pipeline.people import assign

    embeddings, person = planted_people(clips)
    keys = [f"{i:016x}_00000000" for i in range(clips)]
    flat = pa.array(embeddings.reshape(-1))
    table = pa.table(
        {
            "key": keys,
            "status": pa.array(["kept"] * clips),
            "identity_backend": pa.array(["dlib-resnet"] * clips),
            "identity_embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(0, clips * DIMS + 1, DIMS, np.int32)), flat
            ),
        }
    )
    del embeddings, flat
    started = time.perf_counter()
    ids = assign(table)
    wall = time.perf_counter() - started
    planted_of, found_of = defaultdict(set), defaultdict(set)
    for key, truth in zip(keys, person.tolist()):
        planted_of[ids[key]].add(truth)
        found_of[truth].add(ids[key])
    return {
        "clips": clips,
        "planted_people": len(found_of),
        "found_people": len(planted_of),
        "impure_found": sum(len(v) > 1 for v in planted_of.values()),
        "split_planted": sum(len(v) > 1 for v in found_of.values()),
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def scale_main(script: str, doc: str, name: str, measure: Callable[[int], dict]) -> None:
    """The command line of a scaling benchmark: `measure(size)` for each size in its own process (a
    fresh peak memory), a table on stdout and JSON under bench/results/NAME_scale.json."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--out", default=str(Path(script).with_name("results") / f"{name}_scale.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process measuring one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    results = []
    for size in map(int, args.sizes.split(",")):
        done = subprocess.run([sys.executable, script, "--one", str(size)], capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], file=sys.stderr)
    header = tuple(results[0])
    print(" | ".join(header))
    for row in results:
        print(" | ".join(str(row[key]) for key in header))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({name: results}, indent=1))


def main() -> None:
    scale_main(__file__, __doc__, "people", measure)


if __name__ == "__main__":
    main()
