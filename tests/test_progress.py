"""pipeline/progress.py: what the run's progress line says and how often, with a clock the test turns."""

from __future__ import annotations

import io

from pipeline.progress import Progress
from schemas.records import CandidateClip, SourceVideo, Status


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def clip(seconds: float, kept: bool) -> CandidateClip:
    item = CandidateClip(SourceVideo.from_uri("a.mp4"), 0, 0, round(seconds * 25))
    item.status = Status.KEPT if kept else Status.REJECTED
    return item


def test_without_a_terminal_a_line_every_30_s_and_one_at_the_end():
    clock, log = Clock(), io.StringIO()
    progress = Progress(sources=10, done_before=2, stream=log, clock=clock)
    for second in range(0, 95, 5):  # a clip every 5 s; a source done every 20 s
        clock.now = second
        progress.observe(clip(360.0, kept=second % 10 == 0), sources_done=2 + second // 20)
    clock.now = 100.0
    progress.close(sources_done=7)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4  # at 30, 60 and 90 s, and the last
    assert lines[0] == "progress: 3/10 sources, 7 clips (4 kept), 0.70 h of video, 0:00:30 elapsed, ETA 0:03:30"
    # 4 sources done in 90 s, 4 left: 90 s more
    assert lines[2] == "progress: 6/10 sources, 19 clips (10 kept), 1.90 h of video, 0:01:30 elapsed, ETA 0:01:30"
    assert lines[3].startswith("progress: 7/10 sources") and lines[3].endswith("0:01:40 elapsed, ETA 0:01:00")


def test_in_a_terminal_the_line_is_redrawn_and_says_done():
    clock, terminal = Clock(), Terminal()
    progress = Progress(sources=1, done_before=0, stream=terminal, clock=clock)
    progress.observe(clip(3.0, kept=True), sources_done=0)  # before a second has passed: nothing drawn
    assert terminal.getvalue() == ""
    clock.now = 1.5
    progress.observe(clip(3.0, kept=False), sources_done=0)
    progress.close(sources_done=1)
    drawn = terminal.getvalue()
    assert drawn.count("\r\x1b[2K") == 2 and drawn.endswith("0:00:02 elapsed, done\n")
    assert "\n" not in drawn[:-1]  # one line, redrawn in place
    assert "0/1 sources, 2 clips (1 kept), 0.00 h of video, 0:00:02 elapsed, ETA unknown" in drawn
    assert "1/1 sources, 2 clips (1 kept)" in drawn
