"""`talkcurate browse`: a static HTML page to look through a run's samples.

The page (`browse_page.html`, plain HTML, CSS and JavaScript, nothing from the network) shows
every manifest row as a card: kept samples with a thumbnail, rejected rows with their reason.
Filters select by status, reason, person (the run's `identity_id`) and a score range; a strip
shows each person's face with their clips and seconds, and picks that person on a click. A card
opens the sample: its frame with the face and lip masks tinted, the clip with its audio,
transcript (with word times), caption and every column of the manifest.

Kept samples are read from their shards one shard at a time, one sample's members at a time.
Per sample the site gets a thumbnail, a face crop and an overlay (JPEGs of the middle frame) and a preview:
the sample's H.264 packets copied unchanged next to its WAV encoded as AAC, in one mp4 a browser
plays with sound. At most `limit` kept samples and `limit` rejected rows go on the page, which
says so when the run has more.

The manifest's strings reach the page only as JSON inside a `<script type="application/json">`
with `<`, `>` and `&` escaped, and the page puts them into the DOM with `textContent`, so a
transcript or file name holding HTML shows as text. Media files are named by position, never
by anything read from the manifest.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.storage import OutputDir
from pipeline.inspect import load
from schemas.face import decode_face_npz, face_and_lip_masks
from schemas.manifest import MEMBER_AUDIO, MEMBER_CAPTION, MEMBER_FACE, MEMBER_META, MEMBER_VIDEO

log = logging.getLogger(__name__)

PAGE_TEMPLATE = Path(__file__).with_name("browse_page.html")
PAGE = "index.html"
MEDIA_FOLDER = "media"
DATA_MARKER = "__TALKCURATE_BROWSE_DATA__"
DATA_ELEMENT = 'id="browse-data"'  # how an earlier page is recognized
DEFAULT_LIMIT = 200
REQUIRED_COLUMNS = ("key", "source", "status", "start_s", "end_s", "shard", "reason")
THUMB_SIDE = 320  # long side of a card's thumbnail, px
FACE_SIDE = 96  # long side of a person's face in the people strip, px
OVERLAY_SIDE = 640  # long side of the detail view's mask overlay, px
FACE_TINT = (0, 190, 255)  # RGB: the face mask
LIP_TINT = (255, 40, 150)  # RGB: the lip mask, drawn over the face's
FACE_ALPHA, LIP_ALPHA = 0.35, 0.55
PREVIEW_AUDIO_BITRATE = 64000
BROWSED_MEMBERS = (MEMBER_VIDEO, MEMBER_AUDIO, MEMBER_META, MEMBER_CAPTION, MEMBER_FACE)

# What a damaged or incomplete sample raises while its media is made: it gets a message on its
# card instead of stopping the page.
MEDIA_ERRORS = (
    av.error.FFmpegError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    EOFError,
    tarfile.TarError,
    zipfile.BadZipFile,
)


class BrowseError(ValueError):
    pass


@dataclass
class Site:
    """A written page: where, and how much of the run it shows."""

    folder: Path
    kept_total: int
    kept_shown: int
    rejected_total: int
    rejected_shown: int
    media_errors: list[str] = field(default_factory=list)


def build_site(run_dir: str, page_dir: str | Path, limit: int | None = None) -> Site:
    """Write the browsing page for the run in `run_dir` (any URI OutputDir knows) into `page_dir`:
    an empty or missing folder, or one holding an earlier page (which is replaced)."""
    limit = DEFAULT_LIMIT if limit is None else limit
    if limit < 1:
        raise BrowseError(f"--limit must be at least 1, not {limit}")
    out = OutputDir(run_dir)
    table, _ = load(out)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise BrowseError(
            f"{out.uri}/manifest.parquet lacks the column(s) {', '.join(missing)}: not a talkcurate manifest"
        )
    folder = _page_folder(Path(page_dir))

    kept = pc.equal(table["status"], "kept")
    kept_rows, rejected_rows = pc.indices_nonzero(kept), pc.indices_nonzero(pc.invert(kept))
    chosen = sorted(kept_rows[:limit].to_pylist() + rejected_rows[:limit].to_pylist())
    samples = [_page_row(row) for row in table.take(chosen).to_pylist()]
    site = Site(folder, len(kept_rows), min(limit, len(kept_rows)), len(rejected_rows), min(limit, len(rejected_rows)))

    by_shard: dict[str, dict[str, int]] = {}  # shard -> key -> position on the page
    for n, sample in enumerate(samples):
        if sample["status"] == "kept":
            by_shard.setdefault(sample["shard"], {})[sample["key"]] = n
    for shard, wanted in by_shard.items():
        _add_media(out, shard, wanted, samples, folder)
    site.media_errors = [s["media_error"] for s in samples if s.get("media_error")]
    for message in site.media_errors:
        log.warning("%s", message)

    data = {
        "run": out.uri,
        "limit": limit,
        "kept_total": site.kept_total,
        "kept_shown": site.kept_shown,
        "rejected_total": site.rejected_total,
        "rejected_shown": site.rejected_shown,
        "score_columns": [f.name for f in table.schema if _is_score(f)],
        "people": people(samples),
        "samples": samples,
    }
    (folder / PAGE).write_text(render_page(data), encoding="utf-8")
    return site


def _page_folder(folder: Path) -> Path:
    """`folder`, made ready for a page: created, or emptied of the earlier page's media."""
    if folder.exists() and not folder.is_dir():
        raise BrowseError(f"{folder} is a file, not a folder for the page")
    if folder.exists() and any(folder.iterdir()):
        page = folder / PAGE
        if not (page.is_file() and DATA_ELEMENT in page.read_text(encoding="utf-8", errors="replace")):
            raise BrowseError(f"{folder} is not empty and holds no browse page; choose an empty or new folder")
        shutil.rmtree(folder / MEDIA_FOLDER, ignore_errors=True)
    (folder / MEDIA_FOLDER).mkdir(parents=True, exist_ok=True)
    return folder


