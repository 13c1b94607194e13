"""Typed records that flow between stages.

A run moves these through Ray as pickled Python objects; nothing else is passed between stages.
Later stages (faces, sync, transcripts, captions) add their own result records as optional
fields of `CandidateClip`, so a stage reads exactly the fields it needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from schemas.face import FaceResult
from schemas.fingerprint import Fingerprint
from schemas.frames import HeldPictures
from schemas.sync import SyncResult
from schemas.text import Caption, Keyframe, Transcript

FPS = 25
"""Frame rate of every normalized clip."""

SAMPLE_RATE = 16_000
"""Sample rate of every normalized clip's mono audio."""

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
"""Audio samples per video frame (640)."""


class Status(StrEnum):
    PENDING = "pending"  # still moving through the stages
    KEPT = "kept"
    REJECTED = "rejected"


def source_id_for(uri: str) -> str:
    """Stable id of an input: the start of the SHA-1 of its URI (no dots, safe in keys and file names)."""
    return hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass(frozen=True)
class SourceVideo:
    """One input: where it is read from, its id, and the name the manifest records for it."""

    uri: str
    source_id: str
    name: str  # `uri`, or relative to the input that named it (inputs.source_paths)

    @classmethod
    def from_uri(cls, uri: str, name: str | None = None) -> SourceVideo:
        return cls(uri=uri, source_id=source_id_for(uri), name=uri if name is None else name)

    def reject(self, reason: str, detail: str, stage: str) -> CandidateClip:
        return CandidateClip.for_span(self, 0, 0, chunk_index=0).reject(reason, detail, stage)


@dataclass(frozen=True)
class ProbeInfo:
    """What the probe stage learned by opening and demuxing the whole input."""

    container: str
    size_bytes: int
    duration_s: float
    video_codec: str
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # degrees counter-clockwise the stored picture must turn to be upright
    fps: float  # average frame rate of the input
    variable_frame_rate: bool
    num_video_packets: int
    video_start_s: float
    audio_codec: str
    audio_sample_rate: int
    audio_channels: int
    audio_start_s: float
    audio_duration_s: float


@dataclass(frozen=True)
class ProbedSource:
    source: SourceVideo
    probe: ProbeInfo

    @property
    def num_frames(self) -> int:
        """Frames on the normalized 25 fps grid."""
        return int(round(self.probe.duration_s * FPS))

    def reject(self, reason: str, detail: str, stage: str) -> CandidateClip:
        return self.source.reject(reason, detail, stage)


@dataclass(frozen=True)
class SourceChunk:
    """A span of one source on the 25 fps grid, decoded by one worker; long inputs get several.

    `start_frame` and `end_frame` are where the chunk stage put the boundaries. With a cut search,
    each boundary between two chunks moves forward onto the first cut found within
    `cut_search_frames` after it, so a shot is not split there; the chunk after it decodes from
    `lead_frames` earlier, so its scene detector sees the same frames as the one before it does."""

    source: SourceVideo
    probe: ProbeInfo
    index: int
    count: int
    start_frame: int
    end_frame: int  # exclusive
    cut_search_frames: int = 0
    lead_frames: int = 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    @property
    def decode_start_frame(self) -> int:
        """The first frame decoded: the detector's lead before a boundary that may move."""
        return self.start_frame if self.index == 0 else max(0, self.start_frame - self.lead_frames)

    @property
    def decode_end_frame(self) -> int | None:
        """One past the last frame decoded (None: the end of the source): far enough past the end
        boundary to find a cut within the search and confirm it."""
        return None if self.last else self.end_frame + self.cut_search_frames + self.lead_frames

    def reject(self, reason: str, detail: str, stage: str) -> CandidateClip:
        return CandidateClip.for_span(self.source, self.start_frame, self.end_frame, self.index).reject(
            reason, detail, stage
        )

    def remainder(self, from_frame: int) -> SourceChunk:
        """The part of this chunk from `from_frame` on (what is left when processing stops there)."""
        return dataclasses.replace(self, start_frame=from_frame)


@dataclass(frozen=True)
class ChunkDone:
    """Sent after the last clip of a chunk, so the writer knows when a source is complete."""

    source: SourceVideo
    chunk_index: int
    chunk_count: int
    num_clips: int


@dataclass(frozen=True, repr=False)
class ClipVideo:
    """A normalized clip's video at 25 fps: an H.264 MP4 without audio track (`mp4`), or, until the
    encode stage encodes them, its pictures held in the worker (`held`). The scene-cut stage holds
    clips small enough, so a clip that the face or sync stage rejects is never encoded (a rejected
    row drops its video)."""

    width: int
    height: int
    num_frames: int
    mp4: bytes | None = None
    held: HeldPictures | None = None

    def __repr__(self) -> str:
        size = f"{len(self.held)} pictures held" if self.held is not None else f"{len(self.mp4)} bytes"
        return f"ClipVideo({size}, {self.width}x{self.height}, {self.num_frames} frames)"


