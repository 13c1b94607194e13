"""`python -m train.held_out RUN STEP`: sample each held-out reference of a training run
(`evaluation.references` in its config.toml) from the checkpoint of STEP, score the samples with
`talkcurate evaluate`'s measurements, and print one JSON line of scores for metrics.jsonl.

The trainer runs it in a process of its own on rank 0 (train/trainer.py), so the checkpoint loads
as `talkcurate sample` loads it, on one process, whatever the training's process group is. The
samples and their full reports stay in RUN/evaluation/step-N/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from evaluate.evaluation import EvaluationConfig, Evaluator
from evaluate.output import write_json
from train.config import HeldOutConfig
from train.denoising import SamplerConfig
from train.generate import generate, load_trained


def scores(report: dict) -> dict:
    """The numbers of one sample's report that metrics.jsonl keeps."""
    sync, identity, face = report["sync"], report["identity"], report["face"]
    whole = sync["whole"] if sync else {}
    return {
        "name": report["name"],
        "error": report["error"],
        **{f"sync_{key}": whole.get(key) for key in ("offset_ms", "confidence", "confidence_at_zero", "verdict")},
        "identity_mean": identity and identity["mean"],
        "identity_min": identity and identity["min"],
        "face_found_share": face and face["found_share"],
        "jitter": face and face["jitter"],
        "mouth_std": face and face["mouth"]["std"],
    }


def evaluate_checkpoint(run: Path, step: int) -> dict:
    """Sample and score every held-out reference at `step`; the record metrics.jsonl gets."""
    trained = load_trained(run, step)
    config: HeldOutConfig = trained.config.evaluation
    folder = run / "evaluation" / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(EvaluationConfig())
    samples = []
    for index, reference in enumerate(config.references):
        video = folder / f"reference-{index}.mp4"
        generate(
            trained,
            reference.image or None,
            reference.audio,
            video,
            sampler=SamplerConfig(steps=config.steps),
            reference_video=reference.video or None,
        )
        face = evaluator.reference(reference.image or reference.video)
        report = evaluator.evaluate(video, face)
        write_json(folder / f"reference-{index}.json", report)
        samples.append(scores(report))
    return {"step": step, "evaluation": {"samples": samples, "sync_pooled": evaluator.pooled_sync()}}


# What torchrun tells its workers; the evaluation process is not one of them.
_TORCHRUN_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def run_apart(run: Path, step: int) -> dict:
    """`evaluate_checkpoint` in a process of its own (this module's main); a failure is recorded, not raised:
    training goes on."""
    env = {key: value for key, value in os.environ.items() if key not in _TORCHRUN_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-m", "train.held_out", str(run), str(step)], capture_output=True, text=True, env=env
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"step": step, "evaluation": {"error": done.stderr.strip()[-2000:] or f"exit status {done.returncode}"}}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    run, step = (argv if argv is not None else sys.argv[1:])[:2]
    warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
    print(json.dumps(evaluate_checkpoint(Path(run), int(step))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
