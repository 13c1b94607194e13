"""Chunk: split a probed source into spans that separate workers decode, so one long input
keeps every core busy. A chunk boundary acts as a cut; clips never span two chunks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from core.config import option
from schemas.records import FPS, ProbedSource, SourceChunk
from stages.base import Resources, Stage


@dataclass
class ChunkStage(Stage[ProbedSource, SourceChunk]):
    """Split long inputs into spans decoded by separate workers."""

    name: ClassVar[str] = "chunk"
    input_type: ClassVar[type] = ProbedSource
    resources: ClassVar[Resources] = Resources(cpus=0.25)

    chunk_s: float = option(
        120.0, "Inputs longer than this are decoded in chunks of about this length (0: never split)."
    )

    def process(self, item: ProbedSource) -> Iterator[SourceChunk]:
        total = max(1, item.num_frames)
        per_chunk = round(self.chunk_s * FPS) if self.chunk_s > 0 else total
        count = max(1, round(total / per_chunk))  # the last chunk absorbs a short remainder
        bounds = [round(i * total / count) for i in range(count + 1)]
        for index in range(count):
            yield SourceChunk(item.source, item.probe, index, count, bounds[index], bounds[index + 1])
