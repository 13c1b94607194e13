"""`talkcurate dedup`'s audio candidates and bit error rates, computed for every clip at once with
numpy, against their definitions one pair at a time: random sub-fingerprints with planted copies
(shifted, 3% of the bits flipped), digital silence, and a value so common it says nothing."""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.dedup import MAX_SHARED_CLIPS, _audio_candidates, _bit_error_rates
from schemas.fingerprint import audio_bit_error_rate


def planted_audio(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    prints = [rng.integers(0, 2**12, int(n), dtype=np.uint32) for n in rng.integers(20, 120, 70)]  # 12 bits: collisions
    for original in range(10):
        flips = np.packbits(rng.random((len(prints[original]) - 5, 32)) < 0.03, axis=1, bitorder="little")
        prints.append(prints[original][5:] ^ flips.view("<u4")[:, 0])
    for clip in prints[:60]:
        clip[:3] = 0  # silence shared by everyone
        clip[3] = 0xABCDEF  # a value in more than MAX_SHARED_CLIPS clips
    return prints


def test_audio_candidates_are_the_offsets_of_shared_values():
    prints = planted_audio()
    i, j, offset = _audio_candidates(np.concatenate(prints), np.array([len(p) for p in prints]))
    holders: dict[int, set[int]] = {}
    for clip, values in enumerate(prints):
        for value in values.tolist():
            holders.setdefault(value, set()).add(clip)
    expected = set()
    for a, b in itertools.combinations(range(len(prints)), 2):
        for p, value in enumerate(prints[a].tolist()):
            if value in (0, 0xFFFFFFFF) or len(holders[value]) > MAX_SHARED_CLIPS:
                continue
            expected |= {(a, b, p - q) for q in np.flatnonzero(prints[b] == value).tolist()}
    found = list(zip(i.tolist(), j.tolist(), offset.tolist()))
    assert found == sorted(expected) and len(found) > 100
    assert all((k, len(prints) - 10 + k, 5) in expected for k in range(10))  # every copy at its shift


def test_bit_error_rates_are_the_definition():
    prints = planted_audio(1)
    rng = np.random.default_rng(2)
    i, j = np.sort(rng.choice(len(prints), (300, 2)), axis=1).T
    offset = rng.integers(-120, 120, 300)
    rates = _bit_error_rates(np.concatenate(prints), np.array([len(p) for p in prints]), i, j, offset)
    expected = [audio_bit_error_rate(prints[a], prints[b], o) for a, b, o in zip(i, j, offset.tolist())]
    assert rates.tolist() == expected and 0 < sum(r < 1 for r in expected) < 300  # some overlaps too short
