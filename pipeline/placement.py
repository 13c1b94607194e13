"""Where each group of stages runs, decided from the configuration and the cluster's resources.

No Ray here: `place` is a plain function of the group's stages, the `execution` options and the
cluster's resource totals, so any cluster shape can be checked without one. The executor turns a
`Placement` into a Ray Data `map_batches` operator.

- A group whose stages ask for no GPU runs as a task pool sized by the cluster's CPUs (each
  worker asks for the largest CPU share among its stages, and never for a GPU), bounded by
  `execution.max_workers`.
- A group with a stage configured for a GPU (`transcribe.device = "cuda"`, ...) runs as an actor
  pool, one actor per GPU it asks for, at most `execution.gpu_workers` actors (0: one per GPU of the
  cluster), so models load once per GPU and stay loaded; a batched group's actors get
  `execution.model_batch_size` clips per call.
- On CPUs every group takes one item per call. Ray Data fuses consecutive task pools into one task
  and makes the fused task wait for the largest batch size among them, so a batched text group
  fused with the clips group would have each task decode and cut 8 sources one after another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.config import ExecutionConfig
from pipeline.definition import Group
from stages.base import Stage

MIN_CPUS_PER_WORKER = 0.25  # bounds the pool of a group whose stages ask for (almost) no CPU


@dataclass(frozen=True)
class Placement:
    group: str
    cpus: float  # per worker
    gpus: float  # per worker; 0 for CPU groups
    workers: int  # task-pool concurrency, or the actor pool's largest size
    batch_size: int  # items per call
    actors: bool  # an actor pool (GPU groups) rather than a task pool

    def remote_args(self, task_retries: int) -> dict:
        """Ray's retry options: a task (or an actor's call) whose worker process or node died runs
        again, up to `task_retries` times; dead actors are replaced without limit (a lost GPU node
        is not the actor's fault, and Ray Data's default too)."""
        if self.actors:
            return {"max_restarts": -1, "max_task_retries": task_retries}
        return {"max_retries": task_retries}


class PlacementError(ValueError):
    pass


def place(group: Group, stages: Sequence[Stage], execution: ExecutionConfig, cluster: Mapping[str, float]) -> Placement:
    needs = [stage.worker_resources() for stage in stages]
    cpus = max(need.cpus for need in needs)
    gpus = max(need.gpus for need in needs)
    if gpus:
        gpus_total = cluster.get("GPU", 0)
        if gpus_total < gpus:
            raise PlacementError(
                f"the {group.name} stages ask for {gpus:g} GPU per worker; the cluster has {gpus_total:g}"
            )
        workers = execution.gpu_workers or int(gpus_total / gpus)
        batch_size = execution.model_batch_size if group.batched else 1
        return Placement(group.name, cpus, gpus, workers, batch_size, actors=True)
    workers = max(1, int(max(1, cluster.get("CPU", 1)) / max(cpus, MIN_CPUS_PER_WORKER)))
    if execution.max_workers:
        workers = min(workers, execution.max_workers)
    return Placement(group.name, cpus, 0.0, workers, 1, actors=False)
