"""The stage interface: plain Python, testable without Ray.

A stage is a dataclass whose fields are its configuration (declared with core.config's `option`,
each with the doc that `talkcurate config` prints). It declares the record type it consumes, the
resources one worker needs, loads models once in `setup()`, and turns one input into its output,
a `Rejected(reason, detail)`, or, for stages that fan out (one source into many clips), an
iterator of outputs and rejections. Model stages may also take a batch of inputs at once, and a
stage may settle some decisions once it has seen every clip of a chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from schemas.records import Rejected

In = TypeVar("In")
Out = TypeVar("Out")


class StreamOutput:
    """A stage's output whose work happens as the next stage in the worker reads it: the normalize
    stage's decoder stream. It counts that work, and the runner charges it to `producer` (the stage
    that made it) instead of the stage that reads it."""

    producer: ClassVar[str]

    def __init__(self):
        self.work_wall_s = self.work_cpu_s = 0.0

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Count the time inside as the producer's work."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.work_wall_s += time.perf_counter() - wall
            self.work_cpu_s += time.process_time() - cpu


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs from the scheduler."""

    cpus: float = 1.0
    gpus: float = 0.0

    def on(self, device: str) -> Resources:
        """These resources, with a GPU when `device` names a CUDA one (`cuda`, `cuda:N`)."""
        return dataclasses.replace(self, gpus=max(self.gpus, 1.0)) if device.startswith("cuda") else self


def worker_threads() -> int:
    """Threads a native library should use in this worker: OMP_NUM_THREADS, which Ray sets to a
    task's CPUs; 0 (the library's own default, usually a thread per core) when it is unset. Next to
    other workers on the same cores, a thread per core costs CPU time without saving wall time."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


class Stage(Generic[In, Out]):
    """Base class of every stage; subclasses are dataclasses.

    Records are copy-on-write: a stage never changes its input record or anything the record holds; it
    returns a new record made with `dataclasses.replace(item, field=value)` (shallow: the arrays are
    shared, and never changed in place either). A rejection whose row should keep what the stage
    measured carries that new record as `Rejected.measured`."""

    name: ClassVar[str]
    """Config section and manifest `rejected_by` value."""

    input_type: ClassVar[type]
    """Records of other types pass through the stage untouched."""

    resources: ClassVar[Resources] = Resources()
    """Declared per-worker resources; the pipeline config may override them."""

    uses_frames: ClassVar[bool] = False
    """True when `process` reads the clip's analysis frames, so they must reach this stage."""

    def setup(self) -> None:
        """Load models and other per-worker state. Called once per worker, before `process`."""

    def process(self, item: In) -> Out | Rejected | Iterator[Out | Rejected]:
        raise NotImplementedError

    def process_batch(self, items: list[In]) -> list[Out | Rejected]:
        """One result per item, in order. Model stages override it to run their model on the
        whole batch at once (what a GPU needs); the default processes the items one by one.
        Only for stages that do not fan out."""
        return [self.process(item) for item in items]

    def settles(self) -> bool:
        """True when, with this configuration, the stage decides some clips in `settle`."""
        return False

    def settle(self, items: list[Out]) -> list[Out | Rejected]:
        """Decisions that need every clip of a chunk (the sync stage pools a source's evidence):
        called when a chunk is exhausted, with its clips still kept after the whole group ran on
        them, when `settles()`. One result per item, in order."""
        return items

    def required_modules(self) -> tuple[str, ...]:
        """The modules `setup` imports with this configuration (the model packages), so a run can
        say which are missing before it starts any worker."""
        return ()

    def worker_resources(self) -> Resources:
        """What one worker of this stage needs with this configuration (a stage whose `device`
        option names a GPU asks for one)."""
        return self.resources

    def validate(self) -> None:
        """Raise ValueError on an inconsistent configuration (called before a run starts)."""

    def validate_with(self, stages: Mapping[str, Stage]) -> None:
        """Raise ValueError when this stage's configuration contradicts another stage's (called
        before a run starts, with every stage of the run by name)."""

    def accepts(self, item: object) -> bool:
        return isinstance(item, self.input_type)
