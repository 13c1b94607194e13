"""The pipeline: which stages run, in which order, fused into which worker groups.

Stages of one group run in the same worker, passing records in memory: that is how a source
is decoded once and its frames are shared by every frame-level stage, and why full-resolution
frames never enter Ray's object store. The model stages on text (transcription, captioning) form
their own batched group, which a cluster can give GPU workers; only the clips kept so far reach
it, with a few small keyframes instead of their frames. Adding a stage is one module in
`stages/` and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.base import Stage
from stages.caption import CaptionStage
from stages.chunk import ChunkStage
from stages.encode import EncodeStage
from stages.face import FaceStage
from stages.fingerprint import FingerprintStage
from stages.keyframes import KeyframesStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage
from stages.sync import SyncStage
from stages.transcribe import TranscribeStage


@dataclass(frozen=True)
class Group:
    name: str
    stages: tuple[type[Stage], ...]
    batched: bool = (
        False  # on GPU workers, stages get `execution.model_batch_size` clips at once (model stages; no fan-out)
    )


PIPELINE: tuple[Group, ...] = (
    Group("ingest", (ProbeStage, ChunkStage)),
    Group(
        "clips", (NormalizeStage, SceneCutStage, FaceStage, SyncStage, KeyframesStage, FingerprintStage, EncodeStage)
    ),
    Group("text", (TranscribeStage, CaptionStage), batched=True),
)

ALL_STAGES: tuple[type[Stage], ...] = tuple(s for g in PIPELINE for s in g.stages)
