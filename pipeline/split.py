"""`talkcurate split DIR --val 0.05`: train and validation clips such that no person, no source and
no near-duplicate group is on both sides.

Kept clips are joined into clusters when they share a source, when `talkcurate dedup` marked one a
near-duplicate of the other, and when they show the same person: the same `identity_id`
(pipeline/people.py; the run assigns it, and split assigns it first to kept clips that have an
identity embedding but no id, as in manifests written before people were found). Every clip of a
person is thus on one side, with its sources and their near-duplicates. Without embeddings the
clusters are the sources (with their duplicates), and the command says so.

A cluster's stable id is its smallest source id; the cluster goes to `val` when the SHA-1 of that
id, read as a number in [0, 1), is below `val`. So the same manifest always gives the same split,
whatever the order of its rows, and after more sources are added a clip changes sides only when
its cluster merged with another. With few clusters the share in `val` can be far from `val`: the
command prints the share it got.

The split is kept in the journal (`.talkcurate/annotations/split.parquet`) and joined into the
manifest, which is rewritten; clips a later run adds have no split until `split` runs again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow as pa

from core.storage import OutputDir
from pipeline.forest import root
from pipeline.inspect import load
from pipeline.output import annotated, write_annotation, write_manifest
from pipeline.people import assign as assign_people
from pipeline.people import identify
from schemas.manifest import MANIFEST
from schemas.records import Status

TRAIN, VAL = "train", "val"
DEFAULT_VAL = 0.05
_COLUMNS = ("key", "source_id", "status", "duration_s", "identity_id", "duplicate_of")


@dataclass
class SplitResult:
    by_identity: bool  # False: no clip had an identity embedding, clusters are sources
    clusters: int
    clips: dict[str, int] = field(default_factory=dict)  # split -> kept clips
    seconds: dict[str, float] = field(default_factory=dict)
    people: int = 0  # distinct identity_ids among the kept clips
    without_embedding: int = 0  # kept clips joined by their source only, in identity mode
    val: float = 0.0


def assign(table: pa.Table, val: float) -> tuple[dict[str, str], SplitResult]:
    """key -> 'train' or 'val' for every kept row of a manifest table, and the totals."""
    if not 0 < val < 1:
        raise ValueError(
            f"--val is the expected share of clusters for validation, between 0 and 1 (exclusive), not {val}"
        )
    missing = [name for name in _COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(f"the manifest has no {', '.join(missing)} column; curate the inputs again into a new --out")
    rows = [row for row in table.select(_COLUMNS).to_pylist() if row["status"] == Status.KEPT.value]
    sources = sorted({row["source_id"] for row in rows})
    clusters = _Clusters(sources)
    source_of = {row["key"]: row["source_id"] for row in rows}
    for row in rows:
        if row["duplicate_of"] in source_of:
            clusters.join(row["source_id"], source_of[row["duplicate_of"]])
    people = assign_people(table, {row["key"]: row["identity_id"] for row in rows if row["identity_id"] is not None})
    first_source_of: dict[str, str] = {}
    for row in rows:
        person = people[row["key"]]
        if person is not None:
            clusters.join(row["source_id"], first_source_of.setdefault(person, row["source_id"]))
    side = {source: VAL if _unit_hash(clusters.stable_id(source)) < val else TRAIN for source in sources}
    split = {row["key"]: side[row["source_id"]] for row in rows}
    identified = sum(person is not None for person in people.values())
    result = SplitResult(
        by_identity=bool(identified),
        clusters=len({clusters.stable_id(s) for s in sources}),
        people=len({person for person in people.values() if person is not None}),
        without_embedding=len(rows) - identified if identified else 0,
        val=val,
    )
    for name in (TRAIN, VAL):
        chosen = [row for row in rows if split[row["key"]] == name]
        result.clips[name] = len(chosen)
        result.seconds[name] = sum(row["duration_s"] for row in chosen)
    return split, result


def split(out: OutputDir, val: float) -> SplitResult:
    """Split the kept clips of the run in `out`, record the split and rewrite its manifest."""
    table, _ = load(out)
    try:
        identify(out, table)  # a manifest from before people were found gets its identity_ids first
        table = annotated(out, table)
        sides, result = assign(table, val)
    except ValueError as exc:
        raise ValueError(f"{out.uri}/{MANIFEST}: {exc}") from None
    schema = pa.schema(
        [pa.field("key", pa.string(), nullable=False), pa.field("split", pa.string())],
        metadata={b"settings": json.dumps({"val": val, "by_identity": result.by_identity}).encode()},
    )
    write_annotation(
        out, "split", pa.Table.from_pydict({"key": list(sides), "split": list(sides.values())}, schema=schema)
    )
    write_manifest(out, annotated(out, table))
    return result


def _unit_hash(text: str) -> float:
    """A number in [0, 1) from the SHA-1 of `text`: the same on every machine and run."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


class _Clusters:
    """Union-find over source ids; a cluster's stable id is its smallest source id."""

    def __init__(self, sources: list[str]):
        self.parent = {source: source for source in sources}

    def stable_id(self, source: str) -> str:
        return root(self.parent, source)

    def join(self, a: str, b: str) -> None:
        a, b = self.stable_id(a), self.stable_id(b)
        self.parent[max(a, b)] = min(a, b)  # the root stays the smallest id


def render(result: SplitResult) -> str:
    """What `talkcurate split` prints."""
    if result.by_identity:
        rule = (
            f"by identity: the clips of each of {result.people} people (identity_id) are kept on one side with "
            "their sources and near-duplicates"
        )
        if result.without_embedding:
            rule += f"; {result.without_embedding} kept clips have no embedding and follow their source"
    else:
        rule = (
            "by source: the manifest has no identity embeddings (face.identity_backend was `none`), so each "
            "source and its near-duplicates stays on one side"
        )
    total = sum(result.clips.values())
    lines = [f"split {rule}", f"{result.clusters} clusters, {total} kept clips"]
    for name in (TRAIN, VAL):
        share = result.clips[name] / total if total else 0.0
        lines.append(f"  {name:<6} {result.clips[name]:>7} clips  {result.seconds[name]:10.1f} s  ({share:.1%})")
    if total and min(result.clips.values()) == 0:
        lines.append(
            f"warning: one side is empty: with {result.clusters} clusters and --val {result.val}, "
            f"about {result.clusters * result.val:.1f} clusters are expected in val"
        )
    return "\n".join(lines)
