"""Nearest neighbours with faiss: the similarity-search library behind people (identity
embeddings by inner product, pipeline/people.py) and near-duplicate video (64-bit looks, each the
majority of a clip's frame hashes, by Hamming distance, pipeline/dedup.py).

Up to a limit (EXACT_LIMIT embeddings, HAMMING_EXACT_LIMIT hashes: a hash comparison is one
popcount) every pair is compared. Beyond it an inverted-file index (IVF: k-means cells, each query
scans its `nprobe` nearest cells) keeps the cost near linear: about n * nprobe / cells comparisons
per query instead of n; a neighbour that falls in a cell the query does not scan is missed
(bench/people_scale.py and bench/dedup_scale.py measure how often). Training uses a fixed seed and
a seeded sample, so the same input gives the same neighbours.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

EXACT_LIMIT = 20_000
HAMMING_EXACT_LIMIT = 50_000
_NPROBE = 16
_TRAIN_PER_CELL = 40  # training vectors per k-means cell (faiss warns below 39)
_KMEANS_ITERATIONS = 10  # of faiss's default 25: the cells only route queries, training was most of the time
_SEED = 1234
_RANGE_BATCH = 1 << 16  # hashes per range search: bounds the results faiss holds at once


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
        index = _trained(faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT), vectors, cells)
    index.add(vectors)
    return index


def _trained(index: faiss.IndexIVFFlat | faiss.IndexBinaryIVF, rows: np.ndarray, cells: int):
    """`index` with its k-means cells trained on a seeded sample of `rows`, scanning _NPROBE cells per query."""
    index.cp.seed = _SEED
    index.cp.niter = _KMEANS_ITERATIONS
    index.train(rows[_training_sample(len(rows), cells)])
    index.nprobe = _NPROBE
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


def hamming_pairs(
    codes: np.ndarray, max_bits: int, exact_limit: int = HAMMING_EXACT_LIMIT
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of `codes` ((n,) uint64) that differ in at most `max_bits` bits: (i, j, bits),
    each pair once, by i then j.

    A range search, not the k nearest: every code within reach counts, however many there are, so
    a hash repeated across many clips (a static shot) crowds nothing out; the pairs returned grow
    with how many codes are that alike. Up to `exact_limit` codes every pair is compared and none is
    missed. Beyond, each code is compared with the codes of its nearest cells only (faiss's binary
    IVF: k-means on the bits); a pair is missed when neither code's scanned cells hold the other,
    which is likelier the more bits apart they are (bench/dedup_scale.py measures it)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    n = len(codes)
    packed = codes.view(np.uint8).reshape(n, 8)  # faiss's binary codes: bytes
    pairs = [np.zeros(0, np.int64)]  # i * n + j
    threads = faiss.omp_get_max_threads()
    # one thread: on a shared 2-core machine the binary index's OpenMP threads wait on each other
    # (220,000 hashes: 350 s with two threads, 22 s with one)
    faiss.omp_set_num_threads(1)
    try:
        if n > 1:
            pairs += _range_pairs(packed, max_bits, exact_limit)
    finally:
        faiss.omp_set_num_threads(threads)
    i, j = np.divmod(np.unique(np.concatenate(pairs)), max(n, 1))  # the IVF can find a pair from both sides
    return i, j, np.bitwise_count(codes[i] ^ codes[j]).astype(np.int64)


def _range_pairs(packed: np.ndarray, max_bits: int, exact_limit: int) -> list[np.ndarray]:
    """i * n + j for each pair the range search finds, from either side."""
    n, pairs = len(packed), []
    index = _hamming_index(packed, exact_limit)
    for start in range(0, n, _RANGE_BATCH):
        limits, _, found = index.range_search(packed[start : start + _RANGE_BATCH], max_bits + 1)  # below radius
        query = start + np.repeat(np.arange(len(limits) - 1), np.diff(limits.astype(np.int64)))
        other = query != found
        pairs.append(np.minimum(query, found)[other] * n + np.maximum(query, found)[other])
    return pairs


def _hamming_index(packed: np.ndarray, exact_limit: int) -> faiss.IndexBinary:
    n, bits = len(packed), 8 * packed.shape[1]
    if n <= exact_limit:
        index = faiss.IndexBinaryFlat(bits)
    else:
        cells = _cells(n)
        index = _trained(faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, cells), packed, cells)
    index.add(packed)
    return index
