"""`talkcurate split DIR --val 0.05`: train and validation clips such that no person, no source and
no near-duplicate group is on both sides.

Kept clips are joined into clusters when they share a source, when `talkcurate dedup` marked one a
near-duplicate of the other, and, where the face stage recorded identity embeddings (manifest
column `identity_embedding`), when their embeddings (of one backend) have a cosine similarity of at
least `identity_threshold`, by default the backend's own (`schemas.face.SAME_PERSON_COSINE`; single
linkage: every such pair of clips ends up in one cluster, so the split is identity-disjoint by
construction). Without embeddings the clusters are the sources (with their
duplicates), and the command says so.

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

import numpy as np
import pyarrow as pa

from pipeline.inspect import load
from pipeline.output import MANIFEST, annotated, write_annotation, write_manifest
from schemas.face import same_person_cosine
from schemas.records import Status
from stages.storage import OutputDir

TRAIN, VAL = "train", "val"
DEFAULT_VAL = 0.05
_BLOCK_ELEMENTS = 1 << 24  # cosine similarities per numpy block (64 MB)
_COLUMNS = ("key", "source_id", "status", "duration_s", "identity_backend", "identity_embedding", "duplicate_of")


@dataclass
class SplitResult:
    by_identity: bool  # False: no clip had an identity embedding, clusters are sources
    clusters: int
    clips: dict[str, int] = field(default_factory=dict)  # split -> kept clips
    seconds: dict[str, float] = field(default_factory=dict)
    without_embedding: int = 0  # kept clips joined by their source only, in identity mode
    val: float = 0.0
    identity_thresholds: dict[str, float] = field(default_factory=dict)  # backend -> the threshold used


def assign(table: pa.Table, val: float, identity_threshold: float | None = None) -> tuple[dict[str, str], SplitResult]:
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
    embedded = [row for row in rows if row["identity_embedding"] is not None]
    thresholds = {}
    for backend in sorted({row["identity_backend"] for row in embedded}):  # embeddings of one backend compare
        thresholds[backend] = same_person_cosine(backend) if identity_threshold is None else identity_threshold
        for a, b in _same_person([row for row in embedded if row["identity_backend"] == backend], thresholds[backend]):
            clusters.join(a, b)
    side = {source: VAL if _unit_hash(clusters.stable_id(source)) < val else TRAIN for source in sources}
    split = {row["key"]: side[row["source_id"]] for row in rows}
    result = SplitResult(
        by_identity=bool(embedded),
        clusters=len({clusters.stable_id(s) for s in sources}),
        without_embedding=len(rows) - len(embedded) if embedded else 0,
        val=val,
        identity_thresholds=thresholds,
    )
    for name in (TRAIN, VAL):
        chosen = [row for row in rows if split[row["key"]] == name]
        result.clips[name] = len(chosen)
        result.seconds[name] = sum(row["duration_s"] for row in chosen)
    return split, result


def split(out: OutputDir, val: float, identity_threshold: float | None = None) -> SplitResult:
    """Split the kept clips of the run in `out`, record the split and rewrite its manifest."""
    table, _ = load(out)
    try:
        sides, result = assign(table, val, identity_threshold)
    except ValueError as exc:
        raise ValueError(f"{out.uri}/{MANIFEST}: {exc}") from None
    schema = pa.schema(
        [pa.field("key", pa.string(), nullable=False), pa.field("split", pa.string())],
        metadata={
            b"settings": json.dumps(
                {"val": val, "identity_thresholds": result.identity_thresholds, "by_identity": result.by_identity}
            ).encode()
        },
    )
    write_annotation(
        out, "split", pa.Table.from_pydict({"key": list(sides), "split": list(sides.values())}, schema=schema)
    )
    write_manifest(out, annotated(out, table))
    return result


def _unit_hash(text: str) -> float:
    """A number in [0, 1) from the SHA-1 of `text`: the same on every machine and run."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def _same_person(rows: list[dict], threshold: float) -> set[tuple[str, str]]:
    """Pairs of different sources that have clips with embeddings at least `threshold` alike."""
    if len(rows) < 2:
        return set()
    embeddings = np.asarray([row["identity_embedding"] for row in rows], np.float32)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sources = np.array([row["source_id"] for row in rows])
    pairs = set()
    step = max(1, _BLOCK_ELEMENTS // len(rows))
    for start in range(0, len(rows), step):
        similar_i, similar_j = np.nonzero(embeddings[start : start + step] @ embeddings.T >= threshold)
        a, b = sources[similar_i + start], sources[similar_j]
        pairs.update(zip(a[a < b].tolist(), b[a < b].tolist()))
    return pairs


class _Clusters:
    """Union-find over source ids; a cluster's stable id is its smallest source id."""

    def __init__(self, sources: list[str]):
        self.parent = {source: source for source in sources}

    def stable_id(self, source: str) -> str:
        while self.parent[source] != source:
            self.parent[source] = self.parent[self.parent[source]]
            source = self.parent[source]
        return source

    def join(self, a: str, b: str) -> None:
        a, b = self.stable_id(a), self.stable_id(b)
        self.parent[max(a, b)] = min(a, b)  # the root stays the smallest id


def render(result: SplitResult) -> str:
    """What `talkcurate split` prints."""
    if result.by_identity:
        similar = ", ".join(f"{backend} >= {value:g}" for backend, value in result.identity_thresholds.items())
        rule = (
            f"by identity: clips whose identity embeddings have cosine similarity {similar} are one person, "
            "kept on one side with their sources and near-duplicates"
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
