"""`talkcurate dedup DIR`: groups of near-duplicate clips among a run's kept clips; in each group one
clip is kept and the others get its key in `duplicate_of`.

Two kept clips are near-duplicates when their audio is, or their video is (the fingerprints and
measures are in schemas/fingerprint.py):

- audio: at the best offset, their sub-fingerprints differ in at most `max_audio_ber` (0.3) of the
  bits;
- video: they come from different sources, a frame of one is within `max_phash_bits` (16 of 64) of
  a frame of the other (they look alike), and their mouth-opening series correlate by at least
  `min_motion_corr` (0.75) at the best offset (the mouth does the same thing: the same take).
  Within a source, repeated footage is found by its audio.

Measured through the pipeline's stages (tests/test_fingerprint.py):

| pair of clips | frame hash bits | audio bit error rate | mouth motion correlation |
|---|---|---|---|
| GRID clip and a copy: centre 90%, 320 px wide, CRF 26, AAC | 8 | 0.044 | 0.90 |
| GRID clip and a copy cut 0.6 s later: centre 92%, 300 px, CRF 28, Opus 48 kb/s | 8 | 0.109 (*) | 0.93 (*) |
| the two halves of one GRID clip (one speaker, other words) | 0 | 0.46-0.48 | 0.05-0.39 |
| two GRID speakers (same studio and framing) | 20-40 | 0.44-0.47 | 0.39-0.60 |

(*) at the best offset, 15 frames.

The frame hash alone cannot decide: two takes of one speaker in one room look more alike (0 bits)
than the same take cropped (8). Unrelated audio measures about 0.5 (Haitsma and Kalker's own
threshold is 0.35).

Groups are the connected clips; the clip kept is the one with the most pixels, then the longest,
then the best sync confidence, then the smallest key.

Cost: audio candidates share at least one exact sub-fingerprint (Haitsma and Kalker's lookup: the
copies above keep 36% and 7% of them exactly; values held by more than MAX_SHARED_CLIPS clips, such as
silence or hum, are skipped), and only the offsets such values imply are measured, so audio scales
with the number of clips. Video candidates come from a range search over every kept clip's frame
hashes (pipeline/similarity.py, faiss): up to HAMMING_EXACT_LIMIT hashes (50,000: about 6,000 clips
of 8 frames) every pair is compared, so nothing is missed; beyond, a binary inverted-file index
compares each hash with those of its 16 nearest cells only, near linear, and a look-alike pair can
be missed (the more bits apart, the likelier: 3 of 150 random hashes 4-12 bits apart among 3,300 in
tests/test_hamming_pairs.py; a clip's 8 frames give a copy 8 chances). Every look-alike pair
across sources then has its motion correlated (about 700 pairs a second on a busy machine): that
grows with how many clips look alike, about 40 others within 16 bits per clip at 1,000,000 random
looks. bench/dedup_scale.py, synthetic clips with planted copies, on a busy 2-core machine:

| clips | planted pairs found | planted groups found | false pairs | dedup | people | peak memory |
|---|---|---|---|---|---|---|
| 10,000 | 900 of 900 | 455 of 455 | 0 | 51 s | 4 s | 0.33 GB |
| 100,000 | 9,078 of 9,078 | 4,545 of 4,545 | 0 | 624 s | 23 s | 1.45 GB |

1,000,000 clips is not measured yet: the motion correlations of random look-alikes (above) would
take hours at that rate, past the issue's 10 minutes.

The decisions are kept in the journal (`.talkcurate/annotations/dedup.parquet`) and joined into the
manifest, which is rewritten; a later run over more inputs keeps them, but its new clips are not
compared until `dedup` runs again.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from core.storage import OutputDir
from pipeline.forest import root
from pipeline.inspect import load
from pipeline.output import annotated, write_annotation, write_manifest
from pipeline.similarity import hamming_pairs
from schemas.fingerprint import Fingerprint, audio_bit_error_rate, motion_correlations
from schemas.manifest import MANIFEST
from schemas.records import Status

MAX_SHARED_CLIPS = 50
_MOTION_BATCH = 64  # pairs per batch of motion correlations: small arrays stay in the CPU's caches
_COLUMNS = (
    "key",
    "source",
    "source_id",
    "status",
    "width",
    "height",
    "duration_s",
    "sync_confidence",
    "video_phash",
    "video_motion",
    "audio_fingerprint",
)


@dataclass(frozen=True)
class DedupThresholds:
    max_audio_ber: float = 0.3  # one recording re-encoded measures 0.04-0.11, other speech 0.44-0.48
    max_phash_bits: int = 16  # one picture re-encoded and cropped: 8; other people in the same studio: 20-40
    min_motion_corr: float = 0.75  # one take: 0.90-0.93; other takes of the same speaker: 0.05-0.39

    def validate(self) -> None:
        if not 0 <= self.max_audio_ber < 0.5:
            raise ValueError(
                "the audio bit error rate threshold must be in [0, 0.5) (unrelated audio measures about 0.5), not "
                f"{self.max_audio_ber}"
            )
        if not 0 <= self.max_phash_bits <= 64:
            raise ValueError(f"the frame hash threshold must be 0-64 bits, not {self.max_phash_bits}")
        if not -1 <= self.min_motion_corr <= 1:
            raise ValueError(f"the motion correlation threshold must be in [-1, 1], not {self.min_motion_corr}")


@dataclass(frozen=True)
class Clip:
    key: str
    source: str
    source_id: str
    pixels: int
    duration_s: float
    sync_confidence: float
    fingerprint: Fingerprint


@dataclass(frozen=True)
class Match:
    first: int  # indices into DedupResult.clips
    second: int
    evidence: str  # what matched, with the measures


@dataclass
class DedupResult:
    clips: list[Clip]
    matches: list[Match]
    kept_of: dict[int, int]  # duplicate clip -> the clip kept for its group
    thresholds: DedupThresholds


def find_duplicates(table: pa.Table, thresholds: DedupThresholds) -> DedupResult:
    """Near-duplicate groups among the kept rows of a manifest table."""
    missing = [name for name in _COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(
            f"the manifest has no {', '.join(missing)} column: it was written before near-duplicate "
            "fingerprints; curate the inputs again into a new --out"
        )
    rows = [row for row in table.select(_COLUMNS).to_pylist() if row["status"] == Status.KEPT.value]
    unprinted = [row["key"] for row in rows if row["audio_fingerprint"] is None or row["video_phash"] is None]
    if unprinted:
        raise ValueError(
            f"{len(unprinted)} kept clips have no fingerprints (video_phash, audio_fingerprint), e.g. {unprinted[0]}"
        )
    clips = [_clip(row) for row in rows]
    matches = _audio_matches(clips, thresholds) + _video_matches(clips, thresholds)
    return DedupResult(clips, matches, _groups(clips, matches), thresholds)


def dedup(out: OutputDir, thresholds: DedupThresholds) -> DedupResult:
    """Find the near-duplicates of the run in `out`, record them and rewrite its manifest."""
    thresholds.validate()
    table, _ = load(out)
    try:
        result = find_duplicates(table, thresholds)
    except ValueError as exc:
        raise ValueError(f"{out.uri}/{MANIFEST}: {exc}") from None
    write_annotation(out, "dedup", _notes(result))
    write_manifest(out, annotated(out, table))
    return result


def _clip(row: dict) -> Clip:
    return Clip(
        key=row["key"],
        source=row["source"],
        source_id=row["source_id"],
        pixels=row["width"] * row["height"],
        duration_s=row["duration_s"],
        sync_confidence=row["sync_confidence"] if row["sync_confidence"] is not None else float("-inf"),
        fingerprint=Fingerprint.from_columns(row["video_phash"], row["video_motion"], row["audio_fingerprint"]),
    )


def _audio_matches(clips: list[Clip], thresholds: DedupThresholds) -> list[Match]:
    matches = []
    for (i, j), offsets in sorted(_audio_candidates([c.fingerprint.audio for c in clips]).items()):
        a, b = clips[i].fingerprint.audio, clips[j].fingerprint.audio
        ber, offset = min((audio_bit_error_rate(a, b, offset), offset) for offset in sorted(offsets))
        if ber <= thresholds.max_audio_ber:
            matches.append(Match(i, j, f"audio: bit error rate {ber:.3f} at offset {offset} frames"))
    return matches


def _audio_candidates(prints: list[np.ndarray]) -> dict[tuple[int, int], set[int]]:
    """(i, j) with i < j -> the offsets (position in i minus position in j) at which clip i and
    clip j share an exact sub-fingerprint."""
    if not prints:
        return {}
    values = np.concatenate(prints)
    clip = np.repeat(np.arange(len(prints), dtype=np.int32), [len(p) for p in prints])
    position = np.concatenate([np.arange(len(p), dtype=np.int32) for p in prints])
    informative = (values != 0) & (values != 0xFFFFFFFF)  # digital silence, clipping
    values, clip, position = values[informative], clip[informative], position[informative]
    order = np.argsort(values, kind="stable")
    values, clip, position = values[order], clip[order], position[order]
    starts = np.flatnonzero(np.diff(values, prepend=values[:1] ^ 1))  # where a new value begins
    ends = np.append(starts[1:], len(values))
    candidates: dict[tuple[int, int], set[int]] = defaultdict(set)
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        members, places = clip[start:end], position[start:end]
        if not 1 < len(np.unique(members)) <= MAX_SHARED_CLIPS:
            continue
        x, y = np.nonzero(members[:, None] < members[None, :])
        for i, j, offset in zip(members[x].tolist(), members[y].tolist(), (places[x] - places[y]).tolist()):
            candidates[(i, j)].add(offset)
    return candidates


def _video_matches(clips: list[Clip], thresholds: DedupThresholds) -> list[Match]:
    moving = [i for i, c in enumerate(clips) if c.fingerprint.video_motion is not None]
    hashes = [np.unique(clips[i].fingerprint.video_phash) for i in moving]  # a repeated hash changes no minimum
    codes = np.concatenate([np.zeros(0, np.uint64), *hashes])
    owner = np.repeat(np.array(moving, np.int64), [len(h) for h in hashes])  # the clip of each code
    first, second, bits = hamming_pairs(codes, thresholds.max_phash_bits)
    i, j = owner[first], owner[second]  # i <= j: codes are in clip order
    _, source = np.unique([c.source_id for c in clips], return_inverse=True)
    apart = source[i] != source[j]
    i, j, bits = i[apart], j[apart], bits[apart]
    order = np.lexsort((bits, j, i))  # each pair of clips once, with its fewest differing bits
    i, j, bits = i[order], j[order], bits[order]
    first_of_pair = np.ones(len(i), bool)
    first_of_pair[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    alike = list(zip(i[first_of_pair].tolist(), j[first_of_pair].tolist(), bits[first_of_pair].tolist()))
    matches = []
    for start in range(0, len(alike), _MOTION_BATCH):
        batch = alike[start : start + _MOTION_BATCH]
        correlations, offsets = motion_correlations(
            [clips[i].fingerprint.video_motion for i, _, _ in batch],
            [clips[j].fingerprint.video_motion for _, j, _ in batch],
        )
        for (i, j, bits), correlation, offset in zip(batch, correlations, offsets):
            if correlation >= thresholds.min_motion_corr:
                matches.append(
                    Match(
                        i,
                        j,
                        f"video: frame hashes {bits} bits apart, mouth motion correlation "
                        f"{correlation:.3f} at offset {offset} frames",
                    )
                )
    return matches


def _groups(clips: list[Clip], matches: list[Match]) -> dict[int, int]:
    """Each duplicate -> the clip kept for its group (connected by matches)."""
    parent = list(range(len(clips)))
    for match in matches:
        parent[root(parent, match.first)] = root(parent, match.second)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(clips)):
        members[root(parent, i)].append(i)
    kept_of = {}
    for group in members.values():
        best = min(
            group, key=lambda i: (-clips[i].pixels, -clips[i].duration_s, -clips[i].sync_confidence, clips[i].key)
        )
        kept_of.update((i, best) for i in group if i != best)
    return kept_of


def _notes(result: DedupResult) -> pa.Table:
    """The annotation: every compared clip's key, with `duplicate_of` null for the clips kept."""
    keys = [clip.key for clip in result.clips]
    kept = [None if i not in result.kept_of else keys[result.kept_of[i]] for i in range(len(keys))]
    schema = pa.schema(
        [pa.field("key", pa.string(), nullable=False), pa.field("duplicate_of", pa.string())],
        metadata={b"thresholds": json.dumps(asdict(result.thresholds)).encode()},
    )
    return pa.Table.from_pydict({"key": keys, "duplicate_of": kept}, schema=schema)


