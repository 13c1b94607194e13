"""Probe: open every input, demux all of it and decode its first frames.

Demuxing every packet (cheap next to decoding) finds truncated data and gives a duration for
containers that declare none; decoding the first frames of both streams finds codecs that cannot
be decoded. Frame-level corruption later in the file is caught by the normalize stage, which
decodes everything once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import av

from core.config import option
from core.media_io import file_size, open_binary, open_container, video_stream
from schemas.records import ProbedSource, ProbeInfo, Rejected, SourceVideo
from stages.base import Resources, Stage


def _seconds(value: int | None, time_base) -> float | None:
    return None if value is None or time_base is None else float(value * time_base)


def _iso_bmff_lacks_index(uri: str) -> bool:
    """True for an MP4/MOV whose top-level boxes hold media data but no `moov` index (cut before it)."""
    with open_binary(uri) as f:
        head = f.read(12)
        if len(head) < 12 or head[4:8] not in (b"ftyp", b"mdat", b"wide", b"free"):
            return False
        f.seek(0)
        boxes = set()
        position = 0
        while True:
            header = f.read(8)
            if len(header) < 8:
                break
            size = int.from_bytes(header[:4], "big")
            kind = header[4:8]
            if size == 1:
                size = int.from_bytes(f.read(8), "big")
            boxes.add(kind)
            if size < 8:
                break  # size 0 runs to the end of the file
            position += size
            f.seek(position)
        return b"moov" not in boxes and b"mdat" in boxes


@dataclass
class ProbeStage(Stage[SourceVideo, ProbedSource]):
    """Open, demux and start decoding every input; unreadable ones become rejected rows."""

    name: ClassVar[str] = "probe"
    input_type: ClassVar[type] = SourceVideo
    resources: ClassVar[Resources] = Resources(cpus=0.5)

    min_duration_s: float = option(0.5, "Inputs shorter than this are rejected `too_short`.")
    truncation_tolerance: float = option(
        0.9, "An input whose packets cover less than this share of its declared duration is `truncated`."
    )
    decode_check_frames: int = option(3, "Frames of each stream decoded to prove the codecs work.")
    require_audio: bool = option(
        True,
        "Inputs without an audio stream are rejected `no_audio` (false: probed as silent video, as `talkcurate "
        "evaluate` reads generated videos whose speech comes separately).",
    )

    def process(self, item: SourceVideo) -> ProbedSource | Rejected:
        try:
            size = file_size(item.uri)
        except (OSError, FileNotFoundError) as exc:
            return Rejected("unreadable", f"cannot stat input: {exc}")
        if size == 0:
            return Rejected("unreadable", "zero-byte file")
        try:
            container = open_container(item.uri)
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
            if _iso_bmff_lacks_index(item.uri):
                return Rejected("truncated", "MP4/MOV without its moov index: the file was cut before the end")
            return Rejected("unreadable", f"not a media file FFmpeg can open: {exc}")
        with container:
            return self._probe_open(item, container, size)

    def _probe_open(self, item: SourceVideo, container: av.container.InputContainer, size: int):
        video = video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None:
            return Rejected("no_video", "the input has no video stream")
        if audio is None and self.require_audio:
            return Rejected("no_audio", "the input has no audio stream")

        coverage = _demux(container, video, audio)
        starts, ends, video_packets, video_pts = (
            coverage.starts,
            coverage.ends,
            coverage.video_packets,
            coverage.video_pts,
        )
        if video_packets == 0:
            return Rejected("no_video", "the video stream holds no packets")
        video_start = starts.get(video.index, 0.0)
        audio_start = starts.get(audio.index, 0.0) if audio is not None else 0.0
        video_span = ends[video.index] - video_start
        audio_span = ends[audio.index] - audio_start if audio is not None else 0.0
        # The container's duration spans every stream (audio may outlast the video), so it is
        # compared with what all packets cover, the video stream's own duration with the video's.
        all_span = max(ends.values()) - min(starts.values(), default=0.0)
        for span, declared in (
            (video_span, _seconds(video.duration, video.time_base)),
            (all_span, container.duration / av.time_base if container.duration else None),
        ):
            if declared and span < self.truncation_tolerance * declared:
                return Rejected("truncated", f"packets cover {span:.2f} s of the declared {declared:.2f} s")
        if coverage.error is not None and video_span == 0:
            return Rejected("unreadable", f"demuxing failed: {coverage.error}")
        if audio is not None and audio_span <= 0:
            return Rejected("no_audio", "the audio stream holds no packets")
        if video_span < self.min_duration_s:
            return Rejected("too_short", f"video lasts {video_span:.2f} s")

        first_video = self._first_frames(item.uri, "video")
        if isinstance(first_video, Rejected):
            return first_video
        first_audio = self._first_frames(item.uri, "audio") if audio is not None else None
        if isinstance(first_audio, Rejected):
            return first_audio

        rotation = int(getattr(first_video, "rotation", 0) or 0) % 360
        width, height = first_video.width, first_video.height
        if rotation in (90, 270):
            width, height = height, width
        rate = video.average_rate or video.guessed_rate
        fps = float(rate) if rate else video_packets / max(video_span, 1e-6)
        # Presentation times at irregular steps (beyond one tick of rounding) mean variable frame rate.
        steps = sorted({b - a for a, b in zip(sorted(video_pts), sorted(video_pts)[1:])})
        variable = len(steps) > 1 and steps[-1] - steps[0] > 1
        return ProbedSource(
            source=item,
            probe=ProbeInfo(
                container=container.format.name,
                size_bytes=size,
                duration_s=video_span,
                video_codec=video.codec_context.name,
                width=width,
                height=height,
                rotation=rotation,
                fps=fps,
                variable_frame_rate=variable,
                num_video_packets=video_packets,
                video_start_s=video_start,
                audio_codec=audio.codec_context.name if audio is not None else "",
                audio_sample_rate=(audio.codec_context.sample_rate or 0) if audio is not None else 0,
                audio_channels=(audio.codec_context.channels or 0) if audio is not None else 0,
                audio_start_s=audio_start,
                audio_duration_s=audio_span,
            ),
        )

    def _first_frames(self, uri: str, kind: str):
        """The first decoded frame of the stream, after `decode_check_frames` decode without error."""
        try:
            with open_container(uri) as container:
                stream = video_stream(container) if kind == "video" else container.streams.audio[0]
                first = None
                for count, frame in enumerate(container.decode(stream)):
                    first = first or frame
                    if count + 1 >= self.decode_check_frames:
                        break
        except av.error.FFmpegError as exc:
            return Rejected("decode_error", f"the {kind} stream cannot be decoded: {exc}")
        if first is None:
            return Rejected("decode_error", f"the {kind} stream decodes to no frames")
        return first


@dataclass
class _Coverage:
    """What one pass over every video and audio packet found."""

    starts: dict[int, float]  # stream index: first presentation time, seconds
    ends: dict[int, float]  # stream index: end of the last packet, seconds
    video_packets: int
    video_pts: list[int]  # the first 512 video packets' timestamps, for frame rate regularity
    error: av.error.FFmpegError | None  # what stopped the pass early, if anything


def _demux(container: av.container.InputContainer, video, audio) -> _Coverage:
    """Demux everything once: packet coverage, frame rate regularity, errors in the container.
    `audio` is None for a silent video."""
    streams = [stream for stream in (video, audio) if stream is not None]
    coverage = _Coverage({}, {stream.index: 0.0 for stream in streams}, 0, [], None)
    try:
        for packet in container.demux(*streams):
            if packet.pts is None or packet.size == 0:
                continue
            t0 = float(packet.pts * packet.time_base)
            t1 = t0 + float((packet.duration or 0) * packet.time_base)
            index = packet.stream_index
            coverage.starts[index] = min(coverage.starts.get(index, t0), t0)
            coverage.ends[index] = max(coverage.ends[index], t1)
            if index == video.index:
                coverage.video_packets += 1
                if len(coverage.video_pts) < 512:
                    coverage.video_pts.append(packet.pts)
    except av.error.FFmpegError as exc:
        coverage.error = exc
    return coverage
