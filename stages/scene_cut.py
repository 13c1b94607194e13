"""Scene cut: PySceneDetect on small frames as they are decoded, then shots split into clips.

Shots are split greedily into clips of at most `max_clip_s`; a shot, or the tail of one, shorter
than `min_clip_s` becomes a `too_short` row. A clip whose pictures fit in `hold_clip_mb` is held
and encoded at the end of the worker group, after the face and sync stages, so the clips they
reject cost no encode; a larger one is encoded while its frames stream by. A worker holds at most
one clip's pictures, never a shot.

A chunk's clips take its frames from its start boundary to its end boundary, where these land on
cuts (see stages/chunk.py): the frames decoded before and after are for the detectors only.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import av
import numpy as np
from scenedetect.common import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector, HashDetector, HistogramDetector

from core.config import MB, option
from schemas.frames import HeldPictures, NormalizedFrame
from schemas.records import FPS, CandidateClip, ClipVideo, SourceChunk, Status
from stages.base import Resources, Stage
from stages.clip_encoder import ClipEncoder
from stages.normalize import NormalizedChunk

_RATE = Fraction(FPS)

DETECTORS = {
    "adaptive": (AdaptiveDetector, "adaptive_threshold"),
    "content": (ContentDetector, "threshold"),
    "hash": (HashDetector, "threshold"),
    "histogram": (HistogramDetector, "threshold"),
}


class _OpenClip:
    """A clip whose frames are still arriving: held for the encode stage, or encoded as they come."""

    def __init__(self, chunk: NormalizedChunk, start: int, shot: int, max_frames: int, hold: bool):
        self.start = self.end = start
        self.shot = shot
        self.width, self.height, self.settings = chunk.width, chunk.height, chunk.encoder
        self.held: list[av.VideoFrame] | None = [] if hold else None
        self.encoder = None if hold else ClipEncoder(chunk.width, chunk.height, chunk.encoder)
        self.max_frames = max_frames
        self.analysis: np.ndarray | None = None  # filled in place: no second copy when the clip closes

    def add(self, frame: NormalizedFrame) -> None:
        if self.encoder is None:
            self.held.append(frame.picture)
        else:
            self.encoder.add(frame.picture)
        if frame.analysis is not None:
            if self.analysis is None:
                self.analysis = np.empty((self.max_frames, *frame.analysis.shape), np.uint8)
            self.analysis[self.end - self.start] = frame.analysis
        self.end = frame.index + 1

    def analysis_frames(self) -> np.ndarray | None:
        return None if self.analysis is None else self.analysis[: self.end - self.start]

    def video(self) -> ClipVideo:
        size = (self.width, self.height, self.end - self.start)
        if self.encoder is None:
            return ClipVideo(*size, held=HeldPictures(self.held, self.settings))
        return ClipVideo(*size, mp4=self.encoder.finish())

    def abort(self) -> None:
        self.held = None
        if self.encoder is not None:
            self.encoder.abort()


class _Boundary:
    """Where a boundary between two chunks lands: on the first cut that a detector started the
    chunk's lead before it finds within the cut search after it; else at the end of the search.
    The chunks on both sides run this on the same frames, so they land it on the same frame."""

    def __init__(self, nominal: int, chunk: SourceChunk, detector):
        self.nominal, self.search_end = nominal, nominal + chunk.cut_search_frames
        self._feed_from, self._feed_to = nominal - chunk.lead_frames, self.search_end + chunk.lead_frames
        self._detector = detector
        self._cut: int | None = None

    def feed(self, frame: NormalizedFrame) -> None:
        if self._cut is None and self._feed_from <= frame.index < self._feed_to:
            found = self._detector.process_frame(FrameTimecode(frame.index, _RATE), frame.small)
            self._cut = next((tc.frame_num for tc in found if self.nominal <= tc.frame_num < self.search_end), None)

    def landed(self, index: int) -> bool:
        """Whether the boundary is at or before frame `index`; known once the detector has seen the
        frames after `index` that it needs to report a cut there."""
        return (self._cut is not None and self._cut <= index) or index >= self.search_end

    @property
    def frame(self) -> int:
        """Where it landed (once it has)."""
        return self._cut if self._cut is not None else self.search_end


class _ChunkSpan:
    """The frames a chunk's clips take: from its start boundary on, up to its end boundary."""

    def __init__(self, chunk: SourceChunk, make_detector):
        search = chunk.cut_search_frames > 0
        self.start = _Boundary(chunk.start_frame, chunk, make_detector()) if search and chunk.index else None
        self.end = _Boundary(chunk.end_frame, chunk, make_detector()) if search and not chunk.last else None

    def feed(self, frame: NormalizedFrame) -> None:
        for boundary in (self.start, self.end):
            if boundary is not None:
                boundary.feed(frame)

    def takes(self, index: int) -> bool:
        return self.start is None or self.start.landed(index)

    def ended(self, index: int) -> bool:
        return self.end is not None and self.end.landed(index)


