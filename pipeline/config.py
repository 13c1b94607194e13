"""Run configuration: one section per stage (the stage's own fields) plus `inputs`, `shards` and `execution`.

Defaults live on the stage classes, each field with its documentation; `talkcurate config`
prints them as a commented TOML file (the one in configs/default.toml). A file given with
`--config` and `--set section.key=value` overrides replace them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from core.config import build, option, read_table, render
from pipeline.definition import ALL_STAGES
from pipeline.inputs import check_source_paths
from pipeline.shards import ShardsConfig
from schemas.manifest import SCHEMA_VERSION
from stages.base import Stage


@dataclass
class InputsConfig:
    """How the run names its inputs in what it writes."""

    name: typing.ClassVar[str] = "inputs"

    source_paths: str = option(
        "relative",
        "How the manifest's `source` and each KEY.json record a local input: `relative` to the input argument that "
        "named it (a folder, or a list file's folder; a file named on its own by its base name), as `given` on the "
        "command line or in the list file, or `absolute` (this machine's paths, which a shared dataset would carry). "
        "URIs are recorded as they are.",
    )

    def validate(self) -> None:
        check_source_paths(self.source_paths)


@dataclass
class ExecutionConfig:
    """How the run is executed; changing these never changes what a run writes."""

    name: typing.ClassVar[str] = "execution"

    num_cpus: int = option(0, "CPUs of the local Ray instance started for the run (0: all of this machine's).")
    object_store_mb: int = option(0, "Object store of the local Ray instance, in MB (0: Ray's default).")
    max_workers: int = option(
        0,
        "Upper bound on the workers of each CPU stage group (0: as many as the cluster's CPUs allow when the run "
        "starts).",
    )
    gpu_workers: int = option(
        0, "Actors of a stage group that asks for GPUs (0: one per GPU of the cluster when the run starts)."
    )
    model_batch_size: int = option(
        8,
        "Clips handed at once to a batched group's model stages (transcription, captioning) on a GPU worker, which "
        "runs them together (on CPUs: one at a time).",
    )
    task_retries: int = option(
        3,
        "Times a task runs again after its worker process or node died (a stage's own exception is an `error` row, "
        "not a retry); GPU actors are replaced without limit.",
    )
    block_mb: int = option(64, "Ray Data's target block size in MB: smaller blocks stream sooner and bound memory.")
    progress: bool = option(
        True,
        "Show the run's progress (sources done, clips kept, hours of video, elapsed time, ETA): redrawn in a "
        "terminal, a line every 30 s otherwise.",
    )

    def validate(self) -> None:
        for name in ("num_cpus", "object_store_mb", "max_workers", "gpu_workers", "task_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"execution.{name} must be 0 or more")
        if self.model_batch_size < 1 or self.block_mb < 1:
            raise ValueError("execution.model_batch_size and execution.block_mb must be 1 or more")


@dataclass
class RunConfig:
    stages: dict[str, Stage] = field(default_factory=lambda: {cls.name: cls() for cls in ALL_STAGES})
    inputs: InputsConfig = field(default_factory=InputsConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def sections(self) -> dict[str, Any]:
        """Every section by name, in the order `talkcurate config` prints them."""
        return {
            InputsConfig.name: self.inputs,
            **self.stages,
            ShardsConfig.name: self.shards,
            ExecutionConfig.name: self.execution,
        }

    def section(self, name: str) -> Any:
        sections = self.sections()
        if name not in sections:
            raise KeyError(f"unknown config section {name!r}; sections: {', '.join(sections)}")
        return sections[name]

    def validate(self) -> None:
        self.inputs.validate()
        self.shards.validate()
        self.execution.validate()
        for stage in self.stages.values():
            stage.validate()
            stage.validate_with(self.stages)

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides what a run writes: a resumed run must match it."""
        return {
            "schema_version": SCHEMA_VERSION,
            InputsConfig.name: dataclasses.asdict(self.inputs),
            **{name: dataclasses.asdict(stage) for name, stage in self.stages.items()},
            ShardsConfig.name: dataclasses.asdict(self.shards),
        }

    @classmethod
    def load(cls, path: str | None = None, overrides: list[str] = ()) -> RunConfig:
        config = cls()
        for name, values in read_table(path, overrides).items():
            if not isinstance(values, dict):
                raise ValueError(f"{path or '--set'}: top-level key {name!r} must be a [section]")
            section = build(type(config.section(name)), values, name)
            if name in config.stages:
                config.stages[name] = section
            else:
                setattr(config, name, section)  # the other sections' attributes are named after them
        config.validate()
        return config


def render_defaults() -> str:
    """The documented default configuration, as TOML."""
    config = RunConfig()
    return render(
        config.sections(),
        "talkcurate configuration: every key with its default.\n"
        "Override with --config FILE or --set section.key=value.",
    )
