"""Running the pipeline on Ray Data: the only module that knows about Ray.

Each group of fused stages becomes one `map_batches` operator, placed by `pipeline.placement`: a
task pool by default (tasks release their CPUs between items, so groups share a small machine well,
and each worker process keeps its loaded models between tasks), or an actor pool, one actor per
GPU, when a stage's configuration asks for GPUs. Batched groups (the model stages) on GPUs get
`execution.model_batch_size` clips per call, which their stages process together. A task whose
worker process or node dies is run again (`execution.task_retries`), and the driver still sees
each of its results once (tests/test_faults.py kills a worker mid-task and gets a clean run's samples).
Records travel pickled in a single binary `item` column. The driver streams the results into the
shard writer, so memory stays bounded by Ray Data's backpressure, not by the size of the input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import ray

from core.config import MB
from core.descriptors import redirected_to_devnull
from pipeline.config import RunConfig
from pipeline.definition import PIPELINE, Group
from pipeline.output import RunOutput
from pipeline.placement import place
from pipeline.progress import Progress
from pipeline.runner import ChainRunner, RunStats
from schemas.records import SourceVideo
from stages.base import Stage

log = logging.getLogger(__name__)

COLUMN = "item"


def _column(items: Sequence[object]) -> np.ndarray:
    column = np.empty(len(items), dtype=object)
    column[:] = [pickle.dumps(item, protocol=5) for item in items]
    return column


def _items(batch: dict[str, np.ndarray]) -> Iterator[object]:
    for data in batch[COLUMN]:
        yield pickle.loads(data)


def _run_batch(runner: ChainRunner, batch: dict[str, np.ndarray], batched: bool) -> Iterator[dict[str, np.ndarray]]:
    """The group's records for the batch's, then one row of timings: this call's, and those of earlier
    groups that arrived with the batch. Timings travel with the records, so the driver counts each
    task's once, as it does its records, even when a task is run again after its worker died."""
    items = list(_items(batch))
    timings = [item for item in items if isinstance(item, RunStats)]
    work = [item for item in items if not isinstance(item, RunStats)]
    if batched:
        if work:
            yield {COLUMN: _column(runner.run_batch(work))}
    else:
        for item in work:
            for out in runner.run(item):
                yield {COLUMN: _column([out])}
    timings.append(runner.stats)
    runner.stats = RunStats()
    yield {COLUMN: _column(timings)}


class GroupActor:
    """An actor-pool worker: sets its stages up once."""

    def __init__(self, stages: list[Stage], keep_frames: bool, batched: bool):
        self.runner = ChainRunner(stages, keep_frames)
        self.runner.setup()
        self.batched = batched

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        yield from _run_batch(self.runner, batch, self.batched)


_WORKER_RUNNERS: dict[bytes, ChainRunner] = {}
"""Runners of task-pool groups, kept per worker process: Ray reuses worker processes between
tasks, so stages loading models set up once per worker, like an actor's, while tasks still
release their CPUs between items."""


