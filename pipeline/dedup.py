"""`talkcurate dedup DIR`: groups of near-duplicate clips among a run's kept clips; in each group one
clip is kept and the others get its key in `duplicate_of`.

Two kept clips are near-duplicates when their audio is, or their video is (the fingerprints and
measures are in schemas/fingerprint.py):

- audio: at the best offset, their sub-fingerprints differ in at most `max_audio_ber` (0.3) of the
  bits;
- video: they come from different sources, their looks are within `max_phash_bits` (16 of 64)
  (they look alike; a clip's look is the bitwise majority of its frame hashes, one 64-bit code:
  the frames of a talking head are near-identical pictures), and their mouth-opening series
  correlate by at least `min_motion_corr` (0.75) at the best offset (the mouth does the same thing:
  the same take). Within a source, repeated footage is found by its audio.

Measured through the pipeline's stages (tests/test_fingerprint.py):

| pair of clips | look bits | audio bit error rate | mouth motion correlation |
|---|---|---|---|
| GRID clip and a copy: centre 90%, 320 px wide, CRF 26, AAC | 11 | 0.044 | 0.90 |
| GRID clip and a copy cut 0.6 s later: centre 92%, 300 px, CRF 28, Opus 48 kb/s | 10 | 0.109 (*) | 0.93 (*) |
| the two halves of one GRID clip (one speaker, other words) | 0-3 | 0.46-0.48 | 0.05-0.39 |
| two GRID speakers (same studio and framing) | 22-42 | 0.44-0.47 | 0.39-0.60 |

(*) at the best offset, 15 frames. The closest frame hashes of the copies are 8 bits apart, of the
speakers 20-40: a look costs the copies 2-3 bits of the 16.

The look alone cannot decide: two takes of one speaker in one room look more alike (0-3 bits)
than the same take cropped (10-11). Unrelated audio measures about 0.5 (Haitsma and Kalker's own
threshold is 0.35).

Groups are the connected clips; the clip kept is the one with the most pixels, then the longest,
then the best sync confidence, then the smallest key.

Cost: audio candidates share at least one exact sub-fingerprint (Haitsma and Kalker's lookup: the
copies above keep 36% and 7% of them exactly; values held by more than MAX_SHARED_CLIPS clips, such as
silence or hum, are skipped), found by one sort of every sub-fingerprint, and only the offsets such
values imply are measured, all with numpy, so audio grows with the number of clips. Video
candidates come from a range search over the clips' looks (pipeline/similarity.py, faiss): up to
HAMMING_EXACT_LIMIT clips (50,000) every pair is compared, so nothing is missed; beyond, a binary
inverted-file index compares each look with those of its 16 nearest cells only, near linear, and a
look-alike pair can be missed: in the bench below the video rule alone finds 85% of the planted
copies (4-12 bits apart) at 100,000 clips and 74% at 1,000,000; the audio rule finds most of the
others. Every look-alike pair across sources then has its motion correlated (one FFT per pair,
schemas/fingerprint.py `series_correlations`), which grows with how many clips look alike: about 35
others within 16 bits per clip at 1,000,000 random looks. bench/dedup_scale.py, synthetic clips
with planted copies, on this 2-core machine shared with other work (1-minute load average at the start and end):

| clips | planted pairs found (by video) | planted groups found | false pairs | dedup | people | peak memory | load |
|---|---|---|---|---|---|---|---|
| 10,000 | 900 of 900 (900) | 455 of 455 | 0 | 0.4 s | 1.4 s | 0.31 GB | 1.5-1.7 |
| 100,000 | 9,068 of 9,078 (7,755) | 4,538 of 4,545 | 0 | 17.1 s | 24.1 s | 0.93 GB | 1.7-2.9 |
| 1,000,000 | 90,723 of 90,909 (66,904): 99.8% | 45,272 of 45,422 | 1 | 288 s | 236 s | 6.9 GB | 2.9-2.5 |

At 1,000,000 clips `dedup` spends about 35 s on audio, 55 s on the look search and 190 s on the
motion of the look-alike pairs (the rest reads the manifest and groups). Before one look per clip,
the one-FFT correlation and the numpy audio (the same bench, a busier machine): 51 s at 10,000
clips and 624 s at 100,000. Over a cluster, `talkcurate dedup DIR --address ADDRESS` runs the
motion correlations as Ray tasks there (`find_duplicates(..., spread=True)`), with the same decisions.

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
import pyarrow.compute as pc

from core.storage import OutputDir
from pipeline.forest import root
from pipeline.inspect import load
from pipeline.output import annotated, write_annotation, write_manifest
from pipeline.similarity import hamming_pairs
from schemas.fingerprint import (
    MIN_OVERLAP_FRAMES,
    MIN_OVERLAP_SHARE,
    batch_correlations,
    correlation_batches,
    look,
    series_correlations,
    series_starts,
)
from schemas.manifest import MANIFEST
from schemas.records import Status

MAX_SHARED_CLIPS = 50
_AUDIO_BATCH = 1 << 22  # sub-fingerprints compared at once
_TASK_BATCHES = 64  # correlation batches (512 pairs, a few ms each) a Ray task measures at most
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


@dataclass(frozen=True)
class _Prints:
    """The kept clips' fingerprints, each kind one array after the other, as the manifest stores them."""

    looks: np.ndarray  # (clips,) uint64: schemas.fingerprint.look of each clip's frame hashes
    motion: np.ndarray  # uint8, video_motion of clip 0, then of clip 1, ...
    motion_frames: np.ndarray  # (clips,) int64
    tracked: np.ndarray  # (clips,) bool: video_motion is there (a face was tracked)
    audio: np.ndarray  # uint32
    audio_frames: np.ndarray  # (clips,) int64


