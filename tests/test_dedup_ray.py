"""`talkcurate dedup --address`: the motion correlations as Ray tasks on a real local Ray instance
decide exactly as in one process, on bench/dedup_scale.py's synthetic clips with planted copies."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import RunConfig
from pipeline.dedup import DedupThresholds, _spread_correlations, find_duplicates
from pipeline.executor import ray_session
from schemas.fingerprint import series_correlations

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from dedup_scale import planted_manifest  # noqa: E402

CLIPS = 3000
# looks within 20 bits: a few thousand look-alike pairs, several correlation batches and so several
# tasks, most of them no match
LOOSE = DedupThresholds(max_phash_bits=20)


@pytest.fixture(scope="module")
def local_ray():
    config = RunConfig()
    config.execution.num_cpus = 2
    with ray_session(None, config):
        yield


@pytest.fixture(scope="module")
def planted():
    return planted_manifest(CLIPS, seed=3)


def test_spread_correlations_are_the_same_bits(local_ray):
    rng = np.random.default_rng(0)
    lengths = rng.integers(30, 260, size=400)
    values = rng.integers(0, 120, size=int(lengths.sum())).astype(np.uint8)
    first = rng.integers(0, 400, size=3000)
    second = (first + rng.integers(1, 400, size=3000)) % 400

    correlations, offsets = _spread_correlations(values, lengths, first, second)

    expected_correlations, expected_offsets = series_correlations(values, lengths, first, second)
    np.testing.assert_array_equal(correlations, expected_correlations)
    np.testing.assert_array_equal(offsets, expected_offsets)
    assert (correlations > -1).all()


@pytest.mark.parametrize("thresholds", [DedupThresholds(), LOOSE], ids=["default", "looks within 20 bits"])
def test_dedup_on_ray_decides_as_in_process(local_ray, planted, thresholds):
    table, group = planted

    spread = find_duplicates(table, thresholds, spread=True)

    alone = find_duplicates(table, thresholds)
    assert spread.matches == alone.matches
    assert spread.kept_of == alone.kept_of
    by_video = [m for m in spread.matches if m.evidence.startswith("video")]
    copies = int((group[group >= 0] != np.flatnonzero(group >= 0)).sum())
    assert len(by_video) >= 0.8 * copies  # the planted copies are found, most by their motion
    assert all(group[m.first] == group[m.second] >= 0 for m in spread.matches)
