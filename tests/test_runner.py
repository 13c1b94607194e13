"""ChainRunner without Ray: the two worker groups of the pipeline, chunk accounting, failures
as rows, and per-stage timing."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import media

from pipeline.runner import ChainRunner, RunStats, StageStats
from schemas.records import CandidateClip, ChunkDone, Rejected, SourceChunk, SourceVideo, Status
from stages.base import Stage
from stages.chunk import ChunkStage
from stages.normalize import NormalizedChunk, NormalizeStage
from stages.probe import ProbeStage
from stages.scene_cut import SceneCutStage


@dataclass
class Explodes(Stage[SourceVideo, SourceVideo]):
    """Fails on inputs whose name says so, passes the others on."""

    name: ClassVar[str] = "explodes"
    input_type: ClassVar[type] = SourceVideo

    def process(self, item: SourceVideo) -> SourceVideo:
        if "explode" in item.uri:
            raise RuntimeError("boom")
        return item


@dataclass
class FailsAfterOneClip(Stage[SourceChunk, CandidateClip]):
    """A fan-out stage that emits a 10-frame clip, then fails."""

    name: ClassVar[str] = "fails_after_one"
    input_type: ClassVar[type] = SourceChunk

    def process(self, item: SourceChunk) -> Iterator[CandidateClip]:
        yield CandidateClip.for_span(item.source, item.start_frame, item.start_frame + 10, item.index)
        raise ValueError("lost the thread")


@dataclass
class DrainFrames(Stage[NormalizedChunk, CandidateClip]):
    """Pulls every frame of a chunk and emits nothing: all the time it takes is decoding."""

    name: ClassVar[str] = "drain"
    input_type: ClassVar[type] = NormalizedChunk

    def process(self, item: NormalizedChunk) -> Iterator[CandidateClip]:
        for _ in item.frames(small_width=64):
            pass
        return
        yield


@dataclass
class KeepsTheLongest(Stage[CandidateClip, CandidateClip]):
    """Settles a chunk: keeps its longest clip, rejects the others; records what it was given."""

    name: ClassVar[str] = "longest"
    input_type: ClassVar[type] = CandidateClip
    seen: list = dataclasses.field(default_factory=list)

    def process(self, item: CandidateClip) -> CandidateClip:
        return item

    def settles(self) -> bool:
        return True

    def settle(self, items: list[CandidateClip]) -> list[CandidateClip | Rejected]:
        self.seen.append([(c.start_frame, c.frames) for c in items])
        longest = max(items, key=lambda c: c.num_frames)
        return [c if c is longest else Rejected("not_longest", f"{c.num_frames} frames") for c in items]


def ingest(chunk_s: float = 120.0) -> list[Stage]:
    return [ProbeStage(), ChunkStage(chunk_s=chunk_s)]


def clips() -> list[Stage]:
    return [NormalizeStage(preset="ultrafast"), SceneCutStage()]


def assert_chunks_accounted(out: list[object]) -> Counter:
    """Every ChunkDone follows its chunk's rows and counts them; returns chunks per source."""
    pending: Counter = Counter()
    chunks: Counter = Counter()
    for item in out:
        if isinstance(item, CandidateClip):
            pending[(item.source.source_id, item.chunk_index)] += 1
        else:
            assert isinstance(item, ChunkDone), item
            key = (item.source.source_id, item.chunk_index)
            assert item.num_clips == pending.pop(key, 0), item
            chunks[item.source.source_id] += 1
            assert 0 <= item.chunk_index < item.chunk_count
    assert not pending, f"rows without their ChunkDone: {pending}"
    return chunks


def test_two_groups_emit_chunk_done_with_the_clip_count(shots_video, run_chain):
    out = run_chain(shots_video.path, ingest(chunk_s=5.0), clips())
    chunks = assert_chunks_accounted(out)
    done = [item for item in out if isinstance(item, ChunkDone)]
    assert [(d.chunk_index, d.chunk_count) for d in done] == [(0, 2), (1, 2)]
    assert list(chunks.values()) == [2]
    rows = [item for item in out if isinstance(item, CandidateClip)]
    assert sum(d.num_clips for d in done) == len(rows) == 3  # three shots: the boundary moved onto a cut
    assert {row.chunk_index for row in rows} == {0, 1}
    boundary = min(row.start_frame for row in rows if row.chunk_index == 1)
    assert abs(boundary - shots_video.cuts[1]) <= 1
    assert all(row.end_frame <= boundary for row in rows if row.chunk_index == 0)


