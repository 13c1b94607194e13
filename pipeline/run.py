"""A whole curation run: discover inputs, process what is not done, publish manifest, index, report."""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from core.storage import OutputDir
from pipeline.config import RunConfig
from pipeline.executor import execute
from pipeline.inputs import discover
from pipeline.inspect import summarize
from pipeline.output import RunOutput, annotated, write_manifest_and_index
from pipeline.people import identify
from pipeline.report import REPORT, render_report

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


@dataclass
class RunResult:
    summary: dict[str, Any]
    stage_stats: dict[str, dict]
    sources_processed: int
    wall_s: float


def check_installed(config: RunConfig) -> None:
    """Refuse to start when a configured stage's model packages are not installed (the driver and
    the workers share one environment), instead of failing in the first worker."""
    missing = {
        name: [module for module in stage.required_modules() if importlib.util.find_spec(module) is None]
        for name, stage in config.stages.items()
    }
    missing = {name: modules for name, modules in missing.items() if modules}
    if missing:
        listed = "; ".join(f"{name}: {', '.join(modules)}" for name, modules in missing.items())
        raise ModelPackagesMissing(
            f"the configured stages need modules that are not installed ({listed}); install the model packages "
            "with scripts/setup.sh, or see the README's Installing"
        )


class ModelPackagesMissing(ValueError):
    pass


def run(inputs: list[str], out_uri: str, config: RunConfig, address: str | None = None) -> RunResult:
    started = time.perf_counter()
    check_installed(config)
    found = discover(inputs, config.inputs.source_paths)
    sources = found.sources
    if found.skipped:
        shown = "; ".join(f"{path} ({why})" for path, why in found.skipped[:10])
        more = f"; and {len(found.skipped) - 10} more (summary.json)" if len(found.skipped) > 10 else ""
        log.info("the input scan skipped %d files: %s%s", len(found.skipped), shown, more)
    out = OutputDir(out_uri, create=True)
    output = RunOutput(out, config.fingerprint())
    todo = sum(s.source_id not in output.done_sources for s in sources)
    log.info("%d sources, %d to process, output %s", len(sources), todo, out_uri)
    stats = execute(sources, output, config, address)
    table = output.records()
    identify(out, table)  # people first: the manifest shows every kept clip's identity_id
    table = annotated(out, table)
    index = output.index()
    write_manifest_and_index(out, table, index)
    summary = summarize(table, index)
    stage_stats = stats.as_dict()
    wall = time.perf_counter() - started
    skipped = [{"path": path, "reason": why} for path, why in found.skipped]
    out.write_atomic(REPORT, render_report(table, summary, stage_stats, skipped).encode())
    last_run = {"sources_processed": todo, "wall_s": wall, "stages": stage_stats, "skipped_inputs": skipped}
    out.write_atomic(SUMMARY, json.dumps({"summary": summary, "last_run": last_run}, indent=1).encode())
    return RunResult(summary, stage_stats, todo, wall)
