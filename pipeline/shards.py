"""Shard writing, the run's output machinery (not a stage: the driver owns the run's one writer):
size-targeted WebDataset tars, each written at the output's staging name and
published only when complete (see core/storage.py), with its md5 computed while it is written.

Tars are deterministic (fixed mtime, owner and mode), so the same samples give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import soundfile

from core.config import MB, option
from core.storage import OutputDir
from schemas.face import encode_face_npz
from schemas.manifest import (
    MEMBER_AUDIO,
    MEMBER_CAPTION,
    MEMBER_FACE,
    MEMBER_META,
    MEMBER_VIDEO,
    MEMBER_WHISPER_FEATURES,
    encode_metadata,
    sample_metadata,
)
from schemas.records import SAMPLE_RATE, CandidateClip
from schemas.text import encode_features

SHARD_FOLDER = "shards"


@dataclass(frozen=True)
class ShardRecord:
    """One published shard, in the wids-shard-index-v1 entry shape plus its keys."""

    url: str  # relative to the output folder
    md5sum: str
    nsamples: int
    filesize: int
    keys: tuple[str, ...]

    def index_entry(self) -> dict:
        return {"url": self.url, "md5sum": self.md5sum, "nsamples": self.nsamples, "filesize": self.filesize}


def sample_members(clip: CandidateClip) -> dict[str, bytes]:
    """The members of one sample, by suffix."""
    wav = io.BytesIO()
    soundfile.write(wav, clip.audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    members = {
        MEMBER_VIDEO: clip.video.mp4,
        MEMBER_AUDIO: wav.getvalue(),
        MEMBER_META: encode_metadata(sample_metadata(clip)),
        MEMBER_CAPTION: b"" if clip.caption is None else clip.caption.text.encode("utf-8"),
        MEMBER_FACE: encode_face_npz(clip.face.track),
    }
    if clip.transcript is not None and clip.transcript.features is not None:
        members[MEMBER_WHISPER_FEATURES] = encode_features(clip.transcript.features)
    return members


class _HashingWriter(io.RawIOBase):
    """Passes bytes to the output stream, hashing and counting them on the way."""

    def __init__(self, stream):
        self.stream = stream
        self.md5 = hashlib.md5()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.md5.update(data)
        self.size += len(data)
        self.stream.write(data)
        return len(data)


class _OpenShard:
    def __init__(self, out: OutputDir, name: str):
        self.name = name
        self.final = f"{SHARD_FOLDER}/{name}"
        self.staged = out.staging_name(self.final)
        self.stream = out.open_write(self.staged)
        self.hashing = _HashingWriter(self.stream)
        self.tar = tarfile.open(fileobj=self.hashing, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in close())
        self.keys: list[str] = []

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for suffix, data in members.items():  # adjacent, in a fixed order
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = "talkcurate"
            self.tar.addfile(info, io.BytesIO(data))
        self.keys.append(key)

    def close(self) -> ShardRecord:
        self.tar.close()
        self.stream.close()
        return ShardRecord(
            self.final, self.hashing.md5.hexdigest(), len(self.keys), self.hashing.size, tuple(self.keys)
        )


@dataclass
class ShardsConfig:
    """Size-targeted WebDataset shards, written by the run's driver."""

    name: ClassVar[str] = "shards"

    target_shard_mb: float = option(1024.0, "A shard is closed once it holds at least this many MB.")
    max_samples_per_shard: int = option(0, "Also close a shard at this many samples (0: no limit).")

    def validate(self) -> None:
        if self.target_shard_mb <= 0:
            raise ValueError("shards.target_shard_mb must be positive")


class ShardWriter:
    def __init__(
        self, out: OutputDir, config: ShardsConfig, first_number: int, on_publish: Callable[[ShardRecord], None]
    ):
        self.out = out
        self.config = config
        self.next_number = first_number
        self.on_publish = on_publish
        self.current: _OpenShard | None = None

    @property
    def current_url(self) -> str | None:
        return self.current.final if self.current else None

    def add(self, clip: CandidateClip) -> str:
        """Write one kept clip; returns the shard (relative URL) it will be published in by a later flush."""
        return self.add_members(clip.key, sample_members(clip))

    def add_members(self, key: str, members: dict[str, bytes]) -> str:
        """Write one sample's members (by suffix, in order), e.g. copied from another shard; as `add`."""
        if self.current is None:
            self.current = _OpenShard(self.out, f"shard-{self.next_number:06d}.tar")
            self.next_number += 1
        self.current.add(key, members)
        return self.current.final

    def flush_if_full(self) -> None:
        shard = self.current
        if shard is not None and (
            shard.hashing.size >= self.config.target_shard_mb * MB
            or (self.config.max_samples_per_shard and len(shard.keys) >= self.config.max_samples_per_shard)
        ):
            self.flush()

    def flush(self) -> None:
        """Publish the open shard, if any."""
        if self.current is None:
            return
        shard, self.current = self.current, None
        record = shard.close()
        self.out.publish(shard.staged, shard.final)
        self.on_publish(record)
