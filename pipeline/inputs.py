"""Turning the INPUT arguments of `talkcurate run` into a sorted, de-duplicated source list."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from schemas.records import SourceVideo
from stages.storage import filesystem

VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .mpe .ts .mts .m2ts .flv .wmv .3gp .3g2 .ogv .vob .mxf .dv".split()
)
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


class InputError(ValueError):
    pass


def _is_video_name(name: str) -> bool:
    return not os.path.basename(name).startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES


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


def _expand_uri(uri: str) -> list[str]:
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise InputError(f"cannot read {uri}: {exc}") from None
    if info.type == pafs.FileType.Directory:
        scheme, query = uri.split("://", 1)[0], urlsplit(uri).query
        suffix = f"?{query}" if query else ""  # options such as endpoint_override apply to every file
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return [f"{scheme}://{i.path}{suffix}" for i in infos if i.type == pafs.FileType.File and _is_video_name(i.path)]
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {uri}")
    return [uri]


def discover(inputs: list[str]) -> list[SourceVideo]:
    """Video files, folders (searched recursively for audio-video files), list files, or URIs."""
    uris: list[str] = []
    for entry in inputs:
        if "://" in entry:
            uris.extend(_expand_uri(entry))
        elif os.path.isdir(entry):
            for root, dirs, files in os.walk(entry):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                uris.extend(os.path.abspath(os.path.join(root, name)) for name in files if _is_video_name(name))
        elif os.path.isfile(entry) and os.path.splitext(entry)[1].lower() in LIST_SUFFIXES:
            uris.extend(_from_list(entry))
        elif os.path.lexists(entry):
            uris.append(os.path.abspath(entry))
        else:
            raise InputError(f"input not found: {entry}")
    return [SourceVideo.from_uri(uri) for uri in sorted(set(uris))]
