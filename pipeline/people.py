"""`identity_id`: which person a kept clip shows, from the face stage's identity embeddings.

People are found among the kept clips of one identity backend (embeddings of two backends do not
compare). Two clips are linked when one is among the other's NEIGHBOURS most similar clips and
their cosine similarity is at least the backend's same-person threshold
(schemas/face.py SAME_PERSON_COSINE). Links are taken most similar first; a link joins two groups
only when their clips are that alike on average, every clip of one with every clip of the other
(average linkage, from the groups' embedding sums): a clip that looks like two people joins one of
them and does not merge them, as single linkage would. Clips without an embedding have no identity_id.

Stable ids: a person's id is derived from its first clip (the smallest key when it was found), and
the assignments are kept in the journal (`.talkcurate/annotations/people.parquet`). When a run is
resumed or extended, clips that have an id keep it; a new clip joins a person through its links, and
two people that already have ids are never merged. So an id, once given, names the same clips and
more, and ids given by an earlier run stay valid for the sampler's balancing and for `split`.

Cost: one nearest-neighbour search (pipeline/similarity.py, faiss), then one pass over the links.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.storage import OutputDir
from pipeline.forest import root
from pipeline.output import annotation, write_annotation
from pipeline.similarity import similar_pairs
from schemas.face import same_person_cosine
from schemas.records import Status

NAME = "people"
NEIGHBOURS = 10
_COLUMNS = ("key", "status", "identity_backend", "identity_embedding")


def person_id(backend: str, first_key: str) -> str:
    return "person-" + hashlib.sha1(f"{backend}/{first_key}".encode()).hexdigest()[:12]


def assign(table: pa.Table, known: dict[str, str] | None = None) -> dict[str, str | None]:
    """key -> identity_id for every kept clip of a manifest table (None without an embedding);
    the ids in `known` (key -> id, from an earlier assignment) are kept."""
    known = known or {}
    kept = table.select(_COLUMNS)  # the columns first: filtering copies only these
    kept = kept.filter(pc.equal(kept["status"], Status.KEPT.value))
    ids: dict[str, str | None] = dict.fromkeys(kept["key"].to_pylist())
    embedded = kept.filter(pc.is_valid(kept["identity_embedding"]))
    for backend in sorted(set(embedded["identity_backend"].to_pylist())):
        members = embedded.filter(pc.equal(embedded["identity_backend"], backend)).sort_by("key")
        keys = members["key"].to_pylist()
        if all(key in known for key in keys):
            ids.update((key, known[key]) for key in keys)
            continue
        embeddings = _matrix(members["identity_embedding"], backend)
        people = _People(embeddings, [known.get(key) for key in keys], same_person_cosine(backend))
        for i, j in zip(*similar_pairs(embeddings, people.threshold, NEIGHBOURS)[:2]):
            people.link(int(i), int(j))
        for key, (name, first) in zip(keys, people.groups()):
            ids[key] = name or person_id(backend, keys[first])
    return ids


def _matrix(column: pa.ChunkedArray, backend: str) -> np.ndarray:
    """(clips, dims) float32, each row L2-normalised."""
    lengths = pc.unique(pc.list_value_length(column)).to_pylist()
    if len(lengths) != 1:
        raise ValueError(f"identity embeddings of backend {backend!r} have different lengths: {sorted(lengths)}")
    values = pc.list_flatten(column).to_numpy().astype(np.float32, copy=False)
    embeddings = values.reshape(len(column), lengths[0])
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


class _People:
    """Union-find over clips; each group has its size, its embeddings' sum and, once known, its id."""

    def __init__(self, embeddings: np.ndarray, known: list[str | None], threshold: float):
        self.threshold = threshold
        self.parent = list(range(len(embeddings)))  # a list: indexed one at a time, faster than numpy
        self.sum = embeddings.copy()  # row r: the sum of group r's embeddings while r is a root
        self.size = [1] * len(embeddings)
        self.name: dict[int, str] = {}
        first_of: dict[str, int] = {}
        for i, name in enumerate(known):
            if name is None:
                continue
            if name in first_of:  # clips named alike are one person already
                self._union(first_of[name], i)
            else:
                first_of[name] = i
                self.name[i] = name

    def link(self, i: int, j: int) -> None:
        a, b = root(self.parent, i), root(self.parent, j)
        if a == b or (a in self.name and b in self.name):  # named people stay apart
            return
        # average linkage: the mean similarity of every clip of one group to every clip of the other
        if self.sum[a] @ self.sum[b] < self.threshold * self.size[a] * self.size[b]:
            return
        self._union(a, b)

    def _union(self, a: int, b: int) -> None:
        a, b = root(self.parent, a), root(self.parent, b)
        if a == b:
            return
        keep, gone = min(a, b), max(a, b)  # the root is the group's first clip
        self.parent[gone] = keep
        self.sum[keep] += self.sum[gone]
        self.size[keep] += self.size[gone]
        if gone in self.name:
            self.name[keep] = self.name.pop(gone)

    def groups(self) -> list[tuple[str | None, int]]:
        """Each clip's group: its name (None for a group found now) and its first clip."""
        firsts = [root(self.parent, i) for i in range(len(self.parent))]
        return [(self.name.get(first), first) for first in firsts]


def identify(out: OutputDir, table: pa.Table) -> dict[str, str | None]:
    """Assign people to the kept clips of `table` (the run in `out`), keeping the ids the table
    already has (a subset's manifest) and the journal's, and record the assignment in the journal."""
    earlier = _ids_in(annotation(out, NAME))
    known = {**_ids_in(table), **earlier}
    ids = assign(table, {key: name for key, name in known.items() if name is not None})
    if ids == earlier:
        return ids  # a run that added nothing leaves the journal as it was
    schema = pa.schema(
        [pa.field("key", pa.string(), nullable=False), pa.field("identity_id", pa.string())],
        metadata={b"settings": json.dumps({"neighbours": NEIGHBOURS}).encode()},
    )
    write_annotation(out, NAME, pa.Table.from_pydict({"key": list(ids), "identity_id": list(ids.values())}, schema))
    return ids


def _ids_in(table: pa.Table | None) -> dict[str, str | None]:
    if table is None or "identity_id" not in table.column_names:
        return {}
    return dict(zip(table["key"].to_pylist(), table["identity_id"].to_pylist()))
