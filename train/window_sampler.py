"""Which windows each rank and data-loader worker reads, in which order, and where to resume.

Every rank computes the same plan for an epoch from (seed, epoch) alone:

1. The epoch's draws: every eligible clip once in a random order, or with `balance`, rounds in
   which every group (source, or person) gives its next clip, the groups in a random order each
   round; a group's clips come in a shuffled cycle, so a small group's clips repeat and a large
   group's wait for a later epoch. Balanced epochs have as many draws as there are clips.
2. Each draw gets its window: the clip's bucket (the (height, width) of nearest aspect ratio, the
   longest window length it can fill), a uniformly random first frame, and the reference frame.
3. Draws are grouped by bucket, in draw order, into global batches of `batch_size * world_size`;
   a bucket's last incomplete global batch is dropped (`drop_last`) or filled with the bucket's
   first draws again (`padding` counts them). The global batches are shuffled, so buckets mix
   over the epoch while every step of every rank has one shape.
4. Rank r takes slice r of every global batch: all ranks take the same number of steps, with the
   same shapes, and together read each global batch once.

The rank's batches are dealt to its data-loader workers in turn (worker w takes batches w, w + W,
... from where the epoch resumes); PyTorch's DataLoader collects from its workers in the same
turn, so the training loop sees the rank's batches in plan order whatever the number of workers.
The state is therefore two numbers for all workers: the epoch and how many of the rank's batches
were consumed (`position`); a sampler loaded with it continues with exactly the batches an
uninterrupted run would have read next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from train.data import DataConfig, SampleInfo, Window


def aspect_bucket(width: int, height: int, resolutions: Sequence[tuple[int, int]]) -> int:
    """Index of the (height, width) whose aspect ratio is nearest the clip's (in log ratio)."""
    distances = [abs(np.log(height / width) - np.log(h / w)) for h, w in resolutions]
    return int(np.argmin(distances))


def window_length(num_frames: int, lengths: Sequence[int], stride: int) -> int:
    """The longest of `lengths` a clip of `num_frames` can fill at `stride` (0: none)."""
    return max((n for n in lengths if (n - 1) * stride + 1 <= num_frames), default=0)


def balance_labels(samples: Sequence[SampleInfo], balance: str) -> list[str]:
    """The balancing group of each clip: its source, or its person (identity_id; a clip without one
    is its source's own group)."""
    if balance == "identity":
        return [s.identity_id if s.identity_id is not None else f"source:{s.source_id}" for s in samples]
    return [s.source_id for s in samples]


@dataclass(frozen=True)
class EpochPlan:
    """One rank's batches of one epoch: entry [b, i] is sample i of batch b."""

    samples: np.ndarray  # (batches, batch_size) indices into the sampler's samples
    starts: np.ndarray  # (batches, batch_size) first frame of each window
    references: np.ndarray  # (batches, batch_size) reference frame
    lengths: np.ndarray  # (batches,) window length
    resolutions: np.ndarray  # (batches,) index into DataConfig.resolutions
    padding: int  # draws repeated (over all ranks) to fill the buckets' last global batches
    dropped: int  # draws left out (over all ranks) by drop_last

    def __len__(self) -> int:
        return len(self.samples)