def find_duplicates(table: pa.Table, thresholds: DedupThresholds, spread: bool = False) -> DedupResult:
    """Near-duplicate groups among the kept rows of a manifest table; with `spread` the motion
    correlations run as Ray tasks on the cluster Ray is connected to (the same decisions)."""
    missing = [name for name in _COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(
            f"the manifest has no {', '.join(missing)} column: it was written before near-duplicate "
            "fingerprints; curate the inputs again into a new --out"
        )
    kept = table.select(_COLUMNS)  # the columns first: filtering copies only these
    kept = kept.filter(pc.equal(kept["status"], Status.KEPT.value)).combine_chunks()
    unprinted = pc.or_(pc.is_null(kept["audio_fingerprint"]), pc.is_null(kept["video_phash"]))
    if pc.any(unprinted).as_py():
        keys = kept["key"].filter(unprinted).to_pylist()
        raise ValueError(
            f"{len(keys)} kept clips have no fingerprints (video_phash, audio_fingerprint), e.g. {keys[0]}"
        )
    clips = _clips(kept)
    prints = _prints(kept)
    _, source = np.unique(np.array(kept["source_id"].to_pylist(), dtype=object), return_inverse=True)
    correlate = _spread_correlations if spread else series_correlations
    matches = _audio_matches(prints, thresholds) + _video_matches(prints, source, thresholds, correlate)
    return DedupResult(clips, matches, _groups(clips, matches), thresholds)


def dedup(out: OutputDir, thresholds: DedupThresholds, address: str | None = None) -> DedupResult:
    """Find the near-duplicates of the run in `out`, record them and rewrite its manifest. With an
    `address` the motion correlations are spread over that Ray cluster (as `talkcurate run
    --address`; "": RAY_ADDRESS, else a local instance); without, they run in this process."""
    thresholds.validate()
    table, _ = load(out)
    try:
        if address is None:
            result = find_duplicates(table, thresholds)
        else:
            from pipeline.config import RunConfig
            from pipeline.executor import ray_session

            with ray_session(address or None, RunConfig()):
                result = find_duplicates(table, thresholds, spread=True)
    except ValueError as exc:
        raise ValueError(f"{out.uri}/{MANIFEST}: {exc}") from None
    write_annotation(out, "dedup", _notes(result))
    write_manifest(out, annotated(out, table))
    return result


def _clips(kept: pa.Table) -> list[Clip]:
    columns = {name: kept[name].to_pylist() for name in _COLUMNS[:8] if name != "status"}
    return [
        Clip(
            key=key,
            source=source,
            source_id=source_id,
            pixels=width * height,
            duration_s=duration_s,
            sync_confidence=sync_confidence if sync_confidence is not None else float("-inf"),
        )
        for key, source, source_id, width, height, duration_s, sync_confidence in zip(*columns.values())
    ]


def _prints(kept: pa.Table) -> _Prints:
    phash = kept["video_phash"].chunk(0) if kept.num_rows else pa.array([], pa.list_(pa.uint64()))
    motion, motion_bytes = _bytes(kept["video_motion"])
    audio, audio_bytes = _bytes(kept["audio_fingerprint"])
    return _Prints(
        looks=look(
            pc.list_flatten(phash).to_numpy().astype(np.uint64),
            pc.fill_null(pc.list_value_length(phash), 0).to_numpy().astype(np.int64),
        ),
        motion=motion,
        motion_frames=motion_bytes,
        tracked=kept["video_motion"].is_valid().to_numpy(zero_copy_only=False),
        audio=audio.view("<u4").astype(np.uint32, copy=False),
        audio_frames=audio_bytes // 4,
    )


def _bytes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A binary column's values one after the other (uint8) and each row's length (0 when null)."""
    array = column.chunk(0) if column.num_chunks else pa.array([], pa.binary())
    _, offset_buffer, data = array.buffers()
    width = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(offset_buffer, width)[array.offset : array.offset + len(array) + 1].astype(np.int64)
    values = np.frombuffer(data, np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    return values, np.diff(offsets)


def _audio_matches(prints: _Prints, thresholds: DedupThresholds) -> list[Match]:
    i, j, offset = _audio_candidates(prints.audio, prints.audio_frames)
    ber = _bit_error_rates(prints.audio, prints.audio_frames, i, j, offset)
    order = np.lexsort((offset, ber, j, i))  # each pair's best offset first: the lowest rate, then the smallest
    i, j, offset, ber = i[order], j[order], offset[order], ber[order]
    best = np.ones(len(i), bool)
    best[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    best &= ber <= thresholds.max_audio_ber
    return [
        Match(a, b, f"audio: bit error rate {rate:.3f} at offset {o} frames")
        for a, b, o, rate in zip(i[best].tolist(), j[best].tolist(), offset[best].tolist(), ber[best].tolist())
    ]


def _audio_candidates(audio: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, offset), i < j, each once: clip i and clip j share an exact sub-fingerprint at that
    offset (position in i minus position in j); `audio` holds the clips' sub-fingerprints one after
    the other, `frames[k]` of clip k."""
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)
    # one sort of value and place together, in place (8 bytes a sub-fingerprint): equal values end
    # up side by side, in clip order
    packed = np.empty(len(audio), np.uint64)
    for start in range(0, len(audio), _AUDIO_BATCH):
        end = min(start + _AUDIO_BATCH, len(audio))
        packed[start:end] = (audio[start:end].astype(np.uint64) << np.uint64(32)) | np.arange(
            start, end, dtype=np.uint64
        )
    packed.sort()
    value = packed >> np.uint64(32)
    shared = np.zeros(len(value), bool)
    shared[1:] = value[1:] == value[:-1]
    shared[:-1] |= shared[1:]
    shared &= (value != 0) & (value != 0xFFFFFFFF)  # digital silence, clipping
    value, element = value[shared], (packed[shared] & np.uint64(0xFFFFFFFF)).astype(np.int64)
    del packed
    clip = np.searchsorted(starts, element, side="right") - 1
    position = element - starts[clip]
    group_start = np.flatnonzero(np.diff(value, prepend=value[:1] ^ np.uint64(1)))
    group_end = np.append(group_start[1:], len(value))
    new_clip = np.ones(len(clip), bool)
    new_clip[1:] = (clip[1:] != clip[:-1]) | (value[1:] != value[:-1])
    clips_in_group = np.add.reduceat(new_clip, group_start) if len(group_start) else np.zeros(0, np.int64)
    chosen = (clips_in_group > 1) & (clips_in_group <= MAX_SHARED_CLIPS)  # silence-like values say nothing
    end_of = np.repeat(np.where(chosen, group_end, group_start), group_end - group_start)  # chosen groups only
    later = np.maximum(end_of - np.arange(len(value)) - 1, 0)  # the elements after each, in its group
    x = np.repeat(np.arange(len(value)), later)
    y = x + 1 + np.arange(len(x)) - np.repeat(np.cumsum(later) - later, later)
    apart = clip[x] != clip[y]
    i, j, offset = clip[x][apart], clip[y][apart], (position[x] - position[y])[apart]
    order = np.lexsort((offset, j, i))
    i, j, offset = i[order], j[order], offset[order]
    once = np.ones(len(i), bool)
    once[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1]) | (offset[1:] != offset[:-1])
    return i[once], j[once], offset[once]


