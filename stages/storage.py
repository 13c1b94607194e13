"""The run's output folder on any filesystem pyarrow knows (local, s3://, gs://, ...).

Everything a run publishes goes through `write_atomic` or `publish`: written under a temporary
name, then moved into place, so a reader (or a resumed run) never sees a half-written file.
Credentials come from the environment or the usual config files, never from arguments.
"""

from __future__ import annotations

import os
import uuid
from typing import BinaryIO

import pyarrow.fs as pafs

TMP_SUFFIX = ".partial"


class OutputDir:
    def __init__(self, uri: str):
        if "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.root, recursive=True)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def local_path(self, relative: str) -> str:
        if not self.local:
            raise ValueError(f"{self.uri} is not on the local filesystem")
        return self.path(relative)

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def size(self, relative: str) -> int:
        return self.fs.get_file_info(self.path(relative)).size

    def list(self, folder: str, suffix: str = "") -> list[str]:
        """Names (not paths) of the files directly in `folder`, sorted."""
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True)
        names = [
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
        ]
        return sorted(names)

    def read(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as f:
            return f.read()

    def open_read(self, relative: str) -> BinaryIO:
        return self.fs.open_input_file(self.path(relative))

    def open_write(self, relative: str) -> BinaryIO:
        self.fs.create_dir(self.path(os.path.dirname(relative)), recursive=True)
        return self.fs.open_output_stream(self.path(relative))

    def write_atomic(self, relative: str, data: bytes) -> None:
        temporary = f"{relative}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
        with self.open_write(temporary) as f:
            f.write(data)
            if self.local:
                f.flush()
        self.publish(temporary, relative)

    def publish(self, temporary: str, relative: str) -> None:
        """Move a finished file into place (a rename locally, copy-then-delete on object stores)."""
        if self.local:
            _fsync(self.path(temporary))
        self.fs.move(self.path(temporary), self.path(relative))

    def delete(self, relative: str) -> None:
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            pass


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
