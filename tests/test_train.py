"""The trainer end to end: real shards from a real curation run of the demo media, `torchrun --nproc_per_node 2 -m
train` on CPU (gloo, FSDP2), the loss falling, parameters sharded, checkpoints written, and a run
stopped and resumed giving bit-identical losses on the same samples as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
COMMON = ["data.num_workers=1", "data.num_frames=8", "metrics.every=1", "batch_size=2"]


@pytest.fixture(scope="module")
def shards(demo_shards) -> Path:
    """The demo media curated with their Whisper features stored (tests/conftest.py)."""
    return demo_shards


def train(out: Path, shards: Path, *overrides: str, nproc: int = 2) -> list[dict]:
    """One `torchrun --nproc_per_node N -m train` launch; the metrics it appended."""
    before = len(metrics(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            str(nproc),
            "-m",
            "train",
            f"data.shards={shards}",
            f"out={out}",
            *COMMON,
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return metrics(out)[before:]


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_ranks_train_the_tiny_preset_and_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    records = train(
        out,
        shards,
        "curriculum=[{name='short', steps=12, num_frames=4, lr=0.002}, {name='long', steps=12, lr=0.002}]",
        "parallel.activation_checkpointing=true",
    )
    assert [r["step"] for r in records] == list(range(1, 25))
    assert [r["stage"] for r in records] == ["short"] * 12 + ["long"] * 12
    losses = [r["loss"] for r in records]
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses
    for r in records:
        assert r["params_local"] < 0.6 * r["params"]  # each of the two ranks holds about half
        assert {r["background_loss"] is not None, r["face_loss"] is not None} == {True}
        assert r["samples_per_s"] > 0 and r["tokens_per_s"] > 0
    assert (out / "checkpoints" / "step-24" / ".metadata").is_file()
    assert sorted(p.name for p in (out / "checkpoints" / "step-24").glob("rank-*.pt")) == ["rank-0.pt", "rank-1.pt"]
    assert len(list((out / "checkpoints" / "step-24").glob("*.distcp"))) == 2
    assert "[[curriculum]]" in (out / "config.toml").read_text()


def test_a_stopped_and_resumed_run_repeats_the_uninterrupted_one(shards, tmp_path):
    # The last step (10) is a checkpoint step: the run ends on it without saving it twice.
    plan = ["curriculum=[{steps=5, num_frames=4, lr=0.002}, {steps=5, lr=0.002}]", "checkpoint.every=5"]
    whole = train(tmp_path / "whole", shards, *plan)
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == ["step-10", "step-5"]
    first = train(tmp_path / "split", shards, *plan, "stop_after=7")
    second = train(tmp_path / "split", shards, *plan)
    assert [r["step"] for r in first] == list(range(1, 8)) and [r["step"] for r in second] == list(range(8, 11))
    assert [(r["loss"], r["keys"]) for r in first + second] == [(r["loss"], r["keys"]) for r in whole]


@pytest.mark.gpu
def test_the_trainer_on_a_gpu_uses_nccl_and_bf16(shards, tmp_path):
    """On CUDA the trainer takes NCCL (which reduces device tensors only) and bf16 parameters."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "run"
    records = train(out, shards, "curriculum=[{steps=6, lr=0.002}]", nproc=1)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(r["max_cuda_mb"] > 0 and r["loss"] == r["loss"] for r in records)
    assert (out / "checkpoints" / "step-6" / ".metadata").is_file()


def test_tensorboard_without_its_package_is_a_clear_error(tmp_path):
    from train.trainer import _tensorboard_writer

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="metrics.tensorboard needs the tensorboard package"):
            _tensorboard_writer(tmp_path / "tb")
    else:
        writer = _tensorboard_writer(tmp_path / "tb")
        writer.add_scalar("loss", 1.0, 1)
        writer.close()
        assert list((tmp_path / "tb").iterdir())


@pytest.mark.parametrize("name", ["train-tiny.toml", "train-wan-1.3b.toml"])
def test_the_shipped_training_configs_load_and_render_back(name, tmp_path):
    from core.config import render
    from train.config import load_config

    config = load_config(ROOT / "configs" / name)
    assert config.total_steps > 0 and len(config.curriculum) > 1
    rendered = tmp_path / "rendered.toml"
    rendered.write_text(render(config))
    assert load_config(rendered) == config


def test_printed_config_is_documented_and_loads_back_to_the_defaults(tmp_path, capsys):
    from train.__main__ import main
    from train.config import JobConfig, load_config

    assert main(["--print-config"]) == 0
    printed = capsys.readouterr().out
    assert (
        "[loss]  # Flow-matching time sampling" in printed and "[[curriculum]]  # A stage of the curriculum" in printed
    )
    assert "# Loss weight of a face pixel outside the lips.\nface_weight = 2.0\n" in printed
    path = tmp_path / "printed.toml"
    path.write_text(printed)
    assert load_config(path) == JobConfig()


def test_overrides_reach_nested_options_and_unknown_ones_are_refused():
    from train.config import load_config

    config = load_config(
        None, ["data.resolution=[32, 48]", "loss.face_weight=4", "curriculum=[{steps=3, trainable='audio'}]"]
    )
    assert (
        config.data.resolution == (32, 48)
        and config.loss.face_weight == 4
        and config.curriculum[0].trainable == "audio"
    )
    with pytest.raises(KeyError, match="loss.face_wieght"):
        load_config(None, ["loss.face_wieght=4"])
