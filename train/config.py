"""The training job's configuration: one TOML file, dotted overrides on the command line.

Sections mirror the parts of the job: `[data]` (train/data.py), `[model]` (a preset of
train/model.py plus overrides), `[latents]`, `[text]`, `[loss]`, `[parallel]`, `[optim]`,
`[checkpoint]`, `[metrics]`, and an array of `[[curriculum]]` stages applied in order.
`python -m train --print-config` prints the defaults, each option with its doc (core/config.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import build, option, read_table
from train.data import DataConfig
from train.latents import LatentSpace, LatentSpaceConfig
from train.loss import LossConfig
from train.model import ModelConfig, preset
from train.parallelize import ParallelConfig
from train.text_encoder import TextEncoderConfig


def model_config(choice: ModelChoice, latents: LatentSpace, text_dim: int) -> ModelConfig:
    """The chosen preset sized for the latent space and the caption encoder, then the overrides."""
    sized = {
        "latent_channels": latents.channels,
        "text_dim": text_dim,
        "temporal_compression": latents.temporal_compression,
    }
    return preset(choice.preset, **{**sized, **choice.overrides})


@dataclass
class ModelChoice:
    """The model: a preset of train/model.py and the fields changed from it."""

    preset: str = option(
        "tiny", "A preset of train/model.py: `tiny` (trains on CPU in seconds), `wan-1.3b`, `wan-14b`."
    )
    overrides: dict[str, Any] = option(
        {},
        "ModelConfig fields to change, e.g. {num_layers = 4}. `latent_channels` and `text_dim` follow the latent "
        "space and the caption encoder unless given.",
    )


@dataclass
class OptimConfig:
    """AdamW and its learning-rate warmup."""

    lr: float = option(1e-4, "AdamW learning rate after warmup (a curriculum stage may set its own).")
    weight_decay: float = option(0.01, "AdamW decoupled weight decay.")
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW moment decay rates.")
    warmup_steps: int = option(0, "Steps of linear warmup at the start of each curriculum stage.")
    grad_clip: float = option(1.0, "Gradients are scaled down to this global L2 norm (0: no clipping).")


@dataclass
class CurriculumStage:
    """A stage of the curriculum: steps trained with these settings, after the stages before it."""

    name: str = option("full", "Shown in the logs and metrics.")
    steps: int = option(100, "Optimizer steps of this stage.")
    num_frames: int = option(0, "Video frames per training window in this stage (0: data.num_frames).")
    lr: float = option(0.0, "Learning rate of this stage (0: optim.lr).")
    text_dropout: float = option(-1.0, "Probability a caption is dropped in this stage (negative: loss.text_dropout).")
    audio_dropout: float = option(
        -1.0, "Probability the audio is dropped in this stage (negative: loss.audio_dropout)."
    )
    reference_dropout: float = option(
        -1.0, "Probability the reference frame is dropped in this stage (negative: loss.reference_dropout)."
    )
    trainable: str = option(
        "all",
        "Which parameters learn: `all`, or `audio` (only the audio embedding and audio cross-attention: "
        "audio-to-lip training on a frozen, pretrained backbone; from scratch the zero-initialized output head "
        "passes no gradient to them).",
    )


@dataclass
class CheckpointConfig:
    """When checkpoints are written, kept and resumed from."""

    every: int = option(0, "Write a checkpoint every n steps (0: only at the end).")
    keep: int = option(3, "Newest checkpoints kept; older ones are deleted.")
    resume: bool = option(True, "Continue from the newest checkpoint in the run folder when there is one.")


@dataclass
class MetricsConfig:
    """What is logged, and where."""

    every: int = option(10, "Log loss, per-region losses, throughput and memory every n steps.")
    tensorboard: bool = option(
        False, "Also write TensorBoard events to OUT/tensorboard (needs the tensorboard package)."
    )


@dataclass
class HeldOutReference:
    """One held-out reference: a portrait and speech, as `talkcurate sample` takes them."""

    image: str = option("", "Portrait image (the identity; empty: the video's first frame).")
    audio: str = option("", "Speech the sample is driven by.")
    video: str = option("", "Reference video whose mouth the sample regenerates (lip editing; empty: none).")


@dataclass
class HeldOutConfig:
    """Scoring the model while it trains: every `every` steps the newest checkpoint samples each
    reference and `talkcurate evaluate`'s measurements score the samples (rank 0, in a process of
    its own); the scores go to metrics.jsonl, the samples and their reports to evaluation/step-N/."""

    every: int = option(0, "Evaluate every n steps (0: never).")
    steps: int = option(10, "Denoising steps of each sample.")
    references: list[HeldOutReference] = option([], "The held-out references, as [[evaluation.references]] tables.")


@dataclass
class JobConfig:
    """A training job: its run folder, batch and seed, then a section per part of the job."""

    out: str = option("train-out", "Run folder: checkpoints/step-N, metrics.jsonl, config.toml.")
    seed: int = option(0, "Seed of the model's initialization and of each rank's noise, time and dropout draws.")
    batch_size: int = option(2, "Clips per rank per step.")
    stop_after: int = option(
        0,
        "Stop this launch after this many steps in total, writing a checkpoint (0: run the whole curriculum); the "
        "next launch with the same `out` continues from there.",
    )

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelChoice = field(default_factory=ModelChoice)
    latents: LatentSpaceConfig = field(default_factory=LatentSpaceConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    evaluation: HeldOutConfig = field(default_factory=HeldOutConfig)
    curriculum: list[CurriculumStage] = field(default_factory=lambda: [CurriculumStage()])

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.curriculum)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> JobConfig:
    config = build(JobConfig, read_table(path, overrides))
    config.data.validate()
    if not config.curriculum or any(stage.steps < 1 for stage in config.curriculum):
        raise ValueError("the curriculum needs at least one stage, each of at least one step")
    if config.evaluation.every and not config.evaluation.references:
        raise ValueError("evaluation.every needs at least one [[evaluation.references]]")
    for reference in config.evaluation.references:
        if not reference.audio or not (reference.image or reference.video):
            raise ValueError("each evaluation reference needs audio and an image or a video")
    for stage in config.curriculum:
        if stage.trainable not in ("all", "audio"):
            raise ValueError(f"curriculum stage {stage.name!r}: trainable must be `all` or `audio`")
    return config
