"""Nearest neighbours with faiss: the similarity-search library behind people (identity
embeddings by inner product, pipeline/people.py).

Up to EXACT_LIMIT vectors are compared exactly (every pair). Beyond that an inverted-file index
(IVF: k-means cells, each query scans its `nprobe` nearest cells) keeps the cost near linear:
about n * nprobe / cells comparisons per query instead of n; a neighbour that falls in a cell the
query does not scan is missed (bench/people_scale.py measures how often). Training uses a
fixed seed and a seeded sample, so the same input gives the same neighbours.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

EXACT_LIMIT = 20_000
_NPROBE = 16
_TRAIN_PER_CELL = 40  # training vectors per k-means cell (faiss warns below 39)
_KMEANS_ITERATIONS = 10  # of faiss's default 25: the cells only route queries, training was most of the time
_SEED = 1234


def cosine_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` most similar other rows of `vectors` ((n, d), L2-normalised): similarities
    (n, k) float32 in descending order and their row indices (n, k) int64, -1 past the last found."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    index = _index(vectors, d)
    similarities, indices = index.search(vectors, k + 1)  # the row itself is (nearly always) among them
    return _without_self(similarities, indices, k)


def _index(vectors: np.ndarray, d: int) -> faiss.Index:
    n = len(vectors)
    if n <= EXACT_LIMIT:
        index = faiss.IndexFlatIP(d)
    else:
        cells = _cells(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = _SEED
        index.cp.niter = _KMEANS_ITERATIONS
        index.train(vectors[_training_sample(n, cells)])
        index.nprobe = _NPROBE
    index.add(vectors)
    return index


def _cells(n: int) -> int:
    return min(int(4 * math.sqrt(n)), n // _TRAIN_PER_CELL)


def _training_sample(n: int, cells: int) -> np.ndarray:
    """A seeded sample of rows, as many as k-means needs, in their order."""
    return np.sort(np.random.default_rng(_SEED).choice(n, min(n, cells * _TRAIN_PER_CELL), replace=False))


def _without_self(similarities: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(indices))[:, None]
    other = indices != rows
    # keep the first k entries that are not the row itself (a row that missed itself keeps k of k + 1)
    order = np.argsort(~other, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarities, order, 1), np.take_along_axis(indices, order, 1)


def similar_pairs(vectors: np.ndarray, min_similarity: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows that are among each other's `k` nearest (in either direction) and at
    least `min_similarity` alike: (i, j, similarity), each pair once, most similar first."""
    similarities, indices = cosine_neighbours(vectors, k)
    rows = np.repeat(np.arange(len(indices)), indices.shape[1])
    cols, values = indices.reshape(-1), similarities.reshape(-1)
    chosen = (cols >= 0) & (values >= min_similarity)
    i, j, values = np.minimum(rows, cols)[chosen], np.maximum(rows, cols)[chosen], values[chosen]
    pair = i.astype(np.int64) * len(indices) + j
    pair, first = np.unique(pair, return_index=True)
    i, j, values = i[first], j[first], values[first]
    order = np.lexsort((j, i, -values))
    return i[order], j[order], values[order]
