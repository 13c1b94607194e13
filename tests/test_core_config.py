"""core.config: the one parser, type check, builder and renderer of the pipeline's and the trainer's
configuration, on small dataclasses of its own."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

import pytest

from core.config import build, option, parse_value, read_table, render


@dataclass
class Window:
    """A window of frames."""

    frames: int = option(16, "Frames in the window.")
    scale: float = option(1.0, "Guidance scale.")


@dataclass
class Job:
    """A small job."""

    name: str = option("job", "What the job is called.")
    size: tuple[int, int] = option((64, 64), "(height, width).")
    buckets: tuple[tuple[int, int], ...] = option((), "More (height, width) targets.")
    threshold: float | None = option(None, "A threshold; unset: chosen for each clip.")
    tags: list[str] = option([], "Free labels.")
    extra: dict[str, int] = option({}, "Named counts.")
    window: Window = field(default_factory=Window)
    windows: list[Window] = field(default_factory=lambda: [Window(), Window(frames=8)])


@pytest.mark.parametrize(
    "raw, value",
    [("8", 8), ("2.5", 2.5), ("true", True), ('"x y"', "x y"), ("[1, 2]", [1, 2]), ("{a = 1}", {"a": 1})]
    + [(word, word) for word in ("content", "s3://bucket/run", "train.json", "null")],
)
def test_values_are_toml_else_plain_strings(raw, value):
    assert parse_value(raw) == value


def test_overrides_are_dotted_and_win_over_the_file(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('name = "a"\n[window]\nframes = 4\nscale = 2.0\n')
    table = read_table(path, ["window.frames = 8", "name=b", "windows=[{frames = 3}]"])
    assert table == {"name": "b", "window": {"frames": 8, "scale": 2.0}, "windows": [{"frames": 3}]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        read_table(None, ["window.frames"])
    with pytest.raises(ValueError, match="name is not a section"):
        read_table(path, ["name.first=x"])


def test_values_take_their_fields_types():
    job = build(
        Job,
        {
            "size": [32, 48],
            "buckets": [[48, 80]],
            "threshold": 2,  # an int where a float is expected is taken as a float
            "window": {"scale": 3},
            "windows": [{"frames": 4}],
        },
    )
    assert (job.size, job.buckets, job.threshold, job.window, job.windows) == (
        (32, 48),
        ((48, 80),),
        2.0,
        Window(16, 3.0),
        [Window(4, 1.0)],
    )
    assert isinstance(job.threshold, float) and isinstance(job.window.scale, float)
    assert build(Job, {"threshold": "null"}).threshold is None
    assert build(Job, {}) == Job()


@pytest.mark.parametrize(
    "table, message",
    [
        ({"name": 5}, r"name must be str, got 5"),
        ({"window": {"frames": 2.5}}, r"window.frames must be int, got 2.5"),
        ({"window": {"frames": True}}, r"window.frames must be int"),  # a bool is not an int here
        ({"threshold": "high"}, r"threshold must be float \| None, got 'high'"),
        ({"size": [1, 2, 3]}, r"size must be tuple\[int, int\]"),
        ({"buckets": [[1, "x"]]}, r"buckets\[0\]\[1\] must be int"),
        ({"tags": "a"}, r"tags must be list\[str\]"),
        ({"windows": [{}, {"scale": "x"}]}, r"windows\[1\].scale must be float, got 'x'"),
        ({"window": 3}, r"window must be Window, got 3"),
    ],
)
def test_a_wrong_type_names_the_key_and_the_expected_type(table, message):
    with pytest.raises(ValueError, match=message):
        build(Job, table)


def test_unknown_keys_name_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown option 'window.frame'; window has: frames, scale"):
        build(Job, {"window": {"frame": 4}})
    with pytest.raises(KeyError, match=r"unknown options 'windows\[0\].a', 'windows\[0\].b'; windows\[0\] has"):
        build(Job, {"windows": [{"a": 1, "b": 2}]})
    with pytest.raises(KeyError, match=r"unknown option 'nme'; the top level has: name, size"):
        build(Job, {"nme": "x"})


def test_rendered_toml_is_documented_and_reads_back():
    job = Job(extra={"a": 1, "b c": 2}, tags=['say "hi"'], window=Window(scale=1.5))
    text = render(job, "A job.\nSecond line.")
    assert text.startswith("# A job.\n# Second line.\n\n# What the job is called.\nname = ")
    assert "# A threshold; unset: chosen for each clip.\n# threshold = (unset)\n" in text
    assert "[window]  # A window of frames.\n# Frames in the window.\nframes = 16\n" in text
    assert text.count("[[windows]]  # A window of frames.") == 2
    assert build(Job, tomllib.loads(text)) == job
    assert build(Job, tomllib.loads(render(Job(threshold=0.5)))).threshold == 0.5
