"""Long benchmark inputs made from the real demo clips: hard cuts, 25 fps, any length and size.

One cycle of shots (each GRID speaker for 3 s, then the LatentSync portrait for 10 s, so every
join is a real cut) is re-encoded once at the wanted size; longer inputs repeat that cycle by
stream copy (ffmpeg's concat demuxer), so a 10-minute 1080p input costs one 52 s encode.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_media():
    """tests/media.py by path (tests/ is not a package), for its demo clips and concat_shots."""
    spec = importlib.util.spec_from_file_location("talkcurate_test_media", ROOT / "tests" / "media.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_long_input(folder: Path, minutes: float, size: tuple[int, int] = (640, 360)) -> Path:
    """An input of about `minutes` in `folder` (created): the demo clips at `size`, hard cuts."""
    media = test_media()
    folder.mkdir(parents=True)
    shots = []
    for grid in media.GRID:
        shots += [(grid, 3.0), (media.PORTRAIT, 10.0)]
    cycle = folder.parent / f"{folder.name}-cycle.mp4"
    media.concat_shots(cycle, shots, size=size)
    cycle_s = sum(seconds for _, seconds in shots)
    entries, left = [], minutes * 60
    while left > 1e-6:
        entries.append(f"file '{cycle.name}'" + (f"\noutpoint {left:.3f}" if left < cycle_s else ""))
        left -= cycle_s
    playlist = cycle.with_suffix(".txt")
    playlist.write_text("\n".join(entries) + "\n")
    out = folder / f"long-{minutes:g}min-{size[1]}p.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(playlist),
            "-c",
            "copy",
            str(out),
        ],
        check=True,
    )
    cycle.unlink()
    playlist.unlink()
    return out
