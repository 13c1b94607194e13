"""Opening inputs for PyAV: local paths directly, other URIs through pyarrow's filesystems."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlparse

import av
import numpy as np

from core.storage import filesystem, open_input_file
from schemas.records import SAMPLE_RATE

# FFmpeg's own log lines (concealed errors, "moov atom not found") would flood a long run's terminal;
# the stages turn what matters into rejection reasons instead. Not a level but None: PyAV's callback
# takes the GIL for every error line, and a decoder thread logging while the GIL holder frees that
# decoder (waiting for its threads) deadlocks. Exception messages lose FFmpeg's last log line.
av.logging.set_level(None)
logging.getLogger("libav").setLevel(logging.CRITICAL)


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The container's video stream: the first that is not cover art."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def is_local(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> str:
    return urlparse(uri).path if uri.startswith("file://") else uri


def file_size(uri: str) -> int:
    if is_local(uri):
        return os.stat(local_path(uri)).st_size
    fs, path = filesystem(uri)
    return fs.get_file_info(path).size


def open_binary(uri: str) -> Any:
    """A seekable binary file object for any URI pyarrow knows (s3://, gs://, hdfs://, local)."""
    if is_local(uri):
        return open(local_path(uri), "rb")
    return open_input_file(*filesystem(uri))


def decode_audio(uri: str) -> np.ndarray:
    """All of the first audio stream as int16 mono at 16 kHz, decoded straight through (PyAV's
    resampler, as normalize uses it, with each frame following the last whatever its timestamp)."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with open_container(uri) as container:
        if not container.streams.audio:
            raise ValueError(f"{uri}: no audio stream")
        chunks = [
            out.to_ndarray().reshape(-1)
            for frame in [*container.decode(audio=0), None]
            for out in resampler.resample(frame)
        ]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def open_container(uri: str) -> av.container.InputContainer:
    """Open an input for demuxing; the caller closes it. Names never reach a shell."""
    if is_local(uri):
        # The "file:" protocol takes the rest literally, so a name like "concat:a|b" or "-i" stays a name.
        return av.open("file:" + os.path.abspath(local_path(uri)), mode="r", metadata_errors="replace")
    return av.open(open_binary(uri), mode="r", metadata_errors="replace")
