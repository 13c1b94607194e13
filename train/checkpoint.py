"""Distributed checkpoints that resume a run exactly.

A checkpoint is a folder `step-N` under the run's checkpoint folder:

* the model and optimizer state through `torch.distributed.checkpoint` (`.metadata` plus one
  `.distcp` file per rank; each rank writes its own shards, and a checkpoint can be loaded on a
  different number of ranks);
* `rank-R.pt` per rank: what differs between ranks and is not a tensor of the model, the state
  of its data sampler, its random number generators, and the trainer's own state (step,
  curriculum stage), written with `torch.save`.

A checkpoint is written under `step-N.tmp` and renamed once every rank has finished, so a run
killed while writing leaves no folder that looks complete; older checkpoints beyond `keep` are
deleted after the rename.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

_STEP = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Writes and finds `step-N` checkpoints in `folder` (shared by every rank)."""

    def __init__(self, folder: str | Path, keep: int = 3):
        self.folder = Path(folder)
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir())

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, rank_state: dict[str, Any]) -> Path:
        rank = dist.get_rank()
        final, partial = self.folder / f"step-{step}", self.folder / f"step-{step}.tmp"
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(partial))
        torch.save({**rank_state, "rng": rng_state()}, partial / f"rank-{rank}.pt")
        dist.barrier()
        if rank == 0:
            partial.rename(final)
            for old in self.steps()[: -self.keep] if self.keep > 0 else []:
                shutil.rmtree(self.folder / f"step-{old}", ignore_errors=True)
        dist.barrier()
        return final

    def load(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer and this rank's random state; returns this rank's saved state."""
        path = self.folder / f"step-{step}"
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        rank_file = path / f"rank-{dist.get_rank()}.pt"
        if not rank_file.is_file():
            raise FileNotFoundError(
                f"{rank_file} is missing: the checkpoint was written by fewer ranks than this run has"
            )
        rank_state = torch.load(rank_file, weights_only=False)
        set_rng_state(rank_state.pop("rng"))
        return rank_state
