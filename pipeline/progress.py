"""What a person watching a run reads: sources done of all, clips seen and kept, hours of video
processed, elapsed time and an estimate of the time left.

In a terminal the line is redrawn in place every second; without one (nohup, CI, a log file) it is
written as a new line every 30 s. Both end with a last line when the run ends. The estimate is by
sources: the elapsed time per finished source times the sources left, so it is rough until a few
sources are done and when their lengths differ much.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from schemas.records import CandidateClip, Status

TERMINAL_INTERVAL_S = 1.0
LOG_INTERVAL_S = 30.0


class Progress:
    def __init__(
        self,
        sources: int,
        done_before: int,
        stream: TextIO = sys.stderr,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.sources, self.done_before = sources, done_before
        self.done = done_before
        self.clips = self.kept = 0
        self.video_s = 0.0
        self._stream, self._clock = stream, clock
        self._terminal = stream.isatty()
        self._interval = TERMINAL_INTERVAL_S if self._terminal else LOG_INTERVAL_S
        self._started = self._last = clock()

    def observe(self, item: object, sources_done: int) -> None:
        """A record the driver received; `sources_done`: sources finished so far, earlier runs' included."""
        self.done = sources_done
        if isinstance(item, CandidateClip):
            self.clips += 1
            self.kept += item.status is not Status.REJECTED
            self.video_s += item.end_s - item.start_s
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._show(now)

    def close(self, sources_done: int) -> None:
        """The last line, once the writer has published the last sources."""
        self.done = sources_done
        self._show(self._clock(), last=True)

    def line(self, now: float) -> str:
        elapsed = now - self._started
        finished_now = self.done - self.done_before
        left = self.sources - self.done
        if not left:
            eta = "done"
        elif finished_now:
            eta = f"ETA {_clock_time(elapsed / finished_now * left)}"
        else:
            eta = "ETA unknown"
        return (
            f"progress: {self.done}/{self.sources} sources, {self.clips} clips ({self.kept} kept), "
            f"{self.video_s / 3600:.2f} h of video, {_clock_time(elapsed)} elapsed, {eta}"
        )

    def _show(self, now: float, last: bool = False) -> None:
        if self._terminal:
            self._stream.write("\r\x1b[2K" + self.line(now) + ("\n" if last else ""))
        else:
            self._stream.write(self.line(now) + "\n")
        self._stream.flush()


def _clock_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