def render_page(data: dict[str, Any]) -> str:
    return PAGE_TEMPLATE.read_text(encoding="utf-8").replace(DATA_MARKER, script_json(data))


def script_json(data: Any) -> str:
    """JSON that can sit inside a <script> element: no `</script>`, `<!--` or `]]>` can form,
    because every `<`, `>` and `&` is written as a JSON escape."""
    text = json.dumps(
        data, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str
    )  # str: dates and the like
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def serve(page_dir: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for `page_dir` on 127.0.0.1 only (port 0: any free one); the caller runs
    `serve_forever()` and closes it."""
    handler = functools.partial(_QuietHandler, directory=str(page_dir))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:  # the port is taken, or not ours to take
        raise BrowseError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


# -- manifest rows -------------------------------------------------------------------------------


def _is_score(f: pa.Field) -> bool:
    return (pa.types.is_floating(f.type) or pa.types.is_integer(f.type)) and f.name not in ("start_s", "end_s")


def people(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each person (`identity_id`) among the page's kept samples: clips, seconds and the face of
    the first with media; most clips first."""
    found: dict[str, dict[str, Any]] = {}
    for sample in samples:
        person = sample.get("identity_id")
        if sample["status"] != "kept" or not person:
            continue
        entry = found.setdefault(person, {"id": person, "clips": 0, "seconds": 0.0, "face": None})
        entry["clips"] += 1
        entry["seconds"] += sample["end_s"] - sample["start_s"]
        if entry["face"] is None and sample.get("media"):
            entry["face"] = sample["media"]["face"]
    return sorted(found.values(), key=lambda p: (-p["clips"], p["id"]))


def _page_row(row: dict[str, Any]) -> dict[str, Any]:
    """A manifest row as the page gets it: lists (the identity embedding) left out, NaN as null."""
    return {
        name: None if isinstance(value, float) and not math.isfinite(value) else value
        for name, value in row.items()
        if not isinstance(value, list)
    }


# -- shards --------------------------------------------------------------------------------------


def _add_media(out: OutputDir, shard: str, wanted: dict[str, int], samples: list[dict], folder: Path) -> None:
    """Media for the samples `wanted` (key -> position) from one shard; a sample that cannot
    have them gets a `media_error` saying why."""
    wanted = dict(wanted)
    problem = "is not in the shard"
    try:
        if not out.exists(shard):
            raise FileNotFoundError("the shard does not exist")
        for key, members in _shard_samples(out, shard, set(wanted)):
            n = wanted.pop(key)
            try:
                samples[n].update(_sample_media(members, folder, f"{MEDIA_FOLDER}/{n:06d}"))
            except MEDIA_ERRORS as exc:
                samples[n]["media_error"] = f"{shard}: sample {key}: {type(exc).__name__}: {exc}"
    except (tarfile.TarError, OSError, EOFError) as exc:
        problem = f"could not be read ({exc})"
    for key, n in wanted.items():
        samples[n]["media_error"] = f"{shard}: sample {key} {problem}"


def _shard_samples(out: OutputDir, shard: str, keys: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members by suffix) for each of `keys` in the shard, read as a stream (members of a
    sample are adjacent), stopping once all are found."""
    remaining = set(keys)
    current, members = None, {}
    with out.open_read(shard) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
        for info in tar:
            key, _, suffix = info.name.partition(".")
            if key != current:
                if current in remaining:
                    remaining.discard(current)
                    yield current, members
                if not remaining:
                    return
                current, members = key, {}
            if key in remaining and info.isfile():
                members[suffix] = tar.extractfile(info).read()
        if current in remaining:
            yield current, members


# -- media of one sample -------------------------------------------------------------------------


def _sample_media(members: dict[str, bytes], folder: Path, stem: str) -> dict[str, Any]:
    """Thumbnail, overlay and preview files for one kept sample, and what its JSON and caption add."""
    missing = [m for m in BROWSED_MEMBERS if m not in members]
    if missing:
        raise ValueError(f"the shard has no {', '.join(missing)} member for it")
    index, rgb = middle_frame(members[MEMBER_VIDEO])
    track = decode_face_npz(members[MEMBER_FACE])
    landmarks = track.landmarks[min(index, track.num_frames - 1)]
    media = {
        "thumb": f"{stem}.thumb.jpg",
        "face": f"{stem}.face.jpg",
        "overlay": f"{stem}.overlay.jpg",
        "preview": f"{stem}.mp4",
    }
    (folder / media["thumb"]).write_bytes(_jpeg(_fit(rgb, THUMB_SIDE)))
    (folder / media["face"]).write_bytes(_jpeg(_fit(face_crop(rgb, track.crop_box), FACE_SIDE)))
    (folder / media["overlay"]).write_bytes(_jpeg(mask_overlay(_fit(rgb, OVERLAY_SIDE), landmarks)))
    mux_preview(members[MEMBER_VIDEO], members[MEMBER_AUDIO], folder / media["preview"])
    meta = json.loads(members[MEMBER_META])
    transcript = meta.get("transcript") or {}
    return {
        "media": media,
        "overlay_frame": index,
        "words": transcript.get("words") or [],
        "caption_member": members[MEMBER_CAPTION].decode("utf-8", errors="replace"),
    }


def face_crop(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The frame inside the clip's face crop box (x0, y0, x1, y1 in [0, 1]), at least a pixel."""
    height, width = rgb.shape[:2]
    x0, x1 = (int(np.clip(round(v * width), 0, width - 1)) for v in (box[0], box[2]))
    y0, y1 = (int(np.clip(round(v * height), 0, height - 1)) for v in (box[1], box[3]))
    return rgb[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]


def middle_frame(mp4: bytes) -> tuple[int, np.ndarray]:
    """(index, RGB array) of the middle frame of an mp4 held in memory."""
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        target = (stream.frames or 1) // 2
        for index, frame in enumerate(container.decode(stream)):
            if index == target:
                return index, frame.to_ndarray(format="rgb24")
    raise ValueError(f"the video has no frame {target}")


def mask_overlay(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The frame with the face mask and the lip mask tinted (and outlined) in two colours."""
    height, width = rgb.shape[:2]
    face, lips = (m[0] for m in face_and_lip_masks(landmarks[None], height, width))
    out = rgb.astype(np.float32)
    for mask, tint, alpha in ((face, FACE_TINT, FACE_ALPHA), (lips, LIP_TINT, LIP_ALPHA)):
        inside = mask.astype(bool)
        out[inside] = out[inside] * (1 - alpha) + np.array(tint, np.float32) * alpha
    out = out.round().astype(np.uint8)
    for mask, tint in ((face, FACE_TINT), (lips, LIP_TINT)):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tint, 2)
    return out


def mux_preview(mp4: bytes, wav: bytes, path: Path) -> None:
    """An mp4 with the sample's video packets copied as they are and its audio as AAC, moov first
    so a browser starts playing before the end has arrived."""
    with (
        av.open(io.BytesIO(mp4)) as video_in,
        av.open(io.BytesIO(wav)) as audio_in,
        av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out,
    ):
        video = out.add_stream_from_template(video_in.streams.video[0])
        audio = out.add_stream("aac", rate=audio_in.streams.audio[0].rate, layout="mono")
        audio.bit_rate = PREVIEW_AUDIO_BITRATE
        for packet in video_in.demux(video_in.streams.video[0]):
            if packet.dts is not None:  # the demuxer's empty flush packet
                packet.stream = video
                out.mux(packet)
        samples = 0
        for frame in audio_in.decode(audio=0):
            # Timestamps from sample 0 (the video's first frame): the encoder then dates its first
            # packet before 0 by AAC's priming and the muxer writes the edit list that skips it.
            frame.pts, frame.time_base = samples, Fraction(1, frame.sample_rate)
            samples += frame.samples
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()