def _bit_error_rates(
    audio: np.ndarray, frames: np.ndarray, i: np.ndarray, j: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """schemas.fingerprint.audio_bit_error_rate of clips i and j at each offset, all at once."""
    starts = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)
    start_i, start_j = starts[i] + np.maximum(0, offset), starts[j] + np.maximum(0, -offset)
    length = np.minimum(frames[i] - np.maximum(0, offset), frames[j] - np.maximum(0, -offset))
    enough = length >= np.maximum(MIN_OVERLAP_FRAMES, np.ceil(MIN_OVERLAP_SHARE * np.minimum(frames[i], frames[j])))
    rates = np.ones(len(i))
    measured = np.flatnonzero(enough)
    for batch in np.array_split(measured, -(-int(length[measured].sum()) // _AUDIO_BATCH)) if len(measured) else []:
        count = length[batch]
        first = np.cumsum(count) - count
        along = np.arange(int(count.sum())) - np.repeat(first, count)
        differing = np.bitwise_count(
            audio[np.repeat(start_i[batch], count) + along] ^ audio[np.repeat(start_j[batch], count) + along]
        )
        rates[batch] = np.add.reduceat(differing, first, dtype=np.int64) / (32 * count)
    return rates


def _video_matches(prints: _Prints, source: np.ndarray, thresholds: DedupThresholds, correlate) -> list[Match]:
    tracked = np.flatnonzero(prints.tracked)
    first, second, bits = hamming_pairs(prints.looks[tracked], thresholds.max_phash_bits)
    i, j = tracked[first], tracked[second]
    apart = source[i] != source[j]
    i, j, bits = i[apart], j[apart], bits[apart]
    correlations, offsets = correlate(prints.motion, prints.motion_frames, i, j)
    alike = np.flatnonzero(correlations >= thresholds.min_motion_corr)
    return [
        Match(
            a,
            b,
            f"video: looks {n} bits apart, mouth motion correlation {correlation:.3f} at offset {o} frames",
        )
        for a, b, n, correlation, o in zip(
            i[alike].tolist(),
            j[alike].tolist(),
            bits[alike].tolist(),
            correlations[alike].tolist(),
            offsets[alike].tolist(),
        )
    ]


def _spread_correlations(
    values: np.ndarray, lengths: np.ndarray, first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """series_correlations as Ray tasks: the series and the pairs go to the object store once, each
    task gets the positions of a few of series_correlations' own batches of pairs (so every pair is
    measured with the same bits) and returns their correlations and offsets."""
    import ray

    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    batches = correlation_batches(lengths, first, second)
    # at least 4 tasks a CPU while there are batches enough, so a slow node does not hold up the end
    cpus = int(ray.cluster_resources().get("CPU", 1))
    per_task = min(max(-(-len(batches) // (4 * cpus)), 1), _TASK_BATCHES)
    tasks = [batches[k : k + per_task] for k in range(0, len(batches), per_task)]
    shared = [ray.put(array) for array in (values, series_starts(lengths), lengths, first, second)]
    measure = ray.remote(_measure_batches)
    pending = [measure.remote(*shared, task) for task in tasks]
    correlations, offsets = np.full(len(first), -1.0), np.zeros(len(first), np.int64)
    for task, measured in zip(tasks, ray.get(pending)):
        for batch, (batch_correlation, batch_offset) in zip(task, measured):
            correlations[batch], offsets[batch] = batch_correlation, batch_offset
    return correlations, offsets


def _measure_batches(values, starts, lengths, first, second, batches: list[np.ndarray]) -> list:
    """A Ray task of _spread_correlations: batch_correlations of each batch of pairs."""
    return [batch_correlations(values, starts, lengths, first[batch], second[batch]) for batch in batches]


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
        f"(audio: bit error rate <= {t.max_audio_ber}; video, across sources: looks within "
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
