"""Would fewer identity samples decide alike? The face stage's identity on real clips with its
`face.identity_samples` frames, and with the evenly spread subsets of them that fewer samples pick.

    python bench/identity_samples.py INPUT... [--fewer 3,2] [--set KEY=VALUE ...] [--out RESULTS.json]

INPUT: files or folders. Every clip that reaches the face stage goes through it (bench/face_work.py's
chain, one process); for each face the stage embeds, the embeddings of its sampled frames are kept.
With N samples the stage picks frames linspace(0, n-1, N): 3 picks are the 1st, 3rd and 5th of 5, and
2 the 1st and 5th, so each smaller count is computed from the same embeddings, without new model
calls. Reported per count: the identity_changed decisions that differ from the configured count's,
the lowest consistency among faces it passes and the highest among those it rejects (the margins to
the backend's minimum), and whether `talkcurate people` groups the faces past the stage alike
(pipeline/people.py on their mean embeddings). Writes every face's numbers to JSON (default
bench/results/identity_samples-<timestamp>.json).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the native libraries load, as in a Ray worker

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face_work import candidate_clips, face_rows  # noqa: E402
from results_file import write_results  # noqa: E402

from pipeline.config import RunConfig  # noqa: E402
from pipeline.inputs import discover  # noqa: E402
from pipeline.people import assign  # noqa: E402
from schemas.records import Status  # noqa: E402
from stages.face import FaceStage, identity_consistency  # noqa: E402


def subset(count: int, of: int) -> np.ndarray:
    """Which of `of` evenly spread picks `count` evenly spread picks are (first and last included)."""
    return np.linspace(0, of - 1, count).round().astype(int)


def recording_stage(stage: FaceStage, faces: dict[int, np.ndarray]) -> FaceStage:
    """`stage`, set up, keeping the embeddings of each face it identifies (by the FaceResult's id)."""
    stage.setup()
    identify, embed, last = stage._identify, stage._identity.embed, {}

    def embedding(batch):
        last["embeddings"] = embed(batch)
        return last["embeddings"]

    def identifying(frames, landmarks, result):
        last["embeddings"] = None
        identify(frames, landmarks, result)
        if last["embeddings"] is not None:
            faces[id(result)] = (result, last["embeddings"])

    stage._identity.embed, stage._identify = embedding, identifying
    return stage


def measure(inputs: list[str], overrides: list[str], fewer: list[int]) -> dict:
    config = RunConfig.load(None, overrides)
    configured: FaceStage = config.stages[FaceStage.name]
    recorded: dict[int, tuple] = {}
    stage = recording_stage(configured, recorded)
    minimum, samples = stage._min_consistency, configured.identity_samples
    counts = [samples, *(c for c in fewer if 2 <= c < samples)]
    faces = []
    for source in discover(inputs).sources:
        for clip in candidate_clips(config, source):
            rows, _ = face_rows(stage, clip)
            passed = {id(f) for r in rows if r.status is Status.PENDING for f in (r.face, *r.face.candidates)}
            for key, (face, embeddings) in list(recorded.items()):
                record = {"source": source.uri, "start_frame": clip.start_frame, "passed": key in passed}
                for count in counts:
                    chosen = embeddings[subset(count, len(embeddings))] if len(embeddings) == samples else embeddings
                    mean = chosen.mean(axis=0)
                    record[count] = {
                        "consistency": identity_consistency(chosen),
                        "embedding": (mean / max(np.linalg.norm(mean), 1e-12)).tolist(),
                    }
                assert np.isclose(record[samples]["consistency"], face.identity_consistency, atol=1e-6)
                faces.append(record)
            recorded.clear()
            print(
                f"  {Path(source.uri).name[:56]:<56} {clip.num_frames:>4} frames "
                + " ".join(f"{r.reason or 'passed'}" for r in rows),
                flush=True,
            )
    return {
        "inputs": inputs,
        "minimum": minimum,
        "counts": counts,
        "faces": faces,
        "summary": summarize(faces, counts, minimum, stage._identity.name),
    }


def summarize(faces: list[dict], counts: list[int], minimum: float, backend: str) -> dict:
    base = counts[0]
    passed = [f for f in faces if f["passed"]]
    keys = [f"{f['source']}#{f['start_frame']}#{i}" for i, f in enumerate(passed)]

    def people(count: int) -> list[frozenset]:
        table = pa.table(
            {
                "key": keys,
                "status": ["kept"] * len(keys),
                "identity_backend": [backend] * len(keys),
                "identity_embedding": [f[count]["embedding"] for f in passed],
            }
        )
        groups: dict[str, set] = {}
        for key, person in assign(table).items():
            groups.setdefault(person, set()).add(key)
        return sorted(map(frozenset, groups.values()), key=sorted)

    base_people = people(base) if passed else []
    summary = {}
    for count in counts:
        values = np.array([f[count]["consistency"] for f in faces])
        rejects = values < minimum
        base_rejects = np.array([f[base]["consistency"] < minimum for f in faces])
        summary[count] = {
            "faces": len(faces),
            "identity_changed": int(rejects.sum()),
            "decisions_differing": int((rejects != base_rejects).sum()),
            "lowest_passing": float(values[~rejects].min()) if (~rejects).any() else None,
            "highest_rejected": float(values[rejects].max()) if rejects.any() else None,
            "people": len(people(count)) if passed else 0,
            "people_as_with_all": (people(count) == base_people) if passed else True,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="files or folders")
    parser.add_argument("--fewer", default="3,2", help="smaller sample counts to compare (default 3,2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a configuration override")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/identity_samples-<timestamp>.json)"
    )
    args = parser.parse_args()
    results = measure(args.inputs, args.set, [int(c) for c in args.fewer.split(",")])
    print(f"\nidentity minimum {results['minimum']}")
    print(
        f"{'samples':>7} {'faces':>5} {'identity_changed':>16} {'differing':>9} {'lowest passing':>14} "
        f"{'highest rejected':>16} {'people':>6} {'same people':>11}"
    )
    for count, row in results["summary"].items():
        low, high = row["lowest_passing"], row["highest_rejected"]
        print(
            f"{count:>7} {row['faces']:>5} {row['identity_changed']:>16} {row['decisions_differing']:>9} "
            f"{'-' if low is None else f'{low:.4f}':>14} {'-' if high is None else f'{high:.4f}':>16} "
            f"{row['people']:>6} {str(row['people_as_with_all']):>11}"
        )
    write_results(results, "identity_samples", args.out)


if __name__ == "__main__":
    main()
