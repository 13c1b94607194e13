"""Running a chain of stages on one worker, without Ray.

The runner turns stage results into records: a `Rejected` becomes the input's rejected row (made
from the record as the stage measured it, when the rejection carries one), an exception becomes an
`error` row naming the stage and the file (the run goes on), and after each chunk of a source it
emits `ChunkDone` with the number of clips the chunk produced, so the writer knows when a source is
complete. When a stage settles decisions over a whole chunk, the chunk's kept clips wait (without
their frames) until the chunk is exhausted and the stage has settled them. It also times each stage
(wall and CPU seconds per item).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from schemas.records import FPS, CandidateClip, ChunkDone, ProbedSource, Rejected, SourceChunk, SourceVideo, Status
from stages.base import Stage, StreamOutput

log = logging.getLogger(__name__)


@dataclass
class StageStats:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    items: int = 0
    video_s: float = 0.0  # seconds of source video the stage handled

    def add(self, other: StageStats) -> None:
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.items += other.items
        self.video_s += other.video_s


@dataclass
class RunStats:
    stages: dict[str, StageStats] = field(default_factory=lambda: defaultdict(StageStats))

    def merge(self, other: RunStats) -> None:
        for name, stats in other.stages.items():
            self.stages[name].add(stats)

    def as_dict(self) -> dict[str, dict]:
        return {name: vars(stats) for name, stats in self.stages.items()}


def _video_seconds(item: object) -> float:
    item = getattr(item, "chunk", item)  # a lazily decoded chunk counts as its span
    if isinstance(item, SourceChunk):
        return (item.end_frame - item.start_frame) / FPS
    if isinstance(item, CandidateClip):
        return item.end_s - item.start_s
    if isinstance(item, ProbedSource):
        return item.probe.duration_s
    return 0.0


def _describe(item: object) -> str:
    source = getattr(item, "source", item)
    return getattr(source, "uri", repr(item))


def _failed(stage: Stage, item: object, exc: Exception) -> Rejected:
    """An exception a stage raised on `item`, logged with the stage and the file, as an `error` row's reason."""
    log.error("stage %s failed on %s: %s", stage.name, _describe(item), exc, exc_info=log.isEnabledFor(logging.DEBUG))
    return Rejected("error", f"{stage.name}: {type(exc).__name__}: {exc}")


def run_in_process(uri: str, groups: Sequence[Sequence[Stage]], keep_frames: bool = False) -> list[object]:
    """Everything the stage groups emit for one input, each group's outputs run through the next,
    in this process and without Ray (tests and benchmarks). `keep_frames` keeps the clips'
    analysis frames on what comes out."""
    items: list[object] = [SourceVideo.from_uri(uri)]
    for stages in groups:
        runner = ChainRunner(stages, keep_frames)
        items = [out for item in items for out in runner.run(item)]
    return items


class _Timed:
    """Times a stage's work on one item, including the work done inside a generator it returns."""

    def __init__(self, stats: StageStats):
        self.stats = stats

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.stats.wall_s += time.perf_counter() - self._wall
        self.stats.cpu_s += time.process_time() - self._cpu


