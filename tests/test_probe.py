"""ProbeStage on real media: every broken kind gets its reason, readable inputs get correct facts."""

from __future__ import annotations

from pathlib import Path

import av
import media
import pytest

from schemas.records import ProbedSource, Rejected, SourceVideo
from stages.probe import ProbeStage


def probe(path: Path | str) -> ProbedSource | Rejected:
    return ProbeStage().process(SourceVideo.from_uri(str(path)))


def probed(path: Path | str) -> ProbedSource:
    result = probe(path)
    assert isinstance(result, ProbedSource), f"{path}: {result}"
    return result


@pytest.mark.parametrize("name", sorted(media.BROKEN))
def test_broken_inputs_get_their_reason(broken_media, name):
    folder, expected = broken_media
    result = probe(folder / name)
    if expected[name] is None:
        assert isinstance(result, ProbedSource), result
    else:
        assert isinstance(result, Rejected), result
        assert result.reason == expected[name], result.detail
        assert result.detail  # a human explanation, not just the code


def test_duration_from_packets_when_the_container_declares_none(broken_media):
    folder, _ = broken_media
    path = folder / "no duration.mkv"
    with av.open(str(path)) as container:  # the premise: nothing declared in the header
        assert container.duration is None and container.streams.video[0].duration is None
    info = probed(path).probe
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.num_video_packets == 75
    assert (info.video_codec, info.audio_codec) == ("h264", "opus")


def test_missing_and_zero_byte_files_are_unreadable(tmp_path):
    missing = probe(tmp_path / "not there.mp4")
    assert isinstance(missing, Rejected) and missing.reason == "unreadable"
    empty = tmp_path / "empty.mpg"
    empty.write_bytes(b"")
    zero = probe(empty)
    assert isinstance(zero, Rejected) and zero.reason == "unreadable" and "zero-byte" in zero.detail


def test_hostile_names_probe_fine(hostile_media, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a shell would run `touch pwned`
    for path in hostile_media:
        result = probed(path)
        assert result.source.uri == str(path)
        assert result.probe.duration_s == pytest.approx(3.0, abs=0.05)
    assert not list(tmp_path.iterdir())


def test_relative_hostile_name_is_not_an_option_or_protocol(hostile_media, monkeypatch):
    """A bare relative name starting with '-' must be read as a file name."""
    dash = next(p for p in hostile_media if p.name.startswith("-"))
    monkeypatch.chdir(dash.parent)
    assert probed(dash.name).probe.num_video_packets == 75


def test_grid_is_mpeg1_360x288_constant_25fps():
    for path in media.GRID:
        info = probed(path).probe
        assert (info.video_codec, info.audio_codec) == ("mpeg1video", "mp2")
        assert (info.width, info.height, info.rotation) == (360, 288, 0)
        assert info.fps == pytest.approx(25.0)
        assert not info.variable_frame_rate
        assert info.duration_s == pytest.approx(3.0, abs=0.05)


def test_portrait_is_hevc_1080x1920_25fps_with_primed_aac():
    info = probed(media.PORTRAIT).probe
    assert (info.video_codec, info.audio_codec) == ("hevc", "aac")
    assert (info.width, info.height, info.rotation) == (1080, 1920, 0)
    assert info.fps == pytest.approx(25.0)
    assert not info.variable_frame_rate
    assert info.duration_s == pytest.approx(10.0, abs=0.05)
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)
    assert info.audio_start_s < 0  # AAC priming: the first packet starts before the video


def test_no_audio_stream_is_rejected():
    result = probe(media.NO_AUDIO)
    assert isinstance(result, Rejected) and result.reason == "no_audio"


def test_rotation_is_detected_and_display_size_swapped(rotated_video):
    with av.open(str(rotated_video)) as container:
        stored = container.streams.video[0].codec_context
        stored_size = (stored.width, stored.height)
    assert stored_size == (288, 360)  # the premise: stored on its side
    info = probed(rotated_video).probe
    assert info.rotation == 90
    assert (info.width, info.height) == (360, 288)


def test_variable_frame_rate_is_detected(vfr_video):
    info = probed(vfr_video).probe
    assert info.variable_frame_rate
    assert info.fps == pytest.approx(25.0, abs=0.5)  # the average is still about 25
    assert not probed(media.GRID[0]).probe.variable_frame_rate


def test_ntsc_rate_is_constant_29_97(ntsc_video):
    info = probed(ntsc_video).probe
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-4)
    assert not info.variable_frame_rate


def test_audio_outlasting_the_video_is_not_truncation(late_audio_video):
    """The container's duration spans the audio too: a 3 s video with audio to 5 s is complete."""
    with av.open(str(late_audio_video.path)) as container:  # the premise
        assert container.duration / av.time_base > 4.5
    info = probed(late_audio_video.path).probe
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.audio_start_s - info.video_start_s == pytest.approx(late_audio_video.delay_s, abs=1e-3)


def test_odd_size_is_reported_as_is(odd_video):
    info = probed(odd_video).probe
    assert (info.width, info.height) == (357, 285)


def test_too_short_input_is_rejected(tmp_path):
    short = tmp_path / "short.mp4"
    media.ffmpeg("-i", media.GRID[0], "-t", "0.3", *media.H264, *media.AAC, short)
    result = probe(short)
    assert isinstance(result, Rejected) and result.reason == "too_short"
    assert isinstance(ProbeStage(min_duration_s=0.1).process(SourceVideo.from_uri(str(short))), ProbedSource)
