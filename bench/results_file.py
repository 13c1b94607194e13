"""Where a benchmark script writes its numbers: the file the user names, else a timestamped JSON
file in bench/results/."""

from __future__ import annotations

import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(results: dict, name: str, out: Path | None = None) -> Path:
    """`results` as JSON in `out`, or bench/results/NAME-<timestamp>.json; says where."""
    out = out or RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {out}")
    return out