def test_several_sources_through_one_pair_of_runners():
    first, second = ChainRunner(ingest()), ChainRunner(clips())
    out: list[object] = []
    for path in media.GRID[:2]:
        for item in first.run(SourceVideo.from_uri(str(path))):
            assert isinstance(item, SourceChunk)
            out.extend(second.run(item))
    assert sorted(assert_chunks_accounted(out).values()) == [1, 1]
    assert second.stats.stages["normalize"].items == 2
    assert second.stats.stages["normalize"].video_s == 6.0


def test_rejected_source_gives_one_row_and_a_chunk_done(broken_media, tmp_path, run_chain):
    folder, _ = broken_media
    for path, reason in [(folder / "video only.mp4", "no_audio"), (tmp_path / "missing.mp4", "unreadable")]:
        out = run_chain(path, ingest(), clips())
        assert len(out) == 2, out
        row, done = out
        assert (row.status, row.reason, row.rejected_by) == (Status.REJECTED, reason, "probe")
        assert row.source.uri == str(path) and row.reason_detail
        assert done == ChunkDone(row.source, 0, 1, 1)


def test_a_failing_stage_gives_an_error_row_and_the_run_goes_on(tmp_path):
    runner = ChainRunner([Explodes(), *ingest()])
    bad = SourceVideo.from_uri(str(tmp_path / "please explode.mp4"))
    row, done = list(runner.run(bad))
    assert (row.status, row.reason, row.rejected_by) == (Status.REJECTED, "error", "explodes")
    assert "explodes" in row.reason_detail and "RuntimeError" in row.reason_detail and "boom" in row.reason_detail
    assert done == ChunkDone(bad, 0, 1, 1)
    (chunk,) = runner.run(SourceVideo.from_uri(str(media.GRID[0])))  # the next item is processed normally
    assert isinstance(chunk, SourceChunk) and chunk.end_frame == 75
    assert runner.stats.stages["explodes"].items == 2


def test_a_fan_out_stage_failing_half_way_leaves_a_row_for_the_rest():
    (chunk,) = ChainRunner(ingest()).run(SourceVideo.from_uri(str(media.GRID[0])))
    runner = ChainRunner([FailsAfterOneClip()])
    first, error, done = list(runner.run(chunk))
    assert (first.start_frame, first.end_frame, first.status) == (0, 10, Status.PENDING)
    assert (error.start_frame, error.end_frame) == (10, chunk.end_frame)  # what was never processed
    assert (error.reason, error.rejected_by) == ("error", "fails_after_one")
    assert "ValueError" in error.reason_detail and "lost the thread" in error.reason_detail
    assert done == ChunkDone(chunk.source, 0, 1, 2)


def test_items_a_stage_does_not_accept_pass_through():
    runner = ChainRunner(clips())
    done = ChunkDone(SourceVideo.from_uri("x"), 0, 1, 0)
    assert list(runner.run(done)) == [done]
    rejected = SourceVideo.from_uri("y").reject("no_audio", "", "probe")
    assert list(runner.run(rejected)) == [rejected]
    assert not runner.stats.stages  # nothing was timed: no stage ran


def test_decoding_time_is_charged_to_normalize(shots_video):
    (chunk,) = ChainRunner(ingest()).run(SourceVideo.from_uri(str(shots_video.path)))
    runner = ChainRunner(clips())
    start = time.perf_counter()
    out = list(runner.run(chunk))
    elapsed = time.perf_counter() - start
    assert sum(isinstance(item, CandidateClip) for item in out) == 3
    normalize, scene_cut = runner.stats.stages["normalize"], runner.stats.stages["scene_cut"]
    assert normalize.wall_s > 0 and normalize.cpu_s > 0
    assert scene_cut.wall_s > 0 and scene_cut.cpu_s > 0
    assert normalize.wall_s + scene_cut.wall_s <= elapsed
    assert normalize.items == scene_cut.items == 1
    assert normalize.video_s == scene_cut.video_s == 10.0

    # A consumer that does nothing but pull frames: the time is decoding, so normalize's.
    (chunk,) = ChainRunner(ingest()).run(SourceVideo.from_uri(str(shots_video.path)))
    runner = ChainRunner([NormalizeStage(), DrainFrames()])
    assert list(runner.run(chunk)) == [ChunkDone(chunk.source, 0, 1, 0)]
    decode, drain = runner.stats.stages["normalize"], runner.stats.stages["drain"]
    assert decode.wall_s > 3 * drain.wall_s >= 0, (decode, drain)


def test_run_stats_merge_adds_up():
    one, two = RunStats(), RunStats()
    one.stages["normalize"] = StageStats(1.0, 0.5, 1, 10.0)
    two.stages["normalize"] = StageStats(2.0, 1.5, 2, 5.0)
    two.stages["scene_cut"] = StageStats(0.5, 0.25, 1, 5.0)
    one.merge(two)
    assert one.as_dict() == {
        "normalize": {"wall_s": 3.0, "cpu_s": 2.0, "items": 3, "video_s": 15.0},
        "scene_cut": {"wall_s": 0.5, "cpu_s": 0.25, "items": 1, "video_s": 5.0},
    }


