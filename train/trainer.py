"""The training loop: curriculum stages in order, FSDP2 model, exact resume, metrics.

Every rank builds the model on the meta device, shards it block by block (train/parallelize.py),
then allocates and initializes only its own shards, so a 14B model never exists whole on a rank.
The latent space and the caption encoder are frozen and replicated. Each step encodes the
batch, draws time, noise and condition dropout from the rank's own generator, and takes one
AdamW step on the parameters the current curriculum stage trains.

Everything a resumed run needs to continue exactly is in the checkpoint: model and optimizer
shards, and per rank the data loader's position, the generator, the global RNG states, the
step and the curriculum stage. A run started again with the same folder continues from the
newest checkpoint and produces the same losses an uninterrupted run does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from core.config import render
from train.checkpoint import Checkpointer
from train.config import CurriculumStage, JobConfig, model_config
from train.data import Batch
from train.latents import build_latent_space
from train.loader import ClipLoader
from train.loss import REGIONS, LossConfig, flow_matching_loss
from train.model import Conditions, TalkingDiT, is_audio_parameter
from train.parallelize import parallelize
from train.text_encoder import TextEncoder

log = logging.getLogger("train")


def _stage_loss(config: LossConfig, stage: CurriculumStage) -> LossConfig:
    changes = {
        name: getattr(stage, name)
        for name in ("text_dropout", "audio_dropout", "reference_dropout")
        if getattr(stage, name) >= 0
    }
    return dataclasses.replace(config, **changes)


class Trainer:
    def __init__(self, config: JobConfig, mesh: DeviceMesh, device: torch.device):
        self.config = config
        self.device = device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.out = Path(config.out)
        self.latents = build_latent_space(config.latents).to(device).eval().requires_grad_(False)
        self.text = TextEncoder(config.text, device)
        torch.manual_seed(config.seed)
        with torch.device("meta"):
            model = TalkingDiT(model_config(config.model, self.latents, self.text.dim))
        self.model = parallelize(model, mesh, config.parallel, device)
        self.model.to_empty(device=device)
        with torch.no_grad():
            self.model.init_weights()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            weight_decay=config.optim.weight_decay,
        )
        self.generator = torch.Generator(device).manual_seed(config.seed * 1000 + self.rank)
        self.checkpoints = Checkpointer(self.out / "checkpoints", config.checkpoint.keep)
        self.step = 0  # optimizer steps done, over all stages
        self.stage_index = 0
        self.stage_step = 0  # steps done in the current stage
        self.loader: ClipLoader | None = None
        self._loader_state: dict | None = None
        self.metrics: list[dict] = []
        self._tensorboard = (
            _tensorboard_writer(self.out / "tensorboard") if config.metrics.tensorboard and self.rank == 0 else None
        )

    # -- state -------------------------------------------------------------------------------

    def _rank_state(self) -> dict:
        return {
            "step": self.step,
            "stage_index": self.stage_index,
            "stage_step": self.stage_step,
            "loader": self.loader.state_dict() if self.loader else self._loader_state,
            "generator": self.generator.get_state(),
        }

    def resume(self) -> bool:
        step = self.checkpoints.latest() if self.config.checkpoint.resume else None
        if step is None:
            return False
        state = self.checkpoints.load(step, self.model, self.optimizer)
        self.step, self.stage_index, self.stage_step = state["step"], state["stage_index"], state["stage_step"]
        self._loader_state = state["loader"]
        self.generator.set_state(state["generator"])
        if self.rank == 0:
            log.info("resumed from step %d (stage %d, step %d of it)", self.step, self.stage_index, self.stage_step)
        return True

    def save(self) -> None:
        if self.checkpoints.latest() == self.step:
            return  # the last step was a checkpoint step too: it is saved already
        path = self.checkpoints.save(self.step, self.model, self.optimizer, self._rank_state())
        if self.rank == 0:
            log.info("checkpoint %s", path)

    # -- the loop ----------------------------------------------------------------------------

    def _loader_for(self, stage: CurriculumStage) -> ClipLoader:
        data = dataclasses.replace(self.config.data, num_frames=stage.num_frames or self.config.data.num_frames)
        loader = ClipLoader(data, self.config.batch_size, self.rank, self.world, pin_memory=self.device.type == "cuda")
        if self._loader_state is not None:
            loader.load_state_dict(self._loader_state)
            self._loader_state = None
        return loader

    def _set_trainable(self, stage: CurriculumStage) -> None:
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(stage.trainable == "all" or is_audio_parameter(name))

    def _lr(self, stage: CurriculumStage) -> float:
        lr = stage.lr or self.config.optim.lr
        warmup = self.config.optim.warmup_steps
        return lr * min(1.0, (self.stage_step + 1) / warmup) if warmup else lr

    def train(self) -> list[dict]:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.toml").write_text(render(self.config))
        self.resume()
        every = self.config.checkpoint.every
        while self.stage_index < len(self.config.curriculum):
            stage = self.config.curriculum[self.stage_index]
            self._set_trainable(stage)
            loss_config = _stage_loss(self.config.loss, stage)
            self.loader = self._loader_for(stage)
            window = _Window()
            while self.stage_step < stage.steps:
                for batch in self.loader:
                    record = self._train_step(batch, stage, loss_config, window)
                    if record is not None:
                        self.metrics.append(record)
                    if self.config.stop_after and self.step >= self.config.stop_after:
                        self.save()
                        return self.metrics
                    if every and self.step % every == 0:
                        self.save()
                    if self.config.evaluation.every and self.step % self.config.evaluation.every == 0:
                        self.save()
                        self._evaluate_held_out()
                    if self.stage_step >= stage.steps:
                        break
            self.stage_index += 1
            self.stage_step = 0
            self._loader_state = None
            self.loader = None
        self.save()
        return self.metrics

    def _evaluate_held_out(self) -> None:
        """Rank 0 samples and scores the held-out references from the checkpoint just written
        (train/held_out.py, in a process of its own) into metrics.jsonl; the other ranks wait."""
        if self.rank == 0:
            from train.held_out import run_apart  # the evaluation's models load in that process only

            record = run_apart(self.out, self.step)
            log.info("held-out evaluation at step %d: %s", self.step, json.dumps(record["evaluation"])[:500])
            self.metrics.append(record)
            with open(self.out / "metrics.jsonl", "a") as stream:
                stream.write(json.dumps(record) + "\n")
        dist.barrier()

    def _train_step(
        self, batch: Batch, stage: CurriculumStage, loss_config: LossConfig, window: _Window
    ) -> dict | None:
        started = time.perf_counter()
        batch = batch.to(self.device, non_blocking=True)
        with torch.no_grad():
            latents = self.latents.encode(batch.video)
            reference = self.latents.encode_image(batch.reference)
            text, text_mask = self.text(batch.caption)
        b = latents.shape[0]
        cond = Conditions(
            text=text,
            text_mask=text_mask,
            audio=batch.audio,
            reference=reference,
            reference_keep=torch.ones(b, device=self.device),
        )
        out = flow_matching_loss(
            self.model, latents, cond, batch.face_mask, batch.lip_mask, loss_config, self.generator
        )
        out.loss.backward()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(trainable, self.config.optim.grad_clip or float("inf"))
        lr = self._lr(stage)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.stage_step += 1
        pt, ph, pw = self.model.config.patch_size
        tokens = latents.shape[2] // pt * (latents.shape[3] // ph) * (latents.shape[4] // pw) * b
        window.add(out, b, tokens, time.perf_counter() - started)
        if self.step % self.config.metrics.every and self.stage_step < stage.steps:
            return None
        return self._log(
            window.take(), stage, lr, float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm), batch.key
        )

    def _log(self, window: dict, stage: CurriculumStage, lr: float, grad_norm: float, keys: list[str]) -> dict:
        """Averages over the ranks and the steps since the last log; rank 0 prints and appends JSONL."""
        names = [
            "loss",
            "samples",
            "tokens",
            "seconds",
            *(f"{r}_loss_sum" for r in REGIONS),
            *(f"{r}_area" for r in REGIONS),
        ]
        totals = torch.tensor(
            [window[n] for n in names], dtype=torch.float64, device=self.device
        )  # NCCL reduces device tensors only
        dist.all_reduce(totals)
        total = dict(zip(names, totals.tolist()))
        seconds = total["seconds"] / self.world  # wall time of the window, averaged over ranks
        record = {
            "step": self.step,
            "stage": stage.name,
            "lr": lr,
            "grad_norm": grad_norm,
            "loss": total["loss"] / (window["steps"] * self.world),
            **{
                f"{r}_loss": total[f"{r}_loss_sum"] / total[f"{r}_area"] if total[f"{r}_area"] else None
                for r in REGIONS
            },
            "samples_per_s": total["samples"] / seconds,
            "tokens_per_s": total["tokens"] / seconds,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # How the parameters are split: this rank holds `params_local` of `params` (FSDP shards).
            "params": sum(p.numel() for p in self.model.parameters()),
            "params_local": sum(
                (p.to_local() if hasattr(p, "to_local") else p).numel() for p in self.model.parameters()
            ),
            "keys": list(keys),  # rank 0's clips of the step just taken: which samples the sampler gave
        }
        if self.device.type == "cuda":
            record["max_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.rank == 0:
            log.info(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            with open(self.out / "metrics.jsonl", "a") as stream:
                stream.write(json.dumps(record) + "\n")
            if self._tensorboard is not None:
                for name, value in record.items():
                    if isinstance(value, (int, float)) and name != "step":
                        self._tensorboard.add_scalar(name, value, self.step)
                self._tensorboard.flush()
        return record


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError("metrics.tensorboard needs the tensorboard package (pip install tensorboard)") from error
    return SummaryWriter(str(folder))


class _Window:
    """Sums of one rank's step results since the last log."""

    def __init__(self):
        self.sums = self._empty()

    def add(self, out, samples: int, tokens: int, seconds: float) -> None:
        self.sums["steps"] += 1
        self.sums["loss"] += float(out.loss.detach())
        self.sums["samples"] += samples
        self.sums["tokens"] += tokens
        self.sums["seconds"] += seconds
        for region in REGIONS:
            area = float(out.region_area[region])
            self.sums[f"{region}_area"] += area
            if area:
                self.sums[f"{region}_loss_sum"] += float(out.region_loss[region]) * area

    def take(self) -> dict:
        sums, self.sums = self.sums, self._empty()
        return sums

    @staticmethod
    def _empty() -> dict:
        return {
            "steps": 0,
            "loss": 0.0,
            "samples": 0,
            "tokens": 0,
            "seconds": 0.0,
            **{f"{r}_loss_sum": 0.0 for r in REGIONS},
            **{f"{r}_area": 0.0 for r in REGIONS},
        }
