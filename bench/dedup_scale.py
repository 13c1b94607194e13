"""How `talkcurate dedup` (pipeline/dedup.py) and finding people (pipeline/people.py) grow with the
number of clips: planted near-duplicates and people in a synthetic manifest, 10,000 to 1,000,000
kept clips, each size in its own process.

Clips come from sources of 1 to 20 clips (geometric, mean 5) and last 3 to 10 s (75-250 frames).
A clip's 8 frame hashes are one random 64-bit look with 0-3 bits flipped per frame (a talking head
moves a little); its mouth motion and audio sub-fingerprints are random. One clip in 20 is
re-uploaded 1 to 3 times, each copy a source of its own: every frame hash with the same 4-12 bits
flipped (a crop and re-encode: 8 bits measured), cut 0-15 frames later, its motion the original's
plus noise (correlation about 0.9) and its audio the original's with 5-11% of the bits flipped
(tests/test_fingerprint.py measures 4.4% and 10.9%). Identity embeddings are people_scale's.

The run's own path is timed: a manifest table with the fingerprint and embedding columns,
`find_duplicates` and `assign` on it. Prints a table and writes JSON (default
bench/results/dedup_scale.json): wall seconds of each, peak resident memory of the process, recall
of the planted pairs (an original and a copy) and groups (found when their clips end in one found
group), and found pairs of clips from different planted groups.

    python bench/dedup_scale.py [--sizes 10000,100000,1000000] [--out FILE]
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pyarrow as pa
from people_scale import DIMS, planted_people, scale_main

FRAMES = 8
COPIED_SHARE = 1 / 20


def planted_manifest(clips: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """The table and each clip's planted duplicate group (-1 for a clip nobody copied)."""
    rng = np.random.default_rng(seed)
    originals = round(clips / (1 + 2 * COPIED_SHARE))  # copied originals have 2 copies on average
    copied = rng.choice(originals, round(originals * COPIED_SHARE), replace=False)
    copies_of = rng.integers(1, 4, size=len(copied))
    copied = copied[: np.searchsorted(np.cumsum(copies_of), clips - originals, side="right")]
    original_of = np.repeat(copied, copies_of[: len(copied)])[: clips - originals]
    originals = clips - len(original_of)
    group = np.full(clips, -1)
    group[copied] = copied
    group[originals:] = original_of

    sizes = np.minimum(rng.geometric(0.2, size=originals), 20)
    source = np.repeat(np.arange(len(sizes)), sizes)[:originals]
    source = np.concatenate([source, source.max() + 1 + np.arange(len(original_of))])
    looks = rng.integers(0, 2**64, size=originals, dtype=np.uint64)
    phash = looks[:, None] ^ _flips(rng, (originals, FRAMES), 0, 3)
    lengths = rng.integers(75, 251, size=originals)
    motion = [rng.integers(0, 120, size=n).astype(np.uint8) for n in lengths]
    audio = [rng.integers(0, 2**32, size=n - 1, dtype=np.uint32) for n in lengths]

    copy_phash = phash[original_of] ^ _flips(rng, (len(original_of), 1), 4, 12)
    cuts = rng.integers(0, 16, size=len(original_of))
    for i, cut in zip(original_of.tolist(), cuts.tolist()):
        noisy = motion[i][cut:] + rng.normal(0, 20, size=len(motion[i]) - cut)
        motion.append(np.clip(noisy, 0, 255).astype(np.uint8))
        ber = rng.uniform(0.05, 0.11)
        errors = np.packbits(rng.random((len(audio[i]) - cut, 32)) < ber, axis=1, bitorder="little")
        audio.append(audio[i][cut:] ^ errors.view("<u4")[:, 0])
    phash = np.concatenate([phash, copy_phash])

    embeddings, _ = planted_people(clips, seed)
    table = pa.table(
        {
            "key": [f"{i:016x}_00000000" for i in range(clips)],
            "source": [f"s{s}.mp4" for s in source.tolist()],
            "source_id": [f"{s:016x}" for s in source.tolist()],
            "status": pa.array(["kept"] * clips),
            "width": pa.array(np.full(clips, 640, np.int32)),
            "height": pa.array(np.full(clips, 360, np.int32)),
            "duration_s": pa.array([len(m) / 25 for m in motion]),
            "sync_confidence": pa.array(np.full(clips, 5.0)),
            "video_phash": pa.ListArray.from_arrays(
                pa.array(np.arange(0, clips * FRAMES + 1, FRAMES, np.int32)), pa.array(phash.reshape(-1))
            ),
            "video_motion": pa.array([m.tobytes() for m in motion], pa.binary()),
            "audio_fingerprint": pa.array([a.astype("<u4").tobytes() for a in audio], pa.binary()),
            "identity_backend": pa.array(["dlib-resnet"] * clips),
            "identity_embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(0, clips * DIMS + 1, DIMS, np.int32)), pa.array(embeddings.reshape(-1))
            ),
        }
    )
    return table, group


def _flips(rng: np.random.Generator, shape: tuple[int, int], fewest: int, most: int) -> np.ndarray:
    """uint64 masks of `shape`, each with fewest..most random bits set."""
    count = rng.integers(fewest, most + 1, size=shape)
    masks = np.zeros(shape, np.uint64)
    for start in range(0, shape[0], 1 << 14):  # a few rows at a time: the bench's own memory stays small
        rows = slice(start, start + (1 << 14))
        bits = (
            np.argsort(rng.random((*masks[rows].shape, 64)), axis=-1) < count[rows, ..., None]
        )  # a permutation's first `count`
        masks[rows] = np.packbits(bits, axis=-1, bitorder="little").view("<u8")[..., 0]
    return masks


def measure(clips: int) -> dict:
    from pipeline.dedup import DedupThresholds, find_duplicates
    from pipeline.people import assign

    table, group = planted_manifest(clips)
    started = time.perf_counter()
    result = find_duplicates(table, DedupThresholds())
    dedup_s = time.perf_counter() - started
    started = time.perf_counter()
    assign(table)
    people_s = time.perf_counter() - started

    found = {(min(m.first, m.second), max(m.first, m.second)) for m in result.matches}
    by_video = {
        (min(m.first, m.second), max(m.first, m.second)) for m in result.matches if m.evidence.startswith("video")
    }
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group.tolist()):
        if g >= 0:
            members.setdefault(g, []).append(i)
    # an original and each of its copies (two copies of one are up to 24 bits apart, joined through it)
    planted = {(g, i) for g, clips_of in members.items() for i in clips_of if i != g}
    same_group = {(a, b) for clips_of in members.values() for a in clips_of for b in clips_of if a < b}
    kept = {i: result.kept_of.get(i, i) for i in range(clips)}
    return {
        "clips": clips,
        "planted_groups": len(members),
        "groups_found": sum(len({kept[i] for i in m}) == 1 for m in members.values()),
        "planted_pairs": len(planted),
        "pairs_found": len(planted & found),
        "pairs_found_by_video": len(planted & by_video),
        "false_pairs": len(found - same_group),
        "dedup_s": round(dedup_s, 1),
        "people_s": round(people_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    scale_main(__file__, __doc__, "dedup", measure)


if __name__ == "__main__":
    main()