# -- batched groups -------------------------------------------------------------------------------


@dataclass
class BatchLengths(Stage[CandidateClip, CandidateClip]):
    """Records the size of each batch it is given; marks each clip seen, rejects clips of odd length
    (their rows marked seen too, as the stage measured them), fails on a marked source (whole
    batches fail then, and the runner must find the item)."""

    name: ClassVar[str] = "batch_lengths"
    input_type: ClassVar[type] = CandidateClip

    def __post_init__(self):
        self.batches: list[int] = []

    def process(self, item: CandidateClip) -> CandidateClip | Rejected:
        if "explode" in item.source.uri:
            raise RuntimeError("boom")
        seen = dataclasses.replace(item, backends={**item.backends, "batch": "seen"})
        if item.num_frames % 2:
            return Rejected("odd", f"{item.num_frames} frames", measured=seen)
        return seen

    def process_batch(self, items: list[CandidateClip]) -> list[CandidateClip | Rejected]:
        self.batches.append(len(items))
        return [self.process(item) for item in items]


def _clip(uri: str, frames: int) -> CandidateClip:
    return CandidateClip.for_span(SourceVideo.from_uri(uri), 0, frames, 0)


def test_a_batched_chain_gives_each_stage_the_whole_batch_and_keeps_the_order():
    stage = BatchLengths()
    done = ChunkDone(SourceVideo.from_uri("a.mp4"), 0, 1, 2)
    earlier = _clip("c.mp4", 50).reject("no_face", "", "face")
    items = [_clip("a.mp4", 50), done, _clip("b.mp4", 51), earlier, _clip("d.mp4", 52)]
    out = ChainRunner([stage]).run_batch(items)
    assert stage.batches == [3]  # the chunk marker and the clip rejected earlier are not the stage's
    assert out[1] is done and out[3] is earlier
    assert [o.status for o in (out[0], out[2], out[4])] == [Status.PENDING, Status.REJECTED, Status.PENDING]
    assert (out[2].reason, out[2].rejected_by) == ("odd", "batch_lengths")
    assert out[0].backends["batch"] == out[2].backends["batch"] == "seen"
    assert items[0].backends == items[2].backends == {}  # the stage made new records


def test_a_rejected_row_is_the_record_as_the_stage_measured_it():
    clip = _clip("a.mp4", 51)
    (row,) = ChainRunner([BatchLengths()]).run(clip)
    assert (row.status, row.reason, row.backends) == (Status.REJECTED, "odd", {"batch": "seen"})
    assert (clip.status, clip.backends) == (Status.PENDING, {})


def test_a_failing_item_in_a_batch_becomes_one_error_row():
    stage = BatchLengths()
    runner = ChainRunner([stage])
    out = runner.run_batch([_clip("a.mp4", 50), _clip("explode.mp4", 50), _clip("b.mp4", 50)])
    assert [o.status for o in out] == [Status.PENDING, Status.REJECTED, Status.PENDING]
    assert out[1].reason == "error" and "boom" in out[1].reason_detail and out[1].rejected_by == "batch_lengths"
    assert runner.stats.stages["batch_lengths"].items == 3


def test_a_settling_stage_decides_each_chunk_once_its_clips_are_through(shots_video):
    """The clips wait until their chunk is exhausted, reach `settle` without their frames, and its
    rejections are rows that the chunk's ChunkDone counts."""
    settler = KeepsTheLongest()
    runner = ChainRunner([*clips(), settler])
    out = [
        o
        for chunk in ChainRunner(ingest(chunk_s=5.0)).run(SourceVideo.from_uri(str(shots_video.path)))
        for o in runner.run(chunk)
    ]
    assert_chunks_accounted(out)
    assert len(settler.seen) == 2  # one settle per chunk
    assert all(frames is None for chunk in settler.seen for _, frames in chunk)
    rows = [o for o in out if isinstance(o, CandidateClip)]
    for index in (0, 1):
        chunk = [r for r in rows if r.chunk_index == index]
        kept = [r for r in chunk if r.status is not Status.REJECTED]
        assert len(kept) == 1 and kept[0].num_frames == max(r.num_frames for r in chunk)
        assert all((r.reason, r.rejected_by) == ("not_longest", "longest") for r in chunk if r not in kept)
    assert len(rows) == sum(len(chunk) for chunk in settler.seen) >= 3
    assert runner.stats.stages["longest"].items == len(rows)
