"""Normalize: decode one chunk of a source once, to 25 fps frames and 16 kHz mono audio.

FFmpeg's own filters do the frame work in C: `transpose`/`flip` for rotated inputs, `fps` for
variable and other frame rates (frames are taken on a fixed 25 fps grid anchored at the first
video frame, so chunks of one source line up exactly), `scale` to the output size. Audio is
resampled by libswresample and placed by its timestamps on the same grid, which honours stream
start times and edit lists (AAC priming), so audio sample `n * 640` belongs to frame `n`.

The result is a lazy, single-use stream: the scene cut stage consumes it in the same worker,
so full-resolution frames never leave the process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import av
import av.filter
import numpy as np

from core.config import option
from core.media_io import open_container, video_stream
from schemas.frames import EncoderSettings, NormalizedFrame
from schemas.records import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, CandidateClip, ProbeInfo, SourceChunk, SourceVideo
from stages.base import Resources, Stage, StreamOutput

log = logging.getLogger(__name__)

_TIMESTAMP_JITTER = SAMPLE_RATE // 500
"""2 ms. Containers with coarse timestamps (Matroska and WebM count milliseconds) stamp audio
frames up to about a millisecond away from where the previous frame ended; placed exactly by
their timestamps, such frames would leave runs of zeros (clicks) and drop samples every few tens
of milliseconds. A frame that starts this close to the end of the last one continues it."""
_FRAME_TIME_BASE = Fraction(1, FPS)

ANALYSIS_LONG_SIDE = 512
"""Long side of the analysis frames the face stage sees by default; lip editing and evaluation
scale their frames to it too, so the face models see what they see when they curate."""

_ROTATION_FILTERS = {90: [("transpose", "cclock")], 180: [("hflip", ""), ("vflip", "")], 270: [("transpose", "clock")]}


def output_size(width: int, height: int, max_short_side: int) -> tuple[int, int]:
    """Display size scaled so the short side is at most `max_short_side` (0 keeps it), both even."""
    scale = 1.0
    if max_short_side and min(width, height) > max_short_side:
        scale = max_short_side / min(width, height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _as_array(
    reformatter: av.video.reformatter.VideoReformatter,
    picture: av.VideoFrame,
    size: tuple[int, int] | None,
    pixel_format: str,
) -> np.ndarray | None:
    if size is None:
        return None
    # Area averaging: the right filter for shrinking, and half the cost of swscale's default
    # bilinear (0.37 against 0.73 ms a frame, 640x360 to 512x288).
    return reformatter.reformat(
        picture, width=size[0], height=size[1], format=pixel_format, interpolation="AREA"
    ).to_ndarray()


class NormalizedChunk(StreamOutput):
    """A chunk being decoded: iterate `frames()` once; audio accumulates alongside."""

    producer: ClassVar[str] = "normalize"

    def __init__(
        self, chunk: SourceChunk, max_short_side: int, encoder: EncoderSettings, strict: bool, analysis_long_side: int
    ):
        super().__init__()
        self.chunk = chunk
        self.encoder = encoder
        self.width, self.height = output_size(chunk.probe.width, chunk.probe.height, max_short_side)
        scale = min(1.0, analysis_long_side / max(self.width, self.height)) if analysis_long_side else 0.0
        self.analysis_size = (max(2, round(self.width * scale)), max(2, round(self.height * scale))) if scale else None
        self._strict = strict
        self._audio = np.zeros(0, np.int16)
        self._audio_base = chunk.decode_start_frame * SAMPLES_PER_FRAME  # grid sample of self._audio[0]
        self._audio_end = self._audio_base  # one past the last sample written
        self._audio_first: int | None = None  # first sample written: the stream may start after the video
        self.error_frames: list[int] = []  # grid frames near which a packet failed to decode
        self.audio_errors = 0
        self._resampler: av.AudioResampler | None = None
        self._resampler_input: tuple[str, str, int] | None = None  # (format, layout, rate) it was made for
        self.frames_out = 0
        end = chunk.decode_end_frame
        self._video_end = self._audio_end_frame = 1 << 40 if end is None else end
        self._next_frame = chunk.decode_start_frame
        # One reformatter per stream (PyAV keeps one made per frame: a 4-minute input grew to 8.6 GB)
        # and per target: it caches one scaling context, which alternating targets would rebuild.
        self._to_small, self._to_analysis = (
            av.video.reformatter.VideoReformatter(),
            av.video.reformatter.VideoReformatter(),
        )
        self._consumed = False

    def __reduce__(self):
        raise TypeError("a NormalizedChunk holds open decoders; run its consumer in the same worker")

    def reject(self, reason: str, detail: str, stage: str):
        return self.chunk.reject(reason, detail, stage)

    def remainder(self, from_frame: int) -> SourceChunk:
        return self.chunk.remainder(from_frame)

    @property
    def source(self) -> SourceVideo:
        return self.chunk.source

    @property
    def probe(self) -> ProbeInfo:
        return self.chunk.probe

    @property
    def audio_end_frame(self) -> int:
        """Frames before this one have all the audio the input holds for them, as far as decoded."""
        return self._audio_end // SAMPLES_PER_FRAME

    def audio(self, start_frame: int, end_frame: int) -> tuple[np.ndarray, float]:
        """int16 samples of the span and the share of it the input really covered."""
        lo, hi = start_frame * SAMPLES_PER_FRAME, end_frame * SAMPLES_PER_FRAME
        out = np.zeros(hi - lo, np.int16)
        a, b = max(lo, self._audio_base), min(hi, self._audio_end)
        if b > a:
            out[a - lo : b - lo] = self._audio[a - self._audio_base : b - self._audio_base]
        covered_from = a if self._audio_first is None else max(a, self._audio_first)
        return out, max(0, b - covered_from) / max(1, hi - lo)

    def stop_at(self, video_end_frame: int, audio_end_frame: int) -> None:
        """Frames from `video_end_frame` on are not needed (the chunk's end boundary landed there):
        video decoding stops, audio goes on to `audio_end_frame` for the last clip's context."""
        self._video_end = min(self._video_end, video_end_frame)
        self._audio_end_frame = min(self._audio_end_frame, max(audio_end_frame, self._video_end))

    def frames(self, small_width: int = 0) -> Iterator[NormalizedFrame]:
        """Decode the chunk; `small_width` > 0 also gives each frame as BGR at that width."""
        decoding = self._decode(small_width)
        while True:
            with self.working():
                frame = next(decoding, None)
            if frame is None:
                return
            yield frame

    def reject_corrupt(self, span: SourceChunk | CandidateClip, detail: str) -> CandidateClip:
        """A `decode_error` row for a span whose data failed to decode: the decoder's finding, made
        while the scene-cut stage read the stream."""
        return span.reject("decode_error", detail, self.producer)

    def _decode(self, small_width: int) -> Iterator[NormalizedFrame]:
        if self._consumed:
            raise RuntimeError("a NormalizedChunk can be iterated once")
        self._consumed = True
        chunk, probe = self.chunk, self.chunk.probe
        small_size = (
            (small_width, max(2, round(small_width * self.height / self.width) // 2 * 2)) if small_width else None
        )
        origin = probe.video_start_s
        decode_start_s = origin + chunk.decode_start_frame / FPS
        origin_pts = round(origin * FPS)

        with open_container(chunk.source.uri) as container:
            video = video_stream(container)
            audio = container.streams.audio[0] if container.streams.audio else None  # None: probed as silent
            video.thread_type = "AUTO"
            if self._strict:
                # Surface corrupt data as errors instead of silently concealed pictures.
                video.codec_context.options = {"err_detect": "explode"}
            if chunk.decode_start_frame > 0:
                container.seek(int(decode_start_s / video.time_base), stream=video, backward=True)
            graph = None
            video_done = False

            for packet in container.demux(*(stream for stream in (video, audio) if stream is not None)):
                video_done = video_done or self._next_frame >= self._video_end
                if audio is not None and packet.stream is audio:
                    self._decode_audio(packet, origin)
                    if video_done and self._audio_end >= self._audio_end_frame * SAMPLES_PER_FRAME:
                        break
                    continue
                if video_done:
                    continue
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    position = packet.pts if packet.pts is not None else packet.dts
                    at = round((float(position * packet.time_base) - origin) * FPS) if position is not None else -1
                    self.error_frames.append(at)
                    log.debug("decode error in %s near frame %d: %s", chunk.source.uri, at, exc)
                    continue
                for frame in decoded:
                    if graph is None:
                        graph = self._build_graph(video, frame, decode_start_s)
                    graph.push(frame)
                    yield from self._pull(graph, origin_pts, small_size)
            if graph is not None and not video_done:
                with contextlib.suppress(ValueError):
                    graph.push(None)
                yield from self._pull(graph, origin_pts, small_size)
            self._decode_audio(None, origin)

    def _pull(
        self, graph: av.filter.Graph, origin_pts: int, small_size: tuple[int, int] | None
    ) -> Iterator[NormalizedFrame]:
        """The pictures the filter graph has ready that fall in the decode span, with their arrays."""
        while True:
            try:
                picture = graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            index = picture.pts - origin_pts
            if index < self.chunk.decode_start_frame or index >= self._video_end:
                continue
            self._next_frame = index + 1
            picture.pts = index
            picture.time_base = _FRAME_TIME_BASE
            self.frames_out += 1
            yield NormalizedFrame(
                index,
                picture,
                _as_array(self._to_small, picture, small_size, "bgr24"),
                _as_array(self._to_analysis, picture, self.analysis_size, "rgb24"),
            )

    def _decode_audio(self, packet: av.Packet | None, origin: float) -> None:
        try:
            frames = packet.decode() if packet is not None else [None]
        except av.error.FFmpegError:
            self.audio_errors += 1
            return
        for frame in frames:
            for out in self._resample(frame):
                samples = out.to_ndarray().reshape(-1)
                if out.pts is None:
                    start = self._audio_end
                else:
                    start = round((float(out.pts * out.time_base) - origin) * SAMPLE_RATE)
                    if self._audio_first is not None and abs(start - self._audio_end) <= _TIMESTAMP_JITTER:
                        start = self._audio_end  # the stream goes on: a gap or overlap this small is rounding
                self._write_audio(start, samples)

    def release_audio(self, before_frame: int) -> None:
        """Forget audio before `before_frame`: no clip still to come starts earlier."""
        drop = min(before_frame * SAMPLES_PER_FRAME, self._audio_end) - self._audio_base
        if drop > 0:
            self._audio = self._audio[drop:].copy()
            self._audio_base += drop

    def _resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """`frame` as 16 kHz mono s16 (None flushes). A resampler only takes the format, layout and
        rate of its first frame, so a stream that changes them mid-way (spliced recordings) gets a new one."""
        if (
            frame is not None
            and (shape := (frame.format.name, frame.layout.name, frame.sample_rate)) != self._resampler_input
        ):
            drained = self._resampler.resample(None) if self._resampler is not None else []
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._resampler_input = shape
            return drained + self._resampler.resample(frame)
        return self._resampler.resample(frame) if self._resampler is not None else []

    def _write_audio(self, start: int, samples: np.ndarray) -> None:
        lo = max(start, self._audio_base)
        hi = start + len(samples)
        if hi <= lo:
            return
        needed = hi - self._audio_base
        if needed > len(self._audio):
            grown = np.zeros(max(needed, 2 * len(self._audio)), np.int16)
            grown[: len(self._audio)] = self._audio
            self._audio = grown
        self._audio[lo - self._audio_base : hi - self._audio_base] = samples[lo - start :]
        self._audio_end = max(self._audio_end, hi)
        self._audio_first = lo if self._audio_first is None else min(self._audio_first, lo)

    def _build_graph(
        self, stream: av.video.stream.VideoStream, first: av.VideoFrame, start_s: float
    ) -> av.filter.Graph:
        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=stream)]
        for name, args in _ROTATION_FILTERS.get(int(getattr(first, "rotation", 0) or 0) % 360, []):
            chain.append(graph.add(name, args))
        chain.append(graph.add("fps", f"fps={FPS}:start_time={start_s:.6f}:round=near"))
        chain.append(graph.add("scale", f"w={self.width}:h={self.height}:flags=bicubic"))
        chain.append(graph.add("format", "pix_fmts=yuv420p"))
        chain.append(graph.add("buffersink"))
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()
        return graph


@dataclass
class NormalizeStage(Stage[SourceChunk, NormalizedChunk]):
    """Decode once to 25 fps frames and 16 kHz mono audio; the output format of stored clips."""

    name: ClassVar[str] = NormalizedChunk.producer
    input_type: ClassVar[type] = SourceChunk
    resources: ClassVar[Resources] = Resources(cpus=1)

    max_short_side: int = option(
        720, "Clips are scaled down so their short side is at most this (0 keeps the input size)."
    )
    crf: int = option(18, "x264 constant rate factor of the stored clips (lower is better quality).")
    preset: str = option("veryfast", "x264 preset of the stored clips.")
    strict_decoding: bool = option(
        True, "Treat concealable decode errors as errors, so clips with corrupt frames are rejected `decode_error`."
    )
    analysis_long_side: int = option(
        ANALYSIS_LONG_SIDE,
        "Long side of the RGB frames shared in memory with frame-level stages such as faces (0: none).",
    )

    def process(self, item: SourceChunk) -> NormalizedChunk:
        settings = EncoderSettings("libx264", self.crf, self.preset)
        return NormalizedChunk(item, self.max_short_side, settings, self.strict_decoding, self.analysis_long_side)
