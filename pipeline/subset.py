"""`talkcurate subset`: the manifest rows a `--where` predicate selects, either as a new output
folder (the selected samples' members copied out of the source's tars into new size-targeted
shards, with a manifest and an index; no stage runs again) or as a sample list that the trainer
reads in place (schemas/sample_list.py).

The new manifest holds every selected row with the source's columns: kept rows name their new
shard; selected rejected rows come along as they are (they have no shard, so they cost nothing
and keep the subset's funnel honest); add `status = 'kept'` to the predicate to leave them out.
A subset is an output folder like a run's, so `inspect`, `verify`, the trainer and `subset` itself
read it.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from core.storage import OutputDir
from pipeline.inspect import load
from pipeline.output import index_document, write_manifest_and_index
from pipeline.query import select
from pipeline.shards import SHARD_FOLDER, ShardRecord, ShardsConfig, ShardWriter
from schemas.manifest import INDEX, MANIFEST
from schemas.sample_list import SUFFIX as SAMPLE_LIST_SUFFIX
from schemas.sample_list import SampleList, is_sample_list


@dataclass(frozen=True)
class SubsetResult:
    rows: int  # manifest rows (kept and rejected)
    samples: int
    shards: int
    bytes: int


def _selection(source: OutputDir, where: str | None) -> tuple[pa.Table, pa.Table, dict]:
    """The selected rows, the kept ones among them (at least one) and the source's index."""
    table, index = load(source)
    selected = select(table, where)
    kept = selected.filter(pc.equal(selected["status"], "kept"))
    if kept.num_rows == 0:
        raise ValueError(
            f"{source.uri}: {'--where ' + repr(where) if where else 'the manifest'} selects no kept clips; nothing to "
            "write"
        )
    listed = {entry["url"] for entry in index["shardlist"]}
    unlisted = sorted(set(kept["shard"].to_pylist()) - listed)
    if unlisted:
        raise ValueError(
            f"{source.uri}: kept clips in shards its index does not list ({', '.join(unlisted[:3])}); run `talkcurate "
            "verify`"
        )
    return selected, kept, index


def _samples(source: OutputDir, shard: str, keys: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members by suffix in tar order) of the wanted samples of one shard; the others'
    data is seeked over, not read."""
    key, members = None, {}
    with source.open_read(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            name, _, suffix = info.name.partition(".")
            if name != key:
                if members:
                    yield key, members
                key, members = name, {}
            if name in keys:
                members[suffix] = tar.extractfile(info).read()
    if members:
        yield key, members


def copy_subset(source: OutputDir, where: str | None, out: OutputDir, shards: ShardsConfig) -> SubsetResult:
    """Write the selected rows and samples into `out`, which must not hold an output yet."""
    if out.root == source.root and out.fs.type_name == source.fs.type_name:
        raise ValueError(f"--out {out.uri} is the source folder; choose a new one")
    existing = [name for name in (MANIFEST, INDEX) if out.exists(name)] + [
        f"{SHARD_FOLDER}/{n}" for n in out.list(SHARD_FOLDER)
    ]
    if existing:
        raise FileExistsError(f"{out.uri} already holds {existing[0]}; a subset goes into a new folder")
    selected, kept, index = _selection(source, where)
    wanted: dict[str, set[str]] = {}
    for row in kept.select(["key", "shard"]).to_pylist():
        wanted.setdefault(row["shard"], set()).add(row["key"])
    records: list[ShardRecord] = []
    writer = ShardWriter(out, shards, 0, records.append)
    new_shard: dict[str, str] = {}
    for entry in index["shardlist"]:  # source order: shard by shard, samples in tar order
        for key, members in _samples(source, entry["url"], wanted.get(entry["url"], set())):
            new_shard[key] = writer.add_members(key, members)
            writer.flush_if_full()
    writer.flush()
    missing = sorted(set(kept["key"].to_pylist()) - set(new_shard))
    if missing:
        raise ValueError(
            f"{source.uri}: {len(missing)} selected samples are not in their shards (e.g. {missing[0]}); run "
            "`talkcurate verify` on it"
        )
    shard_column = pa.array(
        [new_shard.get(key) for key in selected["key"].to_pylist()], selected.schema.field("shard").type
    )
    manifest = selected.set_column(
        selected.schema.get_field_index("shard"), selected.schema.field("shard"), shard_column
    )
    write_manifest_and_index(
        out, manifest, index_document(records, talkcurate_subset={"source": source.uri, "where": where})
    )
    return SubsetResult(manifest.num_rows, len(new_shard), len(records), sum(r.filesize for r in records))


def write_sample_list(source: OutputDir, where: str | None, path: str) -> int:
    """Write the sample list of the selected kept clips to `path`; returns how many it names."""
    if not is_sample_list(path):
        raise ValueError(
            f"--list {path}: a sample list's name ends in {SAMPLE_LIST_SUFFIX} (that is how the trainer tells it from "
            "a folder)"
        )
    _, kept, index = _selection(source, where)
    order = {entry["url"]: i for i, entry in enumerate(index["shardlist"])}
    samples = sorted(zip(kept["key"].to_pylist(), kept["shard"].to_pylist()), key=lambda ks: (order[ks[1]], ks[0]))
    listing = SampleList(source=source.root if source.local else source.uri, where=where, samples=tuple(samples))
    folder, _, name = path.rpartition("/")
    OutputDir(folder or ".").write_atomic(name, listing.encode())
    return len(samples)
