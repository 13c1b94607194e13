"""`talkcurate verify`: re-read every shard and check it against the index and the manifest (or,
for a sample list, the shards it names and its samples against the source's manifest)."""

from __future__ import annotations

import hashlib
import tarfile

from core.media_io import open_binary
from core.storage import OutputDir
from pipeline.inspect import load
from pipeline.shards import SHARD_FOLDER
from schemas.manifest import SAMPLE_MEMBERS
from schemas.sample_list import SampleList


class _Hashing:
    """A read-only stream that hashes what tarfile reads through it."""

    def __init__(self, raw):
        self.raw = raw
        self.md5 = hashlib.md5()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.md5.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def verify_shard(out: OutputDir, entry: dict, expected_keys: set[str]) -> list[str]:
    url = entry["url"]
    if not out.exists(url):
        return [f"{url}: missing"]
    problems = []
    seen: list[str] = []
    members: dict[str, set[str]] = {}
    with out.open_read(url) as raw:
        stream = _Hashing(raw)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for info in tar:
                    key, dot, suffix = info.name.partition(".")
                    if not dot or "/" in key:
                        problems.append(f"{url}: member {info.name!r} has no KEY.suffix name")
                        continue
                    if not seen or seen[-1] != key:
                        if key in members:
                            problems.append(f"{url}: members of {key} are not adjacent")
                        seen.append(key)
                        members.setdefault(key, set())
                    members[key].add(suffix)
                    tar.extractfile(info).read()
            stream.drain()
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"{url}: unreadable tar: {exc}")
            stream.drain()
    if stream.size != entry["filesize"]:
        problems.append(f"{url}: {stream.size} bytes, index says {entry['filesize']}")
    if stream.md5.hexdigest() != entry["md5sum"]:
        problems.append(f"{url}: md5 {stream.md5.hexdigest()} does not match the index ({entry['md5sum']})")
    if len(members) != entry["nsamples"]:
        problems.append(f"{url}: {len(members)} samples, index says {entry['nsamples']}")
    for key, suffixes in members.items():
        missing = set(SAMPLE_MEMBERS) - suffixes
        if missing:
            problems.append(f"{url}: sample {key} lacks {', '.join(sorted(missing))}")
    if set(members) != expected_keys:
        extra, absent = set(members) - expected_keys, expected_keys - set(members)
        if extra:
            problems.append(f"{url}: {len(extra)} samples not kept in the manifest, e.g. {sorted(extra)[0]}")
        if absent:
            problems.append(f"{url}: {len(absent)} kept manifest rows missing, e.g. {sorted(absent)[0]}")
    return problems


def _kept_by_shard(table) -> dict[str, set[str]]:
    kept: dict[str, set[str]] = {}
    for row in table.select(["key", "status", "shard"]).to_pylist():
        if row["status"] == "kept":
            kept.setdefault(row["shard"], set()).add(row["key"])
    return kept


def verify(out: OutputDir) -> tuple[int, list[str]]:
    """Number of shards checked and every problem found (empty when all is well)."""
    table, index = load(out)
    kept = _kept_by_shard(table)
    problems = []
    listed = {entry["url"] for entry in index["shardlist"]}
    for shard in sorted(set(kept) - listed):
        problems.append(f"{shard}: named by kept manifest rows but not in the index")
    for name in out.list(SHARD_FOLDER):
        if f"{SHARD_FOLDER}/{name}" not in listed:
            problems.append(f"{SHARD_FOLDER}/{name}: in the shard folder but not in the index")
    for entry in index["shardlist"]:
        problems.extend(verify_shard(out, entry, kept.get(entry["url"], set())))
    return len(index["shardlist"]), problems


def verify_sample_list(path: str) -> tuple[int, list[str]]:
    """A sample list (`talkcurate subset --list`): every listed sample is a kept clip of its source
    in the listed shard, and every listed shard passes `verify_shard`."""
    with open_binary(path) as f:
        listing = SampleList.decode(f.read(), path)
    source = OutputDir(listing.source_folder(path))
    table, index = load(source)
    kept = _kept_by_shard(table)
    entries = {entry["url"]: entry for entry in index["shardlist"]}
    problems = [
        f"{path}: {key} is not a kept clip of {source.uri} in {shard}"
        for key, shard in listing.samples
        if key not in kept.get(shard, set())
    ]
    shards = sorted({shard for _, shard in listing.samples})
    for shard in shards:
        if shard in entries:
            problems.extend(verify_shard(source, entries[shard], kept.get(shard, set())))
        else:
            problems.append(f"{shard}: listed in {path} but not in the index of {source.uri}")
    return len(shards), problems
