"""Encode: the held clips' MP4s, last in the worker group that holds their pictures.

The scene-cut stage holds a clip's pictures instead of encoding them as they stream by when they
fit in `scene_cut.hold_clip_mb`; by the time a clip gets here, the face and sync stages have
rejected what they reject, and those clips' pictures were dropped unencoded. Here the survivors
are encoded, each once, before the clip leaves the worker (held pictures cannot be pickled).
Clips encoded while streaming pass through.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from schemas.records import CandidateClip
from stages.base import Resources, Stage
from stages.clip_encoder import ClipEncoder


@dataclass
class EncodeStage(Stage[CandidateClip, CandidateClip]):
    """Encode the clips whose pictures the scene-cut stage held (H.264, the normalize settings)."""

    name: ClassVar[str] = "encode"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)

    def process(self, item: CandidateClip) -> CandidateClip:
        video = item.video
        if video is None or video.held is None:
            return item
        encoder = ClipEncoder(video.width, video.height, video.held.encoder)
        try:
            for picture in video.held.take():
                encoder.add(picture)
            mp4 = encoder.finish()
        except BaseException:
            encoder.abort()
            raise
        return dataclasses.replace(item, video=dataclasses.replace(video, mp4=mp4, held=None))