def render(result: DedupResult) -> str:
    """What `talkcurate dedup` prints: the totals, then each group with the matches that join it."""
    t = result.thresholds
    groups: dict[int, list[int]] = defaultdict(list)
    for duplicate, kept in sorted(result.kept_of.items()):
        groups[kept].append(duplicate)
    lines = [
        f"{len(result.clips)} kept clips compared: {len(result.matches)} near-duplicate pairs, "
        f"{len(groups)} groups, {len(result.kept_of)} clips marked duplicate_of",
        f"(audio: bit error rate <= {t.max_audio_ber}; video, across sources: frame hashes within "
        f"{t.max_phash_bits} bits and mouth motion correlation >= {t.min_motion_corr})",
    ]
    group_of = {i: kept for kept, members in groups.items() for i in (kept, *members)}
    for kept, duplicates in groups.items():
        clip = result.clips[kept]
        lines.append(f"\nkept {clip.key}  {clip.source}")
        for i in duplicates:
            lines.append(f"  duplicate {result.clips[i].key}  {result.clips[i].source}")
        for match in result.matches:
            if group_of.get(match.first) == kept:
                lines.append(
                    f"    {result.clips[match.first].key} ~ {result.clips[match.second].key}: {match.evidence}"
                )
    return "\n".join(lines)