def _group_task(name: str, stages: list[Stage], keep_frames: bool, batched: bool):
    key = pickle.dumps((stages, keep_frames))

    def run(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        runner = _WORKER_RUNNERS.get(key)
        if runner is None:
            runner = _WORKER_RUNNERS[key] = ChainRunner(stages, keep_frames)
        yield from _run_batch(runner, batch, batched)

    run.__name__ = run.__qualname__ = name  # Ray Data names the operator (progress, dashboard, task names) after it
    return run


def _add_group(
    ds: ray.data.Dataset, group: Group, keep_frames: bool, config: RunConfig, max_inputs: int | None = None
) -> ray.data.Dataset:
    stages = [config.stages[cls.name] for cls in group.stages]
    where = place(group, stages, config.execution, ray.cluster_resources())
    # A pool larger than its inputs only earns a warning from Ray Data.
    workers = min(where.workers, max_inputs) if max_inputs else where.workers
    common = dict(
        batch_size=where.batch_size,
        batch_format="numpy",
        num_cpus=where.cpus,
        num_gpus=where.gpus or None,  # CPU groups never ask for a GPU
        **where.remote_args(config.execution.task_retries),
    )
    with warnings.catch_warnings():
        # Ray 2.60 takes the retry options only through its deprecated **ray_remote_args.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        if where.actors:
            return ds.map_batches(
                GroupActor,
                fn_constructor_kwargs={"stages": stages, "keep_frames": keep_frames, "batched": group.batched},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
                **common,
            )
        task = _group_task(group.name, stages, keep_frames, group.batched)
        return ds.map_batches(task, compute=ray.data.TaskPoolStrategy(size=workers), **common)


@contextlib.contextmanager
def ray_session(address: str | None, config: RunConfig):
    """Connect to the named cluster, or start a local Ray instance for the run."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray's local instance runs with token authentication on; its notice about that is not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray's processes inherit stdin; a terminal there lets a child that touches it from Ray's
        # background process group (the `ffmpeg` probe PySceneDetect runs at import) be stopped
        # by SIGTTOU, hanging the run.
        # address="local": a new instance even when `ray start` left a cluster on this machine,
        # which a bare ray.init() would join.
        # Its processes inherit this environment. glibc gives every thread (decoders, x264, model
        # runtimes, Ray's own) a malloc arena; over a long input their fragments added 100-200 MB to
        # a worker's peak. Two arenas keep it flat; an explicit setting wins.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        # Ray starts its workers at niceness 15, for its control plane's sake; on a machine doing
        # other work that starves the run: beside a CPU-bound process each worker got 6% of a core
        # and a 40 s run took over 10 minutes. The workers are the run's work: normal priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
        with redirected_to_devnull(0):
            ray.init(
                address="local",
                num_cpus=config.execution.num_cpus or None,
                object_store_memory=config.execution.object_store_mb * MB or None,
                include_dashboard=False,
                **kwargs,
            )
    try:
        yield
    finally:
        ray.shutdown()


def execute(sources: list[SourceVideo], output: RunOutput, config: RunConfig, address: str | None = None) -> RunStats:
    """Process `sources` (those not already done) and stream their rows into `output`."""
    stats = RunStats()
    todo = [s for s in sources if s.source_id not in output.done_sources]
    if not todo:
        return stats
    with ray_session(address, config):
        context = ray.data.DataContext.get_current()
        # Ray Data's bars count rows per operator; the run's own progress line says what a person asks.
        context.enable_progress_bars = context.enable_rich_progress_bars = False
        context.target_max_block_size = config.execution.block_mb * MB
        context.verbose_stats_logs = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"
        ds = ray.data.from_items([{COLUMN: pickle.dumps(s)} for s in todo], override_num_blocks=len(todo))
        for position, group in enumerate(PIPELINE):
            keep_frames = any(s.uses_frames for later in PIPELINE[position + 1 :] for s in later.stages)
            if position and not group.batched:
                # One item per block: Ray Data packs a task's small outputs into one block and hands a
                # block to one task, so a long input's chunks would be decoded one after another.
                ds = ds.repartition(target_num_rows_per_block=1)
            ds = _add_group(ds, group, keep_frames, config, max_inputs=None if position else len(todo))
        output.open_writer(config.shards)
        finished_earlier, done_at_start = len(sources) - len(todo), len(output.done_sources)

        def sources_done() -> int:  # of this run's sources, those finished by earlier runs included
            return finished_earlier + len(output.done_sources) - done_at_start

        progress = Progress(len(sources), finished_earlier) if config.execution.progress else None
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
            for item in _items(batch):
                if isinstance(item, RunStats):
                    stats.merge(item)
                    continue
                output.add(item)
                if progress:
                    progress.observe(item, sources_done())
        output.close()
        if progress:
            progress.close(sources_done())
    return stats
