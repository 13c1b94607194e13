"""RunConfig: the documented defaults round-trip, overrides are typed and checked."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ExecutionConfig, RunConfig, render_defaults
from pipeline.definition import ALL_STAGES

DEFAULT_TOML = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def test_rendered_defaults_load_back_to_the_defaults(tmp_path):
    path = tmp_path / "defaults.toml"
    path.write_text(render_defaults())
    loaded = RunConfig.load(str(path))
    assert loaded == RunConfig()
    assert loaded.stages["scene_cut"].threshold is None  # commented out when unset, so it reads back as None


def test_rendered_defaults_document_every_option():
    text = render_defaults()
    data = tomllib.loads(text)
    config = RunConfig()
    assert list(data) == list(config.sections()) == ["inputs", *(cls.name for cls in ALL_STAGES), "shards", "execution"]
    for name, section in config.sections().items():
        unset = [spec.name for spec in dataclasses.fields(section) if getattr(section, spec.name) is None]
        assert list(data[name]) == [spec.name for spec in dataclasses.fields(section) if spec.name not in unset]
        for spec in dataclasses.fields(section):
            assert spec.metadata.get("doc"), f"{name}.{spec.name} has no doc"
            shown = f"# {spec.name} = (unset)" if spec.name in unset else f"{spec.name} = "
            assert f"# {spec.metadata['doc']}\n{shown}" in text


def test_committed_default_toml_matches_the_cli_output(capsys):
    assert main(["config"]) == 0
    printed = capsys.readouterr().out
    committed = DEFAULT_TOML.read_text()
    assert committed == printed, (
        "configs/default.toml is stale: regenerate it with `talkcurate config > configs/default.toml`"
    )
    assert committed.rstrip("\n") == render_defaults().rstrip("\n")
    assert RunConfig.load(str(DEFAULT_TOML)) == RunConfig()


def test_set_overrides_parse_toml_values():
    config = RunConfig.load(
        overrides=[
            "scene_cut.max_clip_s=8",  # an int where a float is expected is taken as a float
            "scene_cut.detector=content",  # a bare word is a string
            'normalize.preset="ultrafast"',
            "normalize.strict_decoding=false",
            "scene_cut.threshold=27.5",
            "execution.num_cpus = 4",
        ]
    )
    scene_cut, normalize = config.stages["scene_cut"], config.stages["normalize"]
    assert scene_cut.max_clip_s == 8.0 and isinstance(scene_cut.max_clip_s, float)
    assert (scene_cut.detector, scene_cut.threshold) == ("content", 27.5)
    assert (normalize.preset, normalize.strict_decoding) == ("ultrafast", False)
    assert config.execution.num_cpus == 4
    assert (
        RunConfig.load(overrides=["scene_cut.threshold=27.5", "scene_cut.threshold=null"]).stages["scene_cut"].threshold
        is None
    )


def test_set_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[scene_cut]\nmax_clip_s = 6.0\nmin_clip_s = 3.0\n[normalize]\ncrf = 23\n")
    config = RunConfig.load(str(path), ["scene_cut.max_clip_s=5"])
    assert (config.stages["scene_cut"].min_clip_s, config.stages["scene_cut"].max_clip_s) == (3.0, 5.0)
    assert config.stages["normalize"].crf == 23
    assert config.stages["probe"] == RunConfig().stages["probe"]  # the rest stays default


def test_unknown_sections_and_keys_are_rejected_by_name():
    with pytest.raises(KeyError, match=r"unknown config section 'scenecut'.*scene_cut"):
        RunConfig.load(overrides=["scenecut.max_clip_s=5"])
    with pytest.raises(KeyError, match=r"unknown option 'scene_cut.max_clip'.*max_clip_s"):
        RunConfig.load(overrides=["scene_cut.max_clip=5"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        RunConfig.load(overrides=["scene_cut.max_clip_s"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("normalize.crf=2.5", r"normalize.crf must be int, got 2.5"),
        ("normalize.crf=true", r"normalize.crf must be int"),  # a bool is not an int here
        ("scene_cut.max_clip_s=long", r"scene_cut.max_clip_s must be float, got 'long'"),
        ("execution.progress=1", r"execution.progress must be bool"),
        ("normalize.preset=5", r"normalize.preset must be str"),
        ("scene_cut.threshold=high", r"scene_cut.threshold must be float \| None"),
    ],
)
def test_wrong_types_are_rejected_with_the_option_named(override, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.load(overrides=[override])


def test_file_with_wrong_shape_or_values_is_rejected(tmp_path):
    loose = tmp_path / "loose.toml"
    loose.write_text("max_clip_s = 5\n")
    with pytest.raises(ValueError, match=r"top-level key 'max_clip_s' must be a \[section\]"):
        RunConfig.load(str(loose))
    typed = tmp_path / "typed.toml"
    typed.write_text('[probe]\nmin_duration_s = "long"\n')
    with pytest.raises(ValueError, match="probe.min_duration_s must be float"):
        RunConfig.load(str(typed))


def test_load_validates_every_stage():
    with pytest.raises(ValueError, match="detector"):
        RunConfig.load(overrides=["scene_cut.detector=sift"])
    with pytest.raises(ValueError, match="min_clip_s <= max_clip_s"):
        RunConfig.load(overrides=["scene_cut.min_clip_s=12"])
    with pytest.raises(ValueError, match="target_shard_mb"):
        RunConfig.load(overrides=["shards.target_shard_mb=0"])


def test_fingerprint_ignores_execution_settings_only():
    base = RunConfig().fingerprint()
    assert ExecutionConfig.name not in base and base["schema_version"]
    assert RunConfig.load(overrides=["execution.num_cpus=3", "execution.progress=false"]).fingerprint() == base
    changed = RunConfig.load(overrides=["scene_cut.max_clip_s=4"]).fingerprint()
    assert changed != base and changed["scene_cut"]["max_clip_s"] == 4.0
    shards = RunConfig.load(overrides=["shards.max_samples_per_shard=3"]).fingerprint()
    assert shards != base and shards["shards"]["max_samples_per_shard"] == 3
