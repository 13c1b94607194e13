"""File-descriptor plumbing shared by the pipeline and the stages."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def redirected_to_devnull(fd: int):
    """Point file descriptor `fd` at /dev/null for the duration, then restore it. Works below
    Python, so it also covers C libraries and child processes started meanwhile."""
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