@dataclass
class CandidateClip:
    """A span of a source between scene cuts; becomes a sample or a rejected manifest row."""

    source: SourceVideo
    chunk_index: int
    start_frame: int  # on the source's 25 fps grid
    end_frame: int  # exclusive
    shot_index: int = -1  # shot number within the chunk
    status: Status = Status.PENDING
    reason: str | None = None
    reason_detail: str | None = None
    rejected_by: str | None = None  # stage name
    video: ClipVideo | None = None
    audio_context: np.ndarray | None = (
        None  # int16 mono at SAMPLE_RATE, from `audio_context_frames` before the clip to as many after
    )
    audio_context_frames: int = 0
    probe: ProbeInfo | None = None
    frames: np.ndarray | None = None  # (T, h, w, 3) RGB analysis frames; never leaves the worker group that uses them
    face: FaceResult | None = None
    sync: SyncResult | None = None
    keyframes: list[Keyframe] = field(default_factory=list)  # a few small frames for the captioner
    transcript: Transcript | None = None
    caption: Caption | None = None
    fingerprint: Fingerprint | None = None  # for near-duplicate search (talkcurate dedup)
    backends: dict[str, str] = field(default_factory=dict)  # field name -> backend that produced it

    @classmethod
    def for_span(cls, source: SourceVideo, start_frame: int, end_frame: int, chunk_index: int) -> CandidateClip:
        return cls(source=source, chunk_index=chunk_index, start_frame=start_frame, end_frame=end_frame)

    @property
    def key(self) -> str:
        """WebDataset key: unique per source and span, stable across runs, no dots."""
        return f"{self.source.source_id}_{self.start_frame:08d}"

    @property
    def start_s(self) -> float:
        return self.start_frame / FPS

    @property
    def end_s(self) -> float:
        return self.end_frame / FPS

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame

    @property
    def audio(self) -> np.ndarray | None:
        """The clip's own audio, int16 mono at SAMPLE_RATE: sample n * 640 belongs to frame n. Once
        the sync stage has corrected the clip, that is the audio in sync with the video, taken
        `sync.audio_shift` samples later in the context (earlier when negative)."""
        if self.audio_context is None:
            return None
        shift = self.sync.audio_shift if self.sync else 0
        start = self.audio_context_frames * SAMPLE_RATE // FPS + shift
        length = self.num_frames * SAMPLE_RATE // FPS
        if not 0 <= start <= len(self.audio_context) - length:
            raise ValueError(
                f"an audio shift of {shift} samples leaves the audio context of {self.audio_context_frames} frames"
            )
        return self.audio_context[start : start + length]

    @property
    def can_be_cut(self) -> bool:
        """Whether `part` can cut this clip: its pictures are held, not yet encoded (or it has no video)."""
        return self.video is None or self.video.held is not None

    def part(self, start: int, end: int) -> CandidateClip:
        """Frames `start` to `end` (exclusive, counted from the clip's first) as a clip of their own,
        with their pictures, analysis frames and audio context; a clip encoded while streaming
        cannot be cut (ValueError)."""
        if not 0 <= start < end <= self.num_frames:
            raise ValueError(f"frames {start}-{end} are not a part of a clip of {self.num_frames}")
        if not self.can_be_cut:
            raise ValueError("the clip was encoded while its frames streamed by; only held pictures can be cut")
        video = self.video
        context = self.audio_context
        if context is not None:  # the context runs `audio_context_frames` past the clip on both sides
            context = context[start * SAMPLES_PER_FRAME : (end + 2 * self.audio_context_frames) * SAMPLES_PER_FRAME]
        return dataclasses.replace(
            self,
            start_frame=self.start_frame + start,
            end_frame=self.start_frame + end,
            video=video and dataclasses.replace(video, num_frames=end - start, held=video.held.part(start, end)),
            frames=None if self.frames is None else self.frames[start:end],
            audio_context=context,
        )

    def remainder(self, from_frame: int) -> CandidateClip:
        """The span of this clip from `from_frame` (on the source's grid) on, for the row of what a
        failure leaves unprocessed."""
        return dataclasses.replace(self, start_frame=from_frame)

    def reject(self, reason: str, detail: str, stage: str) -> CandidateClip:
        """This clip as a rejected row; heavy payloads are dropped, they will never be written."""
        return dataclasses.replace(
            self,
            status=Status.REJECTED,
            reason=reason,
            reason_detail=detail,
            rejected_by=stage,
            video=None,
            audio_context=None,
            frames=None,
            keyframes=[],
        )


@dataclass(frozen=True)
class Rejected:
    """What a stage returns instead of its output: a stable snake_case reason and a human detail.

    `measured` is the input as the stage measured it before it rejected it (a copy with the stage's
    fields set), so the rejected row records what was measured; None: the row is the input's."""

    reason: str
    detail: str = ""
    measured: CandidateClip | None = None

    def row(self, item, stage: str) -> CandidateClip:
        """The rejected row this makes of `item` (a clip, or a source, chunk or stream that names its
        span): the record as the stage measured it, when it carries one."""
        return (item if self.measured is None else self.measured).reject(self.reason, self.detail, stage)
