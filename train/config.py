"""The training job's configuration: one TOML file, dotted overrides on the command line.

Sections mirror the parts of the job: `[data]` (train/data.py), `[model]` (a preset of
train/model.py plus overrides), `[latents]`, `[text]`, `[loss]`, `[parallel]`, `[optim]`,
`[checkpoint]`, `[metrics]`, and an array of `[[curriculum]]` stages applied in order.
`python -m train --print-config` prints the defaults.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    preset: str = "tiny"
    """A preset of train/model.py: `tiny` (trains on CPU in seconds), `wan-1.3b`, `wan-14b`."""

    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields to change, e.g. {num_layers = 4}. `latent_channels` and `text_dim` follow
    the latent space and the caption encoder unless given."""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """AdamW learning rate after warmup (a curriculum stage may set its own)."""

    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""

    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment decay rates."""

    warmup_steps: int = 0
    """Steps of linear warmup at the start of each curriculum stage."""

    grad_clip: float = 1.0
    """Gradients are scaled down to this global L2 norm (0: no clipping)."""


@dataclass
class CurriculumStage:
    name: str = "full"
    """Shown in the logs and metrics."""

    steps: int = 100
    """Optimizer steps of this stage."""

    num_frames: int = 0
    """Video frames per training window in this stage (0: data.num_frames)."""

    lr: float = 0.0
    """Learning rate of this stage (0: optim.lr)."""

    text_dropout: float = -1.0
    """Probability a caption is dropped in this stage (negative: loss.text_dropout)."""

    audio_dropout: float = -1.0
    """Probability the audio is dropped in this stage (negative: loss.audio_dropout)."""

    reference_dropout: float = -1.0
    """Probability the reference frame is dropped in this stage (negative: loss.reference_dropout)."""

    trainable: str = "all"
    """Which parameters learn: `all`, or `audio` (only the audio embedding and audio
    cross-attention: audio-to-lip training on a frozen, pretrained backbone; from scratch the
    zero-initialized output head passes no gradient to them)."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Write a checkpoint every n steps (0: only at the end)."""

    keep: int = 3
    """Newest checkpoints kept; older ones are deleted."""

    resume: bool = True
    """Continue from the newest checkpoint in the run folder when there is one."""


@dataclass
class MetricsConfig:
    every: int = 10
    """Log loss, per-region losses, throughput and memory every n steps."""

    tensorboard: bool = False
    """Also write TensorBoard events to OUT/tensorboard (needs the tensorboard package)."""


@dataclass
class JobConfig:
    out: str = "train-out"
    """Run folder: checkpoints/step-N, metrics.jsonl, config.toml."""

    seed: int = 0
    """Seed of the model's initialization and of each rank's noise, time and dropout draws."""

    batch_size: int = 2
    """Clips per rank per step."""

    stop_after: int = 0
    """Stop this launch after this many steps in total, writing a checkpoint (0: run the whole
    curriculum); the next launch with the same `out` continues from there."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelChoice = field(default_factory=ModelChoice)
    latents: LatentSpaceConfig = field(default_factory=LatentSpaceConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    curriculum: list[CurriculumStage] = field(default_factory=lambda: [CurriculumStage()])

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.curriculum)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """A dataclass from a TOML table, refusing unknown keys and converting lists to tuples."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(f'{where}{k}' for k in unknown)}; "
            f"{where or 'the job'} has: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, f"{where}{name}.")
        elif typing.get_origin(hint) is list and name == "curriculum":
            value = [_build(CurriculumStage, stage, f"curriculum[{i}].") for i, stage in enumerate(value)]
        elif typing.get_origin(hint) is tuple:
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def _set(table: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for parent in parents:
        table = table.setdefault(parent, {})
    table[key] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with a TOML value (strings may go unquoted)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"an override is KEY=VALUE, not {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> JobConfig:
    table = tomllib.loads(Path(path).read_text()) if path else {}
    for override in overrides:
        _set(table, *parse_override(override))
    config = _build(JobConfig, table, "")
    config.data.validate()
    if not config.curriculum or any(stage.steps < 1 for stage in config.curriculum):
        raise ValueError("the curriculum needs at least one stage, each of at least one step")
    for stage in config.curriculum:
        if stage.trainable not in ("all", "audio"):
            raise ValueError(f"curriculum stage {stage.name!r}: trainable must be `all` or `audio`")
    return config


def render(config: JobConfig) -> str:
    """The configuration as TOML (what `load_config` reads back)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    def table(obj: Any, header: str | None) -> None:
        scalars = [
            (f.name, getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not dataclasses.is_dataclass(getattr(obj, f.name)) and f.name != "curriculum"
        ]
        if header:
            lines.append(f"\n{header}")
        lines.extend(f"{name} = {value(v)}" for name, v in scalars)

    table(config, None)
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        if dataclasses.is_dataclass(section):
            table(section, f"[{f.name}]")
    for stage in config.curriculum:
        table(stage, "[[curriculum]]")
    return "\n".join(lines).lstrip() + "\n"