class DistributedClipSampler(torch.utils.data.Sampler[list[Window]]):
    """Batches of Windows for one rank (and, inside a DataLoader worker, for that worker).

    Iterating gives the rest of the current epoch from `position`; each batch handed out moves
    `position` past it, and an exhausted epoch continues with the next one at the next iteration.
    """

    def __init__(
        self, samples: Sequence[SampleInfo], config: DataConfig, batch_size: int, rank: int = 0, world_size: int = 1
    ):
        config.validate()
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"batch_size {batch_size}, rank {rank} of {world_size}: not a valid split")
        self.config = config
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.num_samples = len(samples)
        self.clip_frames = np.array([s.num_frames for s in samples], np.int64)
        self.window_lengths = np.array(
            [window_length(s.num_frames, config.window_lengths, config.frame_stride) for s in samples], np.int64
        )
        self.resolution_index = np.array(
            [aspect_bucket(s.width, s.height, config.resolutions) for s in samples], np.int64
        )
        self.eligible = np.flatnonzero(self.window_lengths > 0)
        if not len(self.eligible):
            raise ValueError(f"no clip holds {min(config.window_lengths)} frames at stride {config.frame_stride}")
        self.groups = self._groups(samples) if config.balance else []
        self.epoch = 0
        self.position = 0
        self._plans: dict[int, EpochPlan] = {}

    def _groups(self, samples: Sequence[SampleInfo]) -> list[np.ndarray]:
        """The eligible clips of each balancing group, groups in label order."""
        labels = np.array(balance_labels(samples, self.config.balance), dtype=object)[self.eligible]
        return [self.eligible[labels == label] for label in sorted(set(labels))]

    # -- the plan -------------------------------------------------------------------------------

    def plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            self._plans = {epoch: self._make_plan(epoch)}  # one epoch at a time is all a loop needs
        return self._plans[epoch]

    def _draws(self, rng: np.random.Generator) -> np.ndarray:
        if not self.groups:
            return rng.permutation(self.eligible)
        rounds = -(-len(self.eligible) // len(self.groups))
        columns = []
        for members in self.groups:
            cycles = -(-rounds // len(members))
            columns.append(np.concatenate([rng.permutation(members) for _ in range(cycles)])[:rounds])
        table = np.stack(columns, axis=1)  # (rounds, groups): round k's clip of every group
        order = np.argsort(rng.random(table.shape), axis=1)  # each round's groups in a random order
        return np.take_along_axis(table, order, axis=1).ravel()[: len(self.eligible)]

    def _make_plan(self, epoch: int) -> EpochPlan:
        config = self.config
        rng = np.random.default_rng([config.seed, epoch])
        draws = self._draws(rng)
        lengths = self.window_lengths[draws]
        spans = (lengths - 1) * config.frame_stride + 1
        starts = (rng.random(len(draws)) * (self.clip_frames[draws] - spans + 1)).astype(np.int64)
        if config.reference == "first":
            references = starts
        else:  # uniform over the frames before and after the window's span; none: its first frame
            outside = self.clip_frames[draws] - spans
            pick = (rng.random(len(draws)) * outside).astype(np.int64)
            references = np.where(outside > 0, np.where(pick < starts, pick, pick + spans), starts)

        size = self.batch_size * self.world_size
        buckets = self.resolution_index[draws] * (lengths.max() + 1) + lengths
        batches, padding, dropped = [], 0, 0
        for bucket in np.unique(buckets):
            members = np.flatnonzero(buckets == bucket)  # positions in the draws, in draw order
            rest = len(members) % size
            if rest and config.drop_last:
                members, dropped = members[: len(members) - rest], dropped + rest
            elif rest:
                members, padding = np.resize(members, len(members) + size - rest), padding + size - rest
            batches.extend(members.reshape(-1, size))
        if not batches:
            raise ValueError(f"epoch {epoch} has no complete global batch of {size} windows (drop_last)")
        mine = np.stack(batches)[rng.permutation(len(batches))][
            :, self.rank * self.batch_size : (self.rank + 1) * self.batch_size
        ]
        return EpochPlan(
            samples=draws[mine],
            starts=starts[mine],
            references=references[mine],
            lengths=lengths[mine[:, 0]],
            resolutions=self.resolution_index[draws[mine[:, 0]]],
            padding=padding,
            dropped=dropped,
        )

    def windows(self, plan: EpochPlan, batch: int) -> list[Window]:
        height, width = self.config.resolutions[plan.resolutions[batch]]
        return [
            Window(
                int(index),
                int(start),
                int(plan.lengths[batch]),
                self.config.frame_stride,
                int(reference),
                height,
                width,
            )
            for index, start, reference in zip(plan.samples[batch], plan.starts[batch], plan.references[batch])
        ]

    # -- iteration and state ----------------------------------------------------------------------

    def __len__(self) -> int:
        """The rank's batches in the current epoch."""
        return len(self.plan(self.epoch))

    def _roll_over(self) -> None:
        if self.position >= len(self.plan(self.epoch)):
            self.epoch, self.position = self.epoch + 1, 0

    def __iter__(self) -> Iterator[list[Window]]:
        info = torch.utils.data.get_worker_info()
        return self.batches(0, 1) if info is None else self.batches(info.id, info.num_workers)

    def batches(self, worker: int, num_workers: int) -> Iterator[list[Window]]:
        """The rest of the current epoch's batches that fall to `worker` of `num_workers`."""
        self._roll_over()
        epoch, start = self.epoch, self.position
        plan = self.plan(epoch)
        for batch in range(start + worker, len(plan), num_workers):
            self.position = batch + 1
            yield self.windows(plan, batch)

    def state_dict(self) -> dict[str, Any]:
        self._roll_over()
        return {"epoch": self.epoch, "position": self.position, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = self._fingerprint()
        found = {name: state.get(name) for name in expected}
        if found != expected:
            raise ValueError(f"sampler state of another split or dataset: {found}, this sampler is {expected}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _fingerprint(self) -> dict[str, int]:
        """What the position's meaning depends on (the seed and buckets are the config's to keep)."""
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "world_size": self.world_size}
