"""pipeline/similarity.py's frame hash search (`talkcurate dedup`'s video candidates) against brute
force: random 64-bit hashes with planted near-copies (4-12 bits flipped, as a re-encoded crop) and
decoys (20-40 bits: other people in the same studio), in the exact and the IVF regime."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.similarity import hamming_pairs

MAX_BITS = 16


def flipped(rng: np.random.Generator, code: int, bits: int) -> int:
    for bit in rng.choice(64, bits, replace=False).tolist():
        code ^= 1 << bit
    return code


def planted(seed: int = 0, hashes: int = 3000) -> tuple[np.ndarray, set[tuple[int, int]], set[tuple[int, int]]]:
    """Hashes, the planted near-copy pairs and the decoy pairs (i < j)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, size=hashes, dtype=np.uint64).tolist()
    copies, decoys = set(), set()
    for pairs, (fewest, most) in ((copies, (4, 12)), (decoys, (20, 40))):
        for original in rng.choice(hashes, 150, replace=False).tolist():
            codes.append(flipped(rng, codes[original], int(rng.integers(fewest, most + 1))))
            pairs.add((original, len(codes) - 1))
    return np.array(codes, np.uint64), copies, decoys


def brute_force(codes: np.ndarray) -> dict[tuple[int, int], int]:
    bits = np.bitwise_count(codes[:, None] ^ codes[None, :])
    i, j = np.nonzero(np.triu(bits <= MAX_BITS, 1))
    return {(int(a), int(b)): int(bits[a, b]) for a, b in zip(i, j)}


@pytest.mark.parametrize("exact_limit", [10_000, 1_000])  # 3,300 hashes: every pair, then an IVF index
def test_the_search_finds_the_pairs_brute_force_finds(exact_limit):
    codes, copies, decoys = planted()
    i, j, bits = hamming_pairs(codes, MAX_BITS, exact_limit=exact_limit)
    found = {(int(a), int(b)): int(c) for a, b, c in zip(i, j, bits)}
    truth = brute_force(codes)
    assert not decoys & found.keys()
    assert all(truth[pair] == c for pair, c in found.items())  # nothing beyond the threshold, bits measured right
    if len(codes) <= exact_limit:
        assert found == truth  # the near-copies and random hashes 13-16 bits apart
    else:  # a pair whose hashes fall in cells neither scans is missed: 3 of the 150 copies here
        assert len(copies & found.keys()) >= 0.97 * len(copies) and len(found) >= 0.9 * len(truth)
    assert list(zip(i.tolist(), j.tolist())) == sorted(found) and (i < j).all()
    again = hamming_pairs(codes, MAX_BITS, exact_limit=exact_limit)  # seeded: the same cells and pairs
    assert all(np.array_equal(a, b) for a, b in zip(again, (i, j, bits)))


def test_a_hash_repeated_many_times_crowds_nothing_out():
    """A static shot in 300 clips: every pair of its copies is found, and a near-copy of another hash too."""
    rng = np.random.default_rng(1)
    codes = np.concatenate([np.full(300, 0x0123456789ABCDEF, np.uint64), rng.integers(0, 2**64, 10, np.uint64)])
    codes = np.append(codes, np.uint64(flipped(rng, int(codes[305]), 8)))
    i, j, _ = hamming_pairs(codes, MAX_BITS)
    found = set(zip(i.tolist(), j.tolist()))
    assert {(a, b) for a in range(300) for b in range(a + 1, 300)} <= found and (305, 310) in found
