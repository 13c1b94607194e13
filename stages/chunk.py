"""Chunk: split a probed source into spans that separate workers decode, so one long input
keeps every core busy. Clips never span two chunks: a boundary acts as a cut. So that it does not
split a shot, the scene-cut stages of the two chunks beside a boundary move it onto the first cut
within `cut_search_s` after it; both find the same cut, each with a scene detector started
`DETECTOR_LEAD_S` before the boundary and fed the same frames."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from core.config import option
from schemas.records import FPS, ProbedSource, SourceChunk
from stages.base import Resources, Stage

DETECTOR_LEAD_S = 2.0
"""A detector decides a cut from the frames around it (the adaptive one: 2 on each side) and finds
none in its first `scene_cut.min_scene_len_frames` (15); two seconds cover both."""


@dataclass
class ChunkStage(Stage[ProbedSource, SourceChunk]):
    """Split long inputs into spans decoded by separate workers."""

    name: ClassVar[str] = "chunk"
    input_type: ClassVar[type] = ProbedSource
    resources: ClassVar[Resources] = Resources(cpus=0.25)

    chunk_s: float = option(
        120.0, "Inputs longer than this are decoded in chunks of about this length (0: never split)."
    )
    cut_search_s: float = option(
        10.0,
        "A boundary between two chunks moves onto the first scene cut within this many seconds after it, so it "
        "does not split a shot; without one there, it lands this far after (0: boundaries stay where they fall).",
    )

    def validate(self) -> None:
        if self.cut_search_s < 0:
            raise ValueError(f"chunk.cut_search_s must be >= 0, not {self.cut_search_s}")

    def process(self, item: ProbedSource) -> Iterator[SourceChunk]:
        total = max(1, item.num_frames)
        per_chunk = round(self.chunk_s * FPS) if self.chunk_s > 0 else total
        count = max(1, round(total / per_chunk))  # the last chunk absorbs a short remainder
        bounds = [round(i * total / count) for i in range(count + 1)]
        search = round(self.cut_search_s * FPS)
        lead = round(DETECTOR_LEAD_S * FPS) if search else 0
        for index in range(count):
            yield SourceChunk(item.source, item.probe, index, count, bounds[index], bounds[index + 1], search, lead)
