"""Encode: the held clips' MP4s, last in the worker group that holds their pictures.

The scene-cut stage holds a clip's pictures instead of encoding them as they stream by when they
fit in `scene_cut.hold_clip_mb`; by the time a clip gets here, the face and sync stages have
rejected what they reject, and those clips' pictures were dropped unencoded. Here the survivors
are encoded, each once, before the clip leaves the worker (pictures never travel). Clips encoded
while streaming pass through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schemas.records import CandidateClip
from stages.base import Resources, Stage


@dataclass
class EncodeStage(Stage[CandidateClip, CandidateClip]):
    """Encode the clips whose pictures the scene-cut stage held (H.264, the normalize settings)."""

    name: ClassVar[str] = "encode"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)

    def process(self, item: CandidateClip) -> CandidateClip:
        if item.video is not None:
            item.video.mp4  # noqa: B018 - reading a held clip's MP4 encodes it
        return item