class ChainRunner:
    """Runs items through `stages` in order; items a stage does not accept pass through."""

    def __init__(self, stages: Sequence[Stage], keep_frames: bool = False):
        self.stages = list(stages)
        self.keep_frames = keep_frames  # a later group still needs the clips' analysis frames
        self.stats = RunStats()
        self._set_up = False

    def setup(self) -> None:
        if not self._set_up:
            for stage in self.stages:
                stage.setup()
            self._set_up = True

    def run(self, item: object) -> Iterator[object]:
        self.setup()
        for out in self._run_from(0, item):
            yield self._without_frames(out)

    def run_batch(self, items: list[object]) -> list[object]:
        """`items` through the stages, each stage given every item it accepts at once, so a model
        stage runs its model on the whole batch. For chains whose stages do not fan out."""
        self.setup()
        pending = list(items)
        for stage in self.stages:
            chosen = [
                i
                for i, item in enumerate(pending)
                if stage.accepts(item) and not (isinstance(item, CandidateClip) and item.status is Status.REJECTED)
            ]
            if chosen:
                results = self._apply_batch(stage, [pending[i] for i in chosen])
                for i, result in zip(chosen, results):
                    pending[i] = result
        return [self._without_frames(out) for out in pending]

    def _without_frames(self, item: object) -> object:
        """`item` without its analysis frames, unless a later group needs them: they are large."""
        if isinstance(item, CandidateClip) and item.frames is not None and not self.keep_frames:
            return dataclasses.replace(item, frames=None)
        return item

    def _apply_batch(self, stage: Stage, batch: list[object]) -> list[object]:
        stats = self.stats.stages[stage.name]
        stats.items += len(batch)
        stats.video_s += sum(_video_seconds(item) for item in batch)
        with _Timed(stats):
            try:
                results = stage.process_batch(batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            except Exception:  # find the item that fails: the others still get their results
                results = [self._process_one(stage, item) for item in batch]
        return [self._record(stage, item, result) for item, result in zip(batch, results)]

    def _process_one(self, stage: Stage, item: object) -> object:
        try:
            return stage.process(item)
        except Exception as exc:
            return _failed(stage, item, exc)

    def _record(self, stage: Stage, item: object, result: object) -> object:
        if isinstance(result, Rejected):
            return result.row(item, stage.name)
        if isinstance(result, Iterator):
            raise TypeError(f"stage {stage.name} fans out and cannot run in a batched group")
        return result

    def _run_from(self, position: int, item: object) -> Iterator[object]:
        for index in range(position, len(self.stages)):
            stage = self.stages[index]
            if not stage.accepts(item) or (isinstance(item, CandidateClip) and item.status is Status.REJECTED):
                continue
            yield from self._apply(index, stage, item)
            return
        yield item

    def _apply(self, index: int, stage: Stage, item: object) -> Iterator[object]:
        outputs = self._apply_stage(index, stage, item)
        if isinstance(item, SourceChunk):
            emitted = 0
            for out in self._settled(self.stages[index:], outputs):
                emitted += isinstance(out, CandidateClip)
                yield out
            # The chunk ends here: tell the writer how many rows came out of it.
            yield ChunkDone(item.source, item.index, item.count, emitted)
        else:
            yield from outputs

    def run_clips(self, clips: list[CandidateClip]) -> list[object]:
        """Clips of one chunk through the stages, settled together as a chunk's are (benchmarks, tests)."""
        self.setup()
        return list(self._settled(self.stages, (out for clip in clips for out in self._run_from(0, clip))))

    def _settled(self, stages: list[Stage], outputs: Iterator[object]) -> Iterator[object]:
        """One chunk's `outputs`; when one of `stages` settles, its kept clips wait (without their
        frames) until the chunk is exhausted, and come out settled."""
        settling = [s for s in stages if s.settles()]
        if not settling:
            yield from outputs
            return
        held = []
        for out in outputs:
            if isinstance(out, CandidateClip) and out.status is not Status.REJECTED:
                held.append(self._without_frames(out))
            else:
                yield out
        for stage in settling:
            held = self._settle(stage, held)
        yield from held

    def _settle(self, stage: Stage, clips: list[CandidateClip]) -> list[CandidateClip]:
        """`stage.settle` on the chunk's kept clips; its rejections become rejected rows."""
        kept = [c for c in clips if c.status is not Status.REJECTED]
        if not kept:
            return clips
        try:
            with _Timed(self.stats.stages[stage.name]):
                results = stage.settle(kept)
            if len(results) != len(kept):
                raise RuntimeError(f"{len(results)} results for {len(kept)} clips")
        except Exception as exc:
            results = [_failed(stage, kept[0], exc)] * len(kept)
        settled = iter(self._record(stage, c, r) for c, r in zip(kept, results))
        return [next(settled) if c.status is not Status.REJECTED else c for c in clips]

    def _reject(self, stage: Stage, item: object, rejected: Rejected) -> Iterator[object]:
        yield rejected.row(item, stage.name)
        if isinstance(item, (SourceVideo, ProbedSource)):
            yield ChunkDone(item.source if isinstance(item, ProbedSource) else item, 0, 1, 1)

    def _apply_stage(self, index: int, stage: Stage, item: object) -> Iterator[object]:
        stats = self.stats.stages[stage.name]
        stats.items += 1
        try:
            with _Timed(stats):
                result = stage.process(item)
            # A source's length is known once it is probed: count what the stage learned if the input could not say.
            stats.video_s += _video_seconds(item) or _video_seconds(result)
            if isinstance(result, Rejected):
                yield from self._reject(stage, item, result)
            elif isinstance(result, Iterator):
                yield from self._drain(index, stage, item, result, stats)
            else:
                yield from self._run_from(index + 1, result)
        except Exception as exc:  # a bug or an input nobody foresaw: one row, never a dead run
            yield from self._reject(stage, item, _failed(stage, item, exc))

    def _drain(self, index: int, stage: Stage, item: object, results: Iterator, stats: StageStats) -> Iterator[object]:
        """A fan-out stage: time each step of its generator, run each output through the rest."""
        covered = None  # end frame of the last clip out, to name what a failure leaves unprocessed
        try:
            while True:
                try:
                    with _Timed(stats):
                        result = next(results)
                except StopIteration:
                    return
                if isinstance(result, Rejected):
                    yield from self._reject(stage, item, result)
                    continue
                if isinstance(result, CandidateClip):
                    covered = result.end_frame
                yield from self._run_from(index + 1, result)
        except Exception as exc:
            rest = item if covered is None else item.remainder(covered)
            yield from self._reject(stage, rest, _failed(stage, item, exc))
        finally:
            if isinstance(item, StreamOutput):  # its producer's work, done while this stage read it
                producer = self.stats.stages[item.producer]
                producer.wall_s += item.work_wall_s
                producer.cpu_s += item.work_cpu_s
                stats.wall_s -= item.work_wall_s
                stats.cpu_s -= item.work_cpu_s
