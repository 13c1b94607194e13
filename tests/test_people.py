"""pipeline/people.py on planted people: embeddings shaped like the default model's (one shared
direction, a direction per person, noise per clip: about 0.985 within a person and 0.88 between
people, as dlib's ResNet measures on real faces). Real faces through a real run are in
tests/test_dedup_split.py."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from pipeline import similarity
from pipeline.people import assign, person_id


def planted(people: int, clips_each: int, seed: int = 0, dims: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (people * clips_each, dims) and each one's planted person."""
    rng = np.random.default_rng(seed)

    def unit(*shape):
        v = rng.normal(size=(*shape, dims))
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    person = np.repeat(np.arange(people), clips_each)
    shared, directions, noise = unit(), unit(people), unit(len(person))
    embeddings = np.sqrt(0.88) * shared + np.sqrt(0.105) * directions[person] + np.sqrt(0.015) * noise
    return embeddings.astype(np.float32), person


def manifest(embeddings, backend: str = "dlib-resnet", keys=None) -> pa.Table:
    keys = keys or [f"{i:08x}_00000000" for i in range(len(embeddings))]
    return pa.table(
        {
            "key": keys,
            "status": ["kept"] * len(keys),
            "identity_backend": [backend] * len(keys),
            "identity_embedding": pa.array(
                [None if e is None else list(e) for e in embeddings], pa.list_(pa.float32())
            ),
        }
    )


def found_vs_planted(ids: dict[str, str], keys: list[str], person: np.ndarray) -> tuple[int, int, int]:
    """(people found, found people holding two planted ones, planted people split over two ids)."""
    planted_of, found_of = defaultdict(set), defaultdict(set)
    for key, truth in zip(keys, person):
        planted_of[ids[key]].add(truth)
        found_of[truth].add(ids[key])
    return len(planted_of), sum(len(v) > 1 for v in planted_of.values()), sum(len(v) > 1 for v in found_of.values())


@pytest.mark.parametrize("people", [40, 2500])  # 2,500 people of 10 clips: past the exact search, an IVF index
def test_planted_people_are_found(people):
    embeddings, person = planted(people, 10)
    table = manifest(embeddings)
    keys = table["key"].to_pylist()
    assert (len(keys) > similarity.EXACT_LIMIT) == (people == 2500)
    ids = assign(table)
    assert found_vs_planted(ids, keys, person) == (people, 0, 0)
    # a person's id comes from its first clip
    assert ids[keys[0]] == person_id("dlib-resnet", keys[0]) and ids[keys[10]] == person_id("dlib-resnet", keys[10])
    # the same clips in another order: the same people
    order = np.random.default_rng(1).permutation(len(keys))
    assert assign(table.take(order)) == ids


def test_ids_stay_when_clips_are_added():
    embeddings, person = planted(30, 8)
    table = manifest(embeddings)
    keys = table["key"].to_pylist()
    first_half = [i for i in range(len(keys)) if i % 8 < 4]
    earlier = assign(table.take(first_half))
    later = assign(table, earlier)
    assert all(later[key] == name for key, name in earlier.items())
    assert found_vs_planted(later, keys, person) == (30, 0, 0)
    # ids given earlier win over what the clips alone would say: two named people are never merged
    renamed = {key: ("x" if i < 4 else "y") for i, key in enumerate(keys[:8])}  # one person, named twice
    merged = assign(table, renamed)
    assert {merged[key] for key in keys[:4]} == {"x"} and {merged[key] for key in keys[4:8]} == {"y"}


def test_clips_that_look_like_two_people_do_not_merge_them():
    """Two people of 20 clips each, and three clips halfway between them: each of those is as alike
    as one person's clips to some clips of both (single linkage would make one person of all 43),
    but the two people's clips are not alike on average."""
    embeddings, person = planted(2, 20, seed=3)
    halfway = embeddings[:3] + embeddings[20:23]
    halfway /= np.linalg.norm(halfway, axis=1, keepdims=True)
    clips = np.concatenate([embeddings, halfway])
    i, j, _ = similarity.similar_pairs(clips, 0.96, 10)
    bridged = {(int(a), int(b)) for a, b in zip(i, j) if b >= 40}
    assert any(a < 20 for a, _ in bridged) and any(20 <= a < 40 for a, _ in bridged)
    table = manifest(clips)
    keys = table["key"].to_pylist()
    ids = assign(table)
    assert found_vs_planted(ids, keys[:40], person) == (2, 0, 0)
    assert {ids[key] for key in keys[40:]} <= {ids[keys[0]], ids[keys[20]]}


def test_clips_without_embeddings_or_of_other_backends():
    embeddings, _ = planted(2, 3)
    table = pa.concat_tables(
        [
            manifest([*embeddings[:3], None], keys=[f"a{i}" for i in range(4)]),
            manifest(np.pad(embeddings[3:], ((0, 0), (0, 384))), "insightface", keys=[f"b{i}" for i in range(3)]),
        ]
    )
    ids = assign(table)
    assert ids["a3"] is None and len({ids[f"a{i}"] for i in range(3)}) == 1
    assert len({ids[f"b{i}"] for i in range(3)}) == 1 and ids["b0"] != ids["a0"]
    mixed = pa.concat_tables([manifest(embeddings[:2]), manifest(embeddings[2:3, :64], keys=["short"])])
    with pytest.raises(ValueError, match="different lengths"):
        assign(mixed)