@dataclass
class SceneCutStage(Stage[NormalizedChunk, CandidateClip]):
    """Detect shot cuts with PySceneDetect and split shots into clips of bounded length."""

    name: ClassVar[str] = "scene_cut"
    input_type: ClassVar[type] = NormalizedChunk
    resources: ClassVar[Resources] = Resources(cpus=1)

    detector: str = option("adaptive", "PySceneDetect detector: adaptive, content, hash or histogram.")
    threshold: float | None = option(
        None,
        "The detector's threshold (adaptive_threshold for adaptive); unset (or --set ...=null) keeps PySceneDetect's "
        "default.",
    )
    min_scene_len_frames: int = option(15, "No two cuts closer than this many frames.")
    detect_width: int = option(256, "Width of the frames the detector sees (PySceneDetect's auto-downscale size).")
    min_clip_s: float = option(2.0, "Shots and shot tails shorter than this become `too_short` rows.")
    max_clip_s: float = option(10.0, "Shots longer than this are split into clips of at most this length.")
    audio_context_frames: int = option(
        15,
        "Audio kept on both sides of each clip, so the sync stage can shift a clip's audio by up to this many frames.",
    )
    min_audio_coverage: float = option(
        0.9, "Clips whose span the audio stream covers less than this share of are `no_audio`."
    )
    hold_clip_mb: float = option(
        160.0,
        "Clips whose pictures at the stored size fit in this many MB are encoded after the face and sync stages, "
        "so the clips they reject are never encoded; larger ones are encoded as they stream (0: always as they "
        "stream).",
    )

    def validate(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"scene_cut.detector must be one of {sorted(DETECTORS)}, not {self.detector!r}")
        if not 0 < self.min_clip_s <= self.max_clip_s:
            raise ValueError("scene_cut needs 0 < min_clip_s <= max_clip_s")

    def _make_detector(self):
        cls, threshold_name = DETECTORS[self.detector]
        kwargs = {"min_scene_len": self.min_scene_len_frames}
        if self.threshold is not None:
            kwargs[threshold_name] = self.threshold
        return cls(**kwargs)

    def process(self, item: NormalizedChunk) -> Iterator[CandidateClip]:
        detector = self._make_detector()
        # A detector reports a cut a few frames after it happens (AdaptiveDetector: window_width).
        lag = getattr(detector, "window_width", 0) + 1
        min_frames = round(self.min_clip_s * FPS)
        max_frames = round(self.max_clip_s * FPS)
        hold = max_frames * item.width * item.height * 3 / 2 <= self.hold_clip_mb * MB  # YUV 4:2:0 pictures
        cuts: set[int] = set()
        waiting: deque[NormalizedFrame] = deque()
        finished: deque[CandidateClip] = deque()  # encoded, waiting for their audio
        clip: _OpenClip | None = None
        shot = -1
        span = _ChunkSpan(item.chunk, self._make_detector)
        ended = False

        def place(frame: NormalizedFrame) -> None:
            nonlocal clip, shot
            new_shot = clip is None or frame.index in cuts or frame.index != clip.end
            if new_shot or clip.end - clip.start >= max_frames:
                if clip is not None:
                    finished.append(self._close(item, clip, min_frames))
                shot += int(new_shot)
                clip = _OpenClip(item, frame.index, shot, max_frames, hold)
            clip.add(frame)

        def ready(final: bool) -> Iterator[CandidateClip]:
            while finished and (final or finished[0].end_frame + self.audio_context_frames <= item.audio_end_frame):
                done = finished.popleft()
                yield self._attach_audio(item, done)
                item.release_audio(
                    (finished[0].start_frame if finished else done.end_frame) - self.audio_context_frames
                )

        def take(frame: NormalizedFrame) -> None:
            nonlocal ended
            if span.ended(frame.index):
                ended = True  # the rest of the decode span is the next chunk's; its audio still comes
                item.stop_at(span.end.frame, span.end.frame + self.audio_context_frames)
            elif span.takes(frame.index):
                place(frame)

        last = None
        try:
            for frame in item.frames(small_width=self.detect_width):
                if ended:
                    continue
                last = frame.index
                cuts.update(
                    tc.frame_num for tc in detector.process_frame(FrameTimecode(frame.index, _RATE), frame.small)
                )
                span.feed(frame)
                waiting.append(frame)
                while len(waiting) > lag and not ended:
                    take(waiting.popleft())
                yield from ready(final=False)
            if last is not None and not ended:
                cuts.update(tc.frame_num for tc in detector.post_process(FrameTimecode(last, _RATE)))
            while waiting and not ended:
                take(waiting.popleft())
            if clip is not None:
                finished.append(self._close(item, clip, min_frames))
                clip = None
            yield from ready(final=True)
            # Corrupt data up to the end of the chunk decodes to no frames at all: that span still needs its row.
            decoded_to = item.chunk.start_frame if last is None else last + 1
            if not ended and decoded_to < item.chunk.end_frame and any(f >= decoded_to - 1 for f in item.error_frames):
                yield item.reject_corrupt(item.remainder(decoded_to), f"no frame decodes from frame {decoded_to} on")
        finally:
            if clip is not None:
                clip.abort()

    def _close(self, chunk: NormalizedChunk, clip: _OpenClip, min_frames: int) -> CandidateClip:
        record = CandidateClip(
            source=chunk.source,
            chunk_index=chunk.chunk.index,
            start_frame=clip.start,
            end_frame=clip.end,
            shot_index=clip.shot,
            probe=chunk.probe,
        )
        length = clip.end - clip.start
        if length < min_frames:
            clip.abort()
            return record.reject(
                "too_short", f"{length / FPS:.2f} s between cuts, minimum {self.min_clip_s} s", self.name
            )
        return dataclasses.replace(record, video=clip.video(), frames=clip.analysis_frames())

    def _attach_audio(self, chunk: NormalizedChunk, clip: CandidateClip) -> CandidateClip:
        if clip.status is Status.REJECTED:
            return clip
        broken = [f for f in chunk.error_frames if clip.start_frame - 1 <= f < clip.end_frame + 1]
        if broken:
            return chunk.reject_corrupt(clip, f"corrupt video data near frame {broken[0]}")
        _, coverage = chunk.audio(clip.start_frame, clip.end_frame)
        if coverage < self.min_audio_coverage:
            return clip.reject("no_audio", f"audio covers {coverage:.0%} of the clip", self.name)
        margin = self.audio_context_frames
        context, _ = chunk.audio(clip.start_frame - margin, clip.end_frame + margin)
        return dataclasses.replace(clip, audio_context=context, audio_context_frames=margin)
