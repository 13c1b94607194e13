"""Imports go one way: schemas/ (the records) under core/ (config convention, storage, media I/O),
both under stages/ (plain-Python stages), all three under evaluate/ (scoring videos with the
stages' models), all four under train/ and pipeline/; pipeline/ (Ray, the CLI) may use all of them
and nothing imports pipeline/. Checked over every import statement, module level or not."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("schemas", "core", "stages", "evaluate", "train", "pipeline")
MAY_IMPORT = {
    "schemas": {"schemas"},
    "core": {"schemas", "core"},
    "stages": {"schemas", "core", "stages"},
    "evaluate": {"schemas", "core", "stages", "evaluate"},
    "train": {"schemas", "core", "stages", "evaluate", "train"},
    "pipeline": {"schemas", "core", "stages", "evaluate", "train", "pipeline"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(project package, line) of every import in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update((name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES)
    return found


def test_imports_go_one_way():
    crossing = [
        f"{path.relative_to(ROOT)}:{line} imports {package}"
        for layer in PACKAGES
        for path in sorted((ROOT / layer).rglob("*.py"))
        for package, line in sorted(imported_packages(path))
        if package not in MAY_IMPORT[layer]
    ]
    assert not crossing, crossing


def test_the_check_sees_a_crossing(tmp_path):
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def late():\n    from pipeline.run import run\n    import stages.face, numpy\n")
    assert imported_packages(wrong) == {("pipeline", 2), ("stages", 3)}
