"""Turning the INPUT arguments of `talkcurate run` into a de-duplicated source list, largest first.

Largest first because the run's tail is the last input a worker takes up: started last, a big
file keeps one worker busy while the others have nothing left (longest-processing-time-first
scheduling, with the file's size standing for its work). Sizes come with the listing (a local
stat, an object store's list call); a URI named on its own or in a list file is not asked for
one (on an object store that would be a request per file) and sorts after the sized ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from core.storage import filesystem
from schemas.records import SourceVideo

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
AUDIO_SUFFIXES = frozenset({".m4a", ".mp3", ".wav", ".flac", ".aac", ".ogg", ".opus", ".wma"})


class InputError(ValueError):
    pass


def _skip_reason(name: str) -> str | None:
    """Why a folder scan leaves a file out, or None when it takes it."""
    base = os.path.basename(name)
    suffix = os.path.splitext(base)[1].lower()
    if base.startswith("."):
        return "hidden file"
    if suffix in VIDEO_SUFFIXES:
        return None
    if suffix in AUDIO_SUFFIXES:
        return f"{suffix} is audio only: a sample needs a video with sound"
    return f"{suffix} is not a video suffix" if suffix else "no suffix"


@dataclass
class Inputs:
    sources: list[SourceVideo]  # the largest first, then by name
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files folder scans left out


def _local_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # a dangling link or an unreadable file: the probe stage gives it its row


def _from_list(path: str) -> list[tuple[str, str]]:
    """The list's entries: (where each is read from, as the list writes it)."""
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                # Normalized like every other local input, so one file named two ways is one source.
                entries.append((line if "://" in line else os.path.abspath(os.path.join(base, line)), line))
    return entries


def _expand_uri(uri: str, skipped: list[tuple[str, str]]) -> list[tuple[str, int]]:
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise InputError(f"cannot read {uri}: {exc}") from None
    if info.type == pafs.FileType.Directory:
        scheme, query = uri.split("://", 1)[0], urlsplit(uri).query
        suffix = f"?{query}" if query else ""  # options such as endpoint_override apply to every file
        found = []
        for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if i.type != pafs.FileType.File:
                continue
            if (reason := _skip_reason(i.path)) is not None:
                skipped.append((f"{scheme}://{i.path}", reason))
            else:
                found.append((f"{scheme}://{i.path}{suffix}", i.size or 0))
        return found
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {uri}")
    return [(uri, info.size or 0)]


SOURCE_PATHS = ("relative", "given", "absolute")


def check_source_paths(source_paths: str) -> None:
    if source_paths not in SOURCE_PATHS:
        raise InputError(f"inputs.source_paths must be one of {', '.join(SOURCE_PATHS)}, not {source_paths!r}")


def recorded_name(path: str, root: str, given: str, source_paths: str) -> str:
    """How the manifest names a local input: relative to `root` (the folder of the input argument
    that named it; its base name when it lies elsewhere), as `given` by the user, or absolute."""
    if source_paths == "absolute":
        return path
    if source_paths == "given":
        return given
    relative = os.path.relpath(path, root)
    return (os.path.basename(path) if relative.startswith(os.pardir) else relative).replace(os.sep, "/")


def discover(inputs: list[str], source_paths: str = "relative") -> Inputs:
    """Video files, folders (searched recursively for audio-video files), list files, or URIs. URIs
    are recorded as they are; local paths as `source_paths` says."""
    check_source_paths(source_paths)
    sizes: dict[str, int] = {}
    names: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    for entry in inputs:
        if "://" in entry:
            found = [(uri, size, uri) for uri, size in _expand_uri(entry, skipped)]
        elif os.path.isdir(entry):
            root, found = os.path.abspath(entry), []
            for folder, dirs, files in os.walk(entry):
                skipped.extend((os.path.join(folder, d), "hidden folder") for d in sorted(dirs) if d.startswith("."))
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if (reason := _skip_reason(name)) is not None:
                        skipped.append((os.path.join(folder, name), reason))
                    else:
                        path = os.path.abspath(os.path.join(folder, name))
                        given = os.path.join(folder, name)
                        found.append((path, _local_size(path), recorded_name(path, root, given, source_paths)))
        elif os.path.isfile(entry) and os.path.splitext(entry)[1].lower() in LIST_SUFFIXES:
            root = os.path.dirname(os.path.abspath(entry))
            found = [
                (uri, 0, uri) if "://" in uri else (uri, _local_size(uri), recorded_name(uri, root, line, source_paths))
                for uri, line in _from_list(entry)
            ]
        elif os.path.lexists(entry):
            path = os.path.abspath(entry)
            found = [(path, _local_size(entry), recorded_name(path, os.path.dirname(path), entry, source_paths))]
        else:
            raise InputError(f"input not found: {entry}")
        for uri, size, name in found:
            sizes[uri] = max(size, sizes.get(uri, 0))
            names.setdefault(uri, name)  # named by the first input that lists it
    ordered = sorted(sizes, key=lambda uri: (-sizes[uri], uri))
    return Inputs([SourceVideo.from_uri(uri, names[uri]) for uri in ordered], skipped)
