"""Turning the INPUT arguments of `talkcurate run` into a de-duplicated source list, largest first.

Largest first because the run's tail is the last input a worker takes up: started last, a big
file keeps one worker busy while the others have nothing left (longest-processing-time-first
scheduling, with the file's size standing for its work). Sizes come with the listing (a local
stat, an object store's list call); a URI named on its own or in a list file is not asked for
one (on an object store that would be a request per file) and sorts after the sized ones.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from schemas.records import SourceVideo
from stages.storage import filesystem

VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".mpe",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".wmv",
        ".3gp",
        ".3g2",
        ".ogv",
        ".vob",
        ".mxf",
        ".dv",
    ]
)
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


class InputError(ValueError):
    pass


def _is_video_name(name: str) -> bool:
    return not os.path.basename(name).startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES


def _local_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # a dangling link or an unreadable file: the probe stage gives it its row


def _from_list(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                # Normalized like every other local input, so one file named two ways is one source.
                entries.append(line if "://" in line else os.path.abspath(os.path.join(base, line)))
    return entries


def _expand_uri(uri: str) -> list[tuple[str, int]]:
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise InputError(f"cannot read {uri}: {exc}") from None
    if info.type == pafs.FileType.Directory:
        scheme, query = uri.split("://", 1)[0], urlsplit(uri).query
        suffix = f"?{query}" if query else ""  # options such as endpoint_override apply to every file
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return [
            (f"{scheme}://{i.path}{suffix}", i.size or 0)
            for i in infos
            if i.type == pafs.FileType.File and _is_video_name(i.path)
        ]
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {uri}")
    return [(uri, info.size or 0)]


def discover(inputs: list[str]) -> list[SourceVideo]:
    """Video files, folders (searched recursively for audio-video files), list files, or URIs; the
    largest first, then by name."""
    sizes: dict[str, int] = {}
    for entry in inputs:
        if "://" in entry:
            found = _expand_uri(entry)
        elif os.path.isdir(entry):
            found = []
            for root, dirs, files in os.walk(entry):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                paths = [os.path.abspath(os.path.join(root, name)) for name in files if _is_video_name(name)]
                found.extend((path, _local_size(path)) for path in paths)
        elif os.path.isfile(entry) and os.path.splitext(entry)[1].lower() in LIST_SUFFIXES:
            found = [(uri, 0 if "://" in uri else _local_size(uri)) for uri in _from_list(entry)]
        elif os.path.lexists(entry):
            found = [(os.path.abspath(entry), _local_size(entry))]
        else:
            raise InputError(f"input not found: {entry}")
        for uri, size in found:
            sizes[uri] = max(size, sizes.get(uri, 0))
    return [SourceVideo.from_uri(uri) for uri in sorted(sizes, key=lambda uri: (-sizes[uri], uri))]
