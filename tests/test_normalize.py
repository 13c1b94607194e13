"""NormalizeStage (and the clip encoder behind SceneCutStage): 25 fps grid, upright, even sizes,
16 kHz mono audio placed by timestamps, chunks that line up exactly."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import media
import numpy as np
import pytest

from schemas.records import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, ProbedSource, SourceVideo, Status
from stages.chunk import ChunkStage
from stages.normalize import NormalizedChunk, NormalizeStage, output_size
from stages.probe import ProbeStage


def probed(path: Path | str) -> ProbedSource:
    result = ProbeStage().process(SourceVideo.from_uri(str(path)))
    assert isinstance(result, ProbedSource), result
    return result


def normalized(path: Path | str, chunk_s: float = 0.0, **options) -> list[NormalizedChunk]:
    return [NormalizeStage(**options).process(chunk) for chunk in ChunkStage(chunk_s=chunk_s).process(probed(path))]


def decode(chunk: NormalizedChunk, format: str = "gray") -> dict[int, np.ndarray]:
    """Every frame of the chunk by grid index, as `format` ("yuv420p": the planes as they are)."""
    frames: dict[int, np.ndarray] = {}
    for frame in chunk.frames():
        assert frame.index not in frames, f"frame {frame.index} twice"
        frames[frame.index] = frame.picture.to_ndarray(format=format)
    return frames


def decode_whole(path: Path | str, **options) -> tuple[dict[int, np.ndarray], NormalizedChunk]:
    (chunk,) = normalized(path, **options)
    return decode(chunk), chunk


def audio_lag(reference: np.ndarray, shifted: np.ndarray) -> int:
    """Samples by which `shifted` lags `reference`, from the peak of their cross-correlation."""
    n = len(reference) + len(shifted)
    spectrum = np.fft.rfft(shifted.astype(np.float64), n) * np.conj(np.fft.rfft(reference.astype(np.float64), n))
    correlation = np.fft.irfft(spectrum, n)
    lag = int(np.argmax(correlation))
    return lag if lag < len(shifted) else lag - n


# -- frame grid --------------------------------------------------------------------------------


def test_output_size_keeps_aspect_and_evenness():
    assert output_size(1080, 1920, 720) == (720, 1280)
    assert output_size(1920, 1080, 720) == (1280, 720)
    assert output_size(360, 288, 720) == (360, 288)  # never scaled up
    assert output_size(357, 285, 0) == (356, 284)
    for width, height, limit in [(1001, 777, 500), (641, 479, 0), (3, 3, 2)]:
        w, h = output_size(width, height, limit)
        assert w % 2 == 0 and h % 2 == 0 and w >= 2 and h >= 2
        if limit:
            assert min(w, h) <= limit


def test_constant_25fps_source_keeps_every_frame():
    frames, chunk = decode_whole(media.GRID[0])
    assert sorted(frames) == list(range(75))
    assert chunk.frames_out == 75 and not chunk.error_frames


def test_ntsc_rate_is_resampled_to_the_25fps_grid(ntsc_video, shots_video):
    info = probed(ntsc_video)
    assert info.probe.fps != pytest.approx(FPS, abs=1)  # the premise: not 25 fps
    frames, _ = decode_whole(ntsc_video)
    assert sorted(frames) == list(range(round(info.probe.duration_s * FPS)))
    # Picked by time, not by count: the shot cuts stay at their 25 fps frame.
    for cut in shots_video.cuts:
        before, at = frames[cut - 1].astype(int), frames[cut].astype(int)
        inside = np.abs(frames[cut + 2].astype(int) - at).mean()
        assert np.abs(at - before).mean() > 4 * inside, f"cut at {cut} moved"


def test_variable_frame_rate_gives_75_frames_on_the_grid(vfr_video):
    frames, _ = decode_whole(vfr_video)
    assert sorted(frames) == list(range(75))


def test_rotated_source_comes_out_upright(rotated_video):
    with av.open(str(rotated_video)) as container:
        stored = next(container.decode(video=0)).to_ndarray(format="gray")
    upright, _ = decode_whole(rotated_video)
    reference, _ = decode_whole(media.GRID[0])
    assert stored.shape == (360, 288)  # on its side as stored
    assert upright[40].shape == reference[40].shape == (288, 360)
    difference = np.abs(upright[40].astype(int) - reference[40]).mean()
    upside_down = np.abs(np.rot90(upright[40], 2).astype(int) - reference[40]).mean()
    assert difference < 6, difference  # x264 on the way, so not exact
    assert upside_down > 4 * difference


def test_odd_size_comes_out_even(odd_video):
    frames, chunk = decode_whole(odd_video)
    assert (chunk.width, chunk.height) == (356, 284)
    assert all(frame.shape == (284, 356) for frame in frames.values())


def test_portrait_is_scaled_to_720x1280_and_encoded_as_h264(portrait_clips):
    kept = [clip for clip in portrait_clips.rows if clip.status is not Status.REJECTED]
    assert kept
    for clip in kept:
        assert (clip.video.width, clip.video.height) == (720, 1280)
        with av.open(io.BytesIO(clip.video.mp4)) as container:
            assert not container.streams.audio
            (stream,) = container.streams.video
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == FPS
            pictures = list(container.decode(stream))
        assert len(pictures) == clip.num_frames == clip.video.num_frames
        assert (pictures[0].width, pictures[0].height) == (720, 1280)


def test_max_short_side_zero_keeps_the_input_size():
    (chunk,) = normalized(media.GRID[0], max_short_side=0)
    assert (chunk.width, chunk.height) == (360, 288)
    (small,) = normalized(media.GRID[0], max_short_side=144)
    assert (small.width, small.height) == (180, 144)
    assert next(small.frames()).picture.height == 144


def test_a_normalized_chunk_is_single_use_and_stays_in_its_worker():
    (chunk,) = normalized(media.GRID[0])
    with pytest.raises(TypeError):
        pickle.dumps(chunk)
    decode(chunk)
    with pytest.raises(RuntimeError):
        next(chunk.frames())


def test_detector_frames_have_the_requested_width():
    (chunk,) = normalized(media.GRID[0])
    frame = next(chunk.frames(small_width=128))
    assert frame.small.shape == (102, 128, 3) and frame.small.dtype == np.uint8


# -- audio -------------------------------------------------------------------------------------


def test_audio_is_16khz_mono_int16_with_640_samples_a_frame(portrait_clips):
    assert SAMPLES_PER_FRAME == SAMPLE_RATE // FPS == 640
    kept = [clip for clip in portrait_clips.rows if clip.status is not Status.REJECTED]
    for clip in kept:
        assert clip.audio.dtype == np.int16 and clip.audio.ndim == 1
        assert len(clip.audio) == clip.num_frames * 640
        assert np.abs(clip.audio).max() > 1000  # the speech is there, not silence


def test_audio_spans_match_frame_spans():
    (chunk,) = normalized(media.GRID[0])
    decode(chunk)
    whole, coverage = chunk.audio(0, 75)
    part, _ = chunk.audio(10, 20)
    assert len(whole) == 75 * 640 and len(part) == 10 * 640
    assert np.array_equal(part, whole[10 * 640 : 20 * 640])
    info = probed(media.GRID[0]).probe
    assert coverage == pytest.approx(info.audio_duration_s / info.duration_s, abs=0.005)  # the MP2 ends a little early
    assert chunk.audio(0, 75)[0].dtype == np.int16


def test_audio_follows_its_timestamps(delayed_audio_video):
    (reference,) = normalized(media.GRID[0])
    (delayed,) = normalized(delayed_audio_video.path)
    decode(reference), decode(delayed)
    info = probed(delayed_audio_video.path).probe
    assert info.audio_start_s - info.video_start_s == pytest.approx(
        delayed_audio_video.delay_s, abs=1e-3
    )  # the premise
    lag = audio_lag(reference.audio(0, 75)[0], delayed.audio(0, 75)[0])
    assert abs(lag - delayed_audio_video.delay_s * SAMPLE_RATE) <= SAMPLE_RATE // 1000, lag  # within 1 ms
    # Nothing is invented before the stream starts, and that stretch does not count as covered.
    head, head_coverage = delayed.audio(0, 5)
    assert not head.any() and head_coverage == 0


def test_aac_priming_is_not_audio(tmp_path):
    """AAC starts with encoder priming (its first packet is stamped before the video): the same
    sound in AAC and in the original MP2 must land on the same samples."""
    aac = tmp_path / "aac.mp4"
    media.mp4(media.GRID[0], aac)
    assert probed(aac).probe.audio_start_s < -0.01  # the premise: a primed stream
    (reference,) = normalized(media.GRID[0])
    (primed,) = normalized(aac)
    decode(reference), decode(primed)
    lag = audio_lag(reference.audio(0, 75)[0], primed.audio(0, 75)[0])
    assert abs(lag) <= SAMPLE_RATE // 1000, lag


def test_audio_layout_change_mid_stream_is_followed(tmp_path):
    """A recording spliced from a stereo and a mono part: the resampler must follow the change."""
    path = tmp_path / "spliced.ts"
    media.spliced_layouts(path)
    with av.open(str(path)) as container:  # the premise: the layout really changes
        layouts = {frame.layout.name for frame in container.decode(audio=0)}
    assert layouts == {"stereo", "mono"}
    (chunk,) = normalized(path)
    frames = decode(chunk)
    audio, coverage = chunk.audio(0, max(frames) + 1)
    assert coverage > 0.95
    half = len(audio) // 2
    assert np.abs(audio[:half]).max() > 1000 and np.abs(audio[half:]).max() > 1000


def test_coarse_timestamps_do_not_cut_the_audio(tmp_path):
    """PCM in Matroska: packets stamped to the millisecond, so the resampled frames' timestamps
    wander up to about a millisecond from where the previous frame ended. The audio is still one
    continuous recording: sample for sample what decoding it straight through gives."""
    path = tmp_path / "pcm.mkv"
    media.audio_shifted(media.GRID[0], path, 0)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].time_base == Fraction(1, 1000)  # the premise: coarser than a sample
    (chunk,) = normalized(path)
    decode(chunk)
    audio, _ = chunk.audio(0, 75)
    straight = media.decoded_audio(path)[: len(audio)]
    np.testing.assert_array_equal(audio[: len(straight)], straight)


# -- chunks ------------------------------------------------------------------------------------


def test_two_chunks_decode_exactly_what_one_does(shots_video):
    """Each chunk decodes its span and the detector's lead and reach around it (stages/chunk.py):
    the second from 2 s before its start, the first on to the end of the cut search (here past the
    source's end). Where both decode a frame, the pictures and the audio are the same."""
    (single,) = normalized(shots_video.path)
    halves = normalized(shots_video.path, chunk_s=5.0)
    assert [(c.chunk.start_frame, c.chunk.end_frame) for c in halves] == [(0, 125), (125, 250)]
    assert [(c.chunk.decode_start_frame, c.chunk.decode_end_frame) for c in halves] == [(0, 125 + 250 + 50), (75, None)]
    whole = decode(single, "yuv420p")
    parts = [decode(half, "yuv420p") for half in halves]
    assert sorted(parts[0]) == list(range(0, 250)) and sorted(parts[1]) == list(range(75, 250))
    assert sorted(whole) == list(range(250))
    # Same decoder, same filters, started from a key frame: the pictures must be identical.
    for part in parts:
        for index, picture in part.items():
            assert np.array_equal(picture, whole[index]), f"frame {index} differs"
    # The audio of each chunk is the same stretch of the single decode.
    for half in halves:
        start, end = half.chunk.decode_start_frame, 250
        assert np.array_equal(half.audio(start, end)[0], single.audio(start, end)[0])


def test_a_chunk_stopped_at_its_boundary_decodes_no_further_video_but_its_audio(shots_video):
    first, _ = normalized(shots_video.path, chunk_s=5.0)
    frames = first.frames()
    for frame in frames:
        if frame.index == 100:
            first.stop_at(110, 130)
    assert frame.index == 109  # the frames already in flight up to the new end, then none
    assert first.audio_end_frame >= 130 and first.audio(110, 130)[1] == 1.0


_SEEK_AND_FREE = """
import sys
from schemas.records import SourceVideo
from stages.chunk import ChunkStage
from stages.normalize import NormalizeStage
from stages.probe import ProbeStage

probed = ProbeStage().process(SourceVideo.from_uri(sys.argv[1]))
first = next(ChunkStage(chunk_s=5.0).process(probed))
for _ in range(int(sys.argv[2])):
    for frame in NormalizeStage().process(first).frames():
        pass
"""


def test_stopping_threaded_decoding_early_does_not_deadlock(shots_video):
    """A chunk that is not the last stops decoding mid-stream and frees its threaded H.264 decoder
    with frames in flight; the decoder threads log errors then. With FFmpeg's log lines routed
    through Python (which needs the GIL the freeing thread holds) this hung within a few runs."""
    try:
        subprocess.run([sys.executable, "-c", _SEEK_AND_FREE, str(shots_video.path), "25"], check=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("freeing a decoder stopped mid-stream hung (FFmpeg log callback vs. decoder threads)")
