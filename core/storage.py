"""The run's output folder on any filesystem pyarrow knows (local, s3://, gs://, ...).

Everything a run publishes goes through `write_atomic`, or is written at `staging_name` and then
`publish`ed, so a reader (or a resumed run) never sees a half-written file: on a filesystem, a
hidden temporary name renamed into place; on an object store, the final name itself, since an
upload becomes visible only once it is complete and a "rename" there is a full copy. Either way a
shard counts only once the journal records it (see pipeline/output.py), and a resumed run deletes
shards without a record.

Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
GOOGLE_APPLICATION_CREDENTIALS, ...) or the usual config files, never from URIs: a URI lands in the
manifest, the journal and the logs, so one carrying a secret is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import BinaryIO
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import pyarrow.fs as pafs

TMP_SUFFIX = ".partial"
OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})  # pyarrow filesystem type names
SECRET_QUERY_KEYS = frozenset(
    {
        "access_key",
        "secret_key",
        "session_token",
        "access_token",
        "account_key",
        "sas_token",
        "client_secret",
        "password",
    }
)
URI_PATH_SAFE = "/:@!$&'()*+,;=~"  # RFC 3986 path characters left as they are ("%" is not: names are literal)
REMOTE_READ_BYTES = 4 << 20
"""Read size on remote filesystems, where every read is a request (tens of ms on an object store):
FFmpeg's 32 KB reads or tarfile's 512-byte headers would each cost one."""


class CredentialsInUri(ValueError):
    pass


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for a URI, refusing URIs that carry credentials."""
    parts = urlsplit(uri)
    secret_keys = {key for key, _ in parse_qsl(parts.query)} & SECRET_QUERY_KEYS
    if parts.password is not None or secret_keys:
        shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"  # without the secret
        raise CredentialsInUri(
            f"{shown}: the URI carries credentials, which would land in the manifest and the logs; "
            "give them in the environment (e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the usual config files"
        )
    # pyarrow parses URIs strictly, while object names (as listed, or as a person types them) are
    # taken literally: "raw/my clip.mp4" is that object, so its path is percent-encoded for pyarrow.
    encoded = urlunsplit((parts.scheme, parts.netloc, quote(parts.path, safe=URI_PATH_SAFE), parts.query, ""))
    return pafs.FileSystem.from_uri(encoded)


def open_input_file(fs: pafs.FileSystem, path: str) -> BinaryIO:
    """A seekable reader, buffered on remote filesystems."""
    raw = fs.open_input_file(path)
    return raw if isinstance(fs, pafs.LocalFileSystem) else io.BufferedReader(raw, buffer_size=REMOTE_READ_BYTES)


class OutputDir:
    """A run's folder. Readers (inspect, verify, browse...) leave the filesystem as it is; a writer
    passes `create=True` to make the folder at once, so a path it cannot write fails first."""

    def __init__(self, uri: str, create: bool = False):
        if "://" in uri:
            self.fs, self.root = filesystem(uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.uri = uri
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.object_store = self.fs.type_name in OBJECT_STORES
        if create:
            try:
                self.fs.create_dir(self.root, recursive=True)
            except OSError as exc:
                raise OSError(f"{uri}: cannot create the output folder: {exc}") from None

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
        return open_input_file(self.fs, self.path(relative))

    def open_write(self, relative: str) -> BinaryIO:
        if not self.object_store:  # object stores have no folders to make
            self.fs.create_dir(self.path(os.path.dirname(relative)), recursive=True)
        return self.fs.open_output_stream(self.path(relative))

    def staging_name(self, relative: str) -> str:
        """Where to write a file that `publish` then puts at `relative`: a hidden temporary name
        beside it, or on an object store `relative` itself."""
        if self.object_store:
            return relative
        folder, name = os.path.split(relative)
        return os.path.join(folder, f".{name}{TMP_SUFFIX}")

    def write_atomic(self, relative: str, data: bytes) -> None:
        staged = self.staging_name(relative)
        with self.open_write(staged) as f:
            f.write(data)
        self.publish(staged, relative)

    def publish(self, staged: str, relative: str) -> None:
        """Put a finished file written at `staging_name(relative)` in place (a rename after fsync
        on a filesystem; nothing on an object store, where the completed upload is the commit)."""
        if staged == relative:
            return
        if self.local:
            _fsync(self.path(staged))
        self.fs.move(self.path(staged), self.path(relative))

    def delete(self, relative: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(relative))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
