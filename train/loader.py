"""The training loop's data: one rank's batches from DataLoader worker processes, with a state a
checkpoint saves so a resumed run reads exactly the batches an uninterrupted one would have.

Workers start afresh for each epoch (not persistent) so that each starts from the sampler's
state at that moment; each builds the member tables of the shards it reads once in its epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

from train.data import Batch, ClipDataset, DataConfig, collate, list_samples
from train.window_sampler import DistributedClipSampler

log = logging.getLogger(__name__)


class ClipBatches(torch.utils.data.IterableDataset):
    """The sampler's batches of this process (a worker's share inside a DataLoader), loaded and collated."""

    def __init__(self, dataset: ClipDataset, sampler: DistributedClipSampler):
        self.dataset = dataset
        self.sampler = sampler

    def __iter__(self) -> Iterator[Batch]:
        for windows in self.sampler:
            yield collate([self.dataset[window] for window in windows])


class ClipLoader:
    """Iterating gives the rest of the current epoch's batches of this rank, in plan order;
    `state_dict()` says where the batches handed out so far end."""

    def __init__(
        self, config: DataConfig, batch_size: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False
    ):
        samples = list_samples(config.shards)
        self.dataset = ClipDataset(config, samples)
        self.sampler = DistributedClipSampler(samples, config, batch_size, rank, world_size)
        self.num_workers = config.num_workers
        self.pin_memory = pin_memory
        short = len(samples) - len(self.sampler.eligible)
        log.info(
            "%d clips in %s, %d too short for a %d-frame window", len(samples), config.shards, short, config.num_frames
        )

    def __len__(self) -> int:
        """The rank's batches in the current epoch."""
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        state = self.sampler.state_dict()  # an exhausted epoch has rolled over to the next
        epoch, start = state["epoch"], state["position"]
        loader = torch.utils.data.DataLoader(
            ClipBatches(self.dataset, self.sampler),
            batch_size=None,  # the sampler batches
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        for position, batch in enumerate(loader, start + 1):
            self.sampler.epoch, self.sampler.position = epoch, position
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
