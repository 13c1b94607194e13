"""What a run writes in its output folder, and how a killed run resumes.

The journal in `.talkcurate/` is the truth; `manifest.parquet`, `index.json` and the report are
rebuilt from it at the end of every run:

- `.talkcurate/shards/NAME.json`: one per published shard (index entry plus keys), written
  after the tar is in place (renamed on a filesystem, its upload complete on an object store).
  A tar without its record is a leftover of a killed run and is deleted; temporary `.partial`
  files are deleted too.
- `.talkcurate/sources/SOURCE_ID.parquet`: all manifest rows of a source, written once every
  chunk of it has reported and every kept sample of it is in a published shard. A source with
  this file is done and is skipped by later runs.
- `.talkcurate/annotations/NAME.parquet`: what `talkcurate dedup` and `talkcurate split` decided
  (key -> `duplicate_of`, key -> `split`), joined into the manifest whenever it is rebuilt, so a
  resumed or extended run keeps them; clips added since get null until the command runs again.

A source that was not done is processed again; its samples already in published shards are
not written twice (keys are stable), so a resumed run ends with exactly the samples of an
uninterrupted one.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.storage import TMP_SUFFIX, OutputDir
from pipeline.dataset_card import CARD, dataset_card
from pipeline.shards import SHARD_FOLDER, ShardRecord, ShardsConfig, ShardWriter
from schemas.manifest import INDEX, MANIFEST, MANIFEST_SCHEMA, SCHEMA_VERSION, manifest_row, rows_to_table
from schemas.records import CandidateClip, ChunkDone, Status

log = logging.getLogger(__name__)

JOURNAL = ".talkcurate"
SHARD_RECORDS = f"{JOURNAL}/shards"
SOURCE_RECORDS = f"{JOURNAL}/sources"
CONFIG_RECORD = f"{JOURNAL}/config.json"
ANNOTATIONS = f"{JOURNAL}/annotations"
# annotation file name -> the manifest column it fills
ANNOTATION_COLUMNS = {"dedup": "duplicate_of", "split": "split", "people": "identity_id"}


class ConfigMismatch(ValueError):
    pass


@dataclass
class _SourceProgress:
    chunk_count: int | None = None
    chunks_done: set[int] = field(default_factory=set)
    clips_expected: int = 0
    clips_seen: int = 0
    rows: list[dict] = field(default_factory=list)
    unpublished: set[str] = field(default_factory=set)

    def complete(self) -> bool:
        return (
            self.chunk_count is not None
            and len(self.chunks_done) == self.chunk_count
            and self.clips_seen == self.clips_expected
            and not self.unpublished
        )


class RunOutput:
    def __init__(self, out: OutputDir, config_fingerprint: dict):
        self.out = out
        self._check_config(config_fingerprint)
        self.shards: dict[str, ShardRecord] = {}
        self.published_keys: dict[str, str] = {}
        self.done_sources: set[str] = set()
        self._progress: dict[str, _SourceProgress] = {}
        self._writer = None
        self._recover()

    # -- resume -------------------------------------------------------------------------------

    def _check_config(self, fingerprint: dict) -> None:
        if self.out.exists(CONFIG_RECORD):
            previous = json.loads(self.out.read(CONFIG_RECORD))
            if previous != fingerprint:
                changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
                raise ConfigMismatch(
                    f"{self.out.uri} was written with a different configuration (changed: {', '.join(changed)}); "
                    "resume with the same configuration or choose a new --out"
                )
        else:
            self.out.write_atomic(CONFIG_RECORD, json.dumps(fingerprint, sort_keys=True, indent=1).encode())

    def _recover(self) -> None:
        for name in self.out.list(SHARD_RECORDS, ".json"):
            data = json.loads(self.out.read(f"{SHARD_RECORDS}/{name}"))
            record = ShardRecord(data["url"], data["md5sum"], data["nsamples"], data["filesize"], tuple(data["keys"]))
            self.shards[record.url] = record
            self.published_keys.update((key, record.url) for key in record.keys)
        for name in self.out.list(SHARD_FOLDER):
            relative = f"{SHARD_FOLDER}/{name}"
            if name.endswith(TMP_SUFFIX) or relative not in self.shards:
                log.info("removing %s left by an interrupted run", relative)
                self.out.delete(relative)
        for folder in (SHARD_RECORDS, SOURCE_RECORDS, ANNOTATIONS, JOURNAL, ""):  # "": manifest, index, report
            for name in self.out.list(folder, TMP_SUFFIX):
                self.out.delete(posixpath.join(folder, name))
        self.done_sources = {name.removesuffix(".parquet") for name in self.out.list(SOURCE_RECORDS, ".parquet")}

    def next_shard_number(self) -> int:
        numbers = [int(url.rsplit("-", 1)[1].split(".")[0]) for url in self.shards]
        return max(numbers, default=-1) + 1

    # -- the sink ----------------------------------------------------------------------------

    def open_writer(self, config: ShardsConfig) -> None:
        self._writer = ShardWriter(self.out, config, self.next_shard_number(), self._on_publish)

    def add(self, item: CandidateClip | ChunkDone) -> None:
        progress = self._progress.setdefault(item.source.source_id, _SourceProgress())
        if isinstance(item, ChunkDone):
            progress.chunk_count = item.chunk_count
            progress.chunks_done.add(item.chunk_index)
            progress.clips_expected += item.num_clips
        else:
            progress.clips_seen += 1
            shard = None
            if item.status is not Status.REJECTED:
                shard = self.published_keys.get(item.key)
                if shard is None:  # not already published by an interrupted run
                    shard = self._writer.add(item)
                    progress.unpublished.add(item.key)
            progress.rows.append(manifest_row(item, shard))
            self._writer.flush_if_full()
        self._finish_if_complete(item.source.source_id)

    def close(self) -> None:
        """Publish the last, partly filled shard and every source it completes."""
        self._writer.flush()
        incomplete = [sid for sid, p in self._progress.items() if not p.complete()]
        if incomplete:
            log.warning("%d sources did not report all their clips; they will be processed again", len(incomplete))

    def _on_publish(self, record: ShardRecord) -> None:
        name = record.url.rsplit("/", 1)[1]
        data = {**record.index_entry(), "keys": list(record.keys)}
        self.out.write_atomic(f"{SHARD_RECORDS}/{name}.json", json.dumps(data).encode())
        self.shards[record.url] = record
        published = set(record.keys)
        self.published_keys.update((key, record.url) for key in record.keys)
        for source_id, progress in list(self._progress.items()):
            progress.unpublished -= published
            self._finish_if_complete(source_id)

    def _finish_if_complete(self, source_id: str) -> None:
        progress = self._progress.get(source_id)
        if progress is None or not progress.complete():
            return
        sink = io.BytesIO()
        pq.write_table(rows_to_table(progress.rows), sink)
        self.out.write_atomic(f"{SOURCE_RECORDS}/{source_id}.parquet", sink.getvalue())
        self.done_sources.add(source_id)
        del self._progress[source_id]

    # -- what a person and a trainer read ------------------------------------------------------

    def records(self) -> pa.Table:
        """The finished sources' rows, without the journal's annotations."""
        tables = [
            pq.read_table(io.BytesIO(self.out.read(f"{SOURCE_RECORDS}/{sid}.parquet")))
            for sid in sorted(self.done_sources)
        ]
        if not tables:
            return MANIFEST_SCHEMA.empty_table()
        table = pa.concat_tables([t.cast(MANIFEST_SCHEMA) for t in tables])
        return table.sort_by([("source", "ascending"), ("start_s", "ascending"), ("key", "ascending")])

    def index(self) -> dict:
        return index_document([self.shards[url] for url in sorted(self.shards)])


def index_document(shards: list[ShardRecord], **extra) -> dict:
    """The wids-shard-index-v1 index of these shards, in this order (`extra`: more top-level keys)."""
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": "talkcurate",
        "talkcurate_schema_version": SCHEMA_VERSION,
        **extra,
        "shardlist": [shard.index_entry() for shard in shards],
    }


def write_manifest_and_index(out: OutputDir, manifest: pa.Table, index: dict) -> None:
    """Publish `manifest.parquet`, `index.json` and the dataset card, each atomically."""
    write_manifest(out, manifest)
    out.write_atomic(INDEX, json.dumps(index, indent=1).encode())
    out.write_atomic(CARD, dataset_card(index).encode())


def write_manifest(out: OutputDir, manifest: pa.Table) -> None:
    """Publish `manifest.parquet` atomically."""
    sink = io.BytesIO()
    pq.write_table(manifest, sink)
    out.write_atomic(MANIFEST, sink.getvalue())


def write_annotation(out: OutputDir, name: str, notes: pa.Table) -> None:
    """Record a command's decisions (`key` and the column of ANNOTATION_COLUMNS[name], with the
    settings in the schema's metadata) in the journal, replacing its earlier ones."""
    sink = io.BytesIO()
    pq.write_table(notes, sink)
    out.write_atomic(f"{ANNOTATIONS}/{name}.parquet", sink.getvalue())


def annotation(out: OutputDir, name: str) -> pa.Table | None:
    """The journal's annotation `name`, None when it was never made."""
    path = f"{ANNOTATIONS}/{name}.parquet"
    return pq.read_table(io.BytesIO(out.read(path))) if out.exists(path) else None


def annotated(out: OutputDir, table: pa.Table) -> pa.Table:
    """`table` with the journal's annotations joined in by key; warns when kept clips were added
    after an annotation was made (the command should run again)."""
    for name, column in ANNOTATION_COLUMNS.items():
        notes = annotation(out, name)
        if notes is None:
            continue
        position = pc.index_in(table["key"], value_set=notes["key"].combine_chunks())
        values = notes[column].take(position)  # null where the annotation does not name the clip
        table = table.set_column(table.schema.get_field_index(column), MANIFEST_SCHEMA.field(column), values)
        missing = pc.sum(pc.and_(pc.equal(table["status"], Status.KEPT.value), pc.is_null(position))).as_py()
        if missing:
            log.warning(
                "%d kept clips came after the last `talkcurate %s` and have no %s; run it again", missing, name, column
            )
    return table
