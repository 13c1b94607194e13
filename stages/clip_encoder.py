"""Encode a clip's pictures into an H.264 MP4 at 25 fps: the scene-cut stage's as they stream by,
the encode stage's from the pictures held for it.

The MP4 is "fast start" (moov before mdat): a reader streaming a sample from object storage
learns the frame index from the first bytes instead of fetching the end first. FFmpeg's muxer
moves the moov by rewriting its output file, so the encoder writes a small temporary file and
returns its bytes. A worker killed mid-encode (kill -9, the OOM killer) leaves that file behind;
the next encoder process on the machine removes the files of processes that are gone."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import tempfile
import weakref
from fractions import Fraction

import av

from schemas.frames import EncoderSettings
from schemas.records import FPS
from stages.base import worker_threads

_TIME_BASE = Fraction(1, FPS)
_TEMP_PREFIX = "talkcurate-clip-"  # then the writing process's id
X264_PARAMS = "cpu-independent=1"


class ClipEncoder:
    def __init__(self, width: int, height: int, settings: EncoderSettings):
        self.width, self.height, self._settings = width, height, settings
        self._open()
        self.num_frames = 0

    def _open(self) -> None:
        remove_orphaned_files()
        handle, self._path = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", suffix=".mp4")
        os.close(handle)
        self._remove = weakref.finalize(self, _remove_file, self._path)  # also if the encoder is dropped
        self._container = av.open(self._path, mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream(self._settings.codec, rate=FPS)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        # x264 sized to the worker like the models: single-threaded, it spends 16% less CPU a frame
        # (veryfast, 360p: 2.5 against 3.0 ms) than with its default of a thread per core.
        # cpu-independent: x264's SIMD macroblock-tree propagation (AVX-512 on CPUs that have it)
        # makes an encode depend on the state of the process's memory, so the same pictures gave
        # different MP4s within one process (issue 15); with its C version the bytes are the same on
        # every CPU, at 1-8% more x264 time.
        self._stream.options = {
            "crf": str(self._settings.crf),
            "preset": self._settings.preset,
            "threads": str(worker_threads()),
            "x264-params": X264_PARAMS,
        }
        # A key frame every second: a trainer reading a window late in a clip seeks to the nearest
        # one instead of decoding the whole clip before it (x264's default is 250 frames).
        self._stream.codec_context.gop_size = FPS

    def add(self, picture: av.VideoFrame) -> None:
        picture.pts = self.num_frames
        picture.time_base = _TIME_BASE
        # Without this, x264 copies the decoded source's picture types, so its key frames land where the source's were.
        picture.pict_type = av.video.frame.PictureType.NONE
        self._container.mux(self._stream.encode(picture))
        self.num_frames += 1

    def finish(self) -> bytes:
        """The MP4."""
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            with open(self._path, "rb") as f:
                return f.read()
        finally:
            self._remove()

    def abort(self) -> None:
        with contextlib.suppress(av.error.FFmpegError):
            self._container.close()
        self._remove()


def _remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@functools.cache
def remove_orphaned_files() -> None:
    """Remove the temporary files of encoder processes that no longer exist (once per process)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{_TEMP_PREFIX}*-*.mp4")):
        pid = os.path.basename(path)[len(_TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove_file(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True
