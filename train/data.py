"""Reading talkcurate shards for training: windows of frames with their reference frame, Whisper
rows, face and lip masks and caption, decoded straight from the shards by random access.

A run's output folder is the dataset: `index.json` names the shards and `manifest.parquet` lists
the kept clips with their shard, size and length, so every rank lists the samples without opening
a tar. A sample's members are read by key: each process scans a shard's tar headers once (one
512-byte header per member, tarfile seeking over the data) into a table of member offsets and
reads the members it needs at those offsets. Random access is what lets a resumed run continue
exactly where it stopped (train/window_sampler.py decides which windows each rank and worker reads).

Frames: decoding seeks to the key frame before the first wanted frame (the window's and the
reference), skips the pictures no other picture refers to unless wanted, and stops at the last
wanted one; only wanted frames are converted, each scaled by one swscale reformatter per clip
(area filter) and placed on the target canvas (see `View`). The pipeline's clips are one group of
pictures each today, so a late window still decodes the reference pictures before it.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
import pyarrow.parquet as pq
import torch
from av.video.reformatter import Interpolation, VideoReformatter

from core.config import option
from core.media_io import open_binary
from schemas.face import decode_face_npz, face_and_lip_masks
from schemas.manifest import INDEX, MANIFEST, MEMBER_CAPTION, MEMBER_FACE, MEMBER_VIDEO, MEMBER_WHISPER_FEATURES
from schemas.records import FPS
from schemas.sample_list import SampleList, is_sample_list
from schemas.text import FEATURE_WINDOW, decode_features, frame_feature_window

FIT_POLICIES = ("crop", "letterbox")
REFERENCE_POLICIES = ("outside", "first")
BALANCE_KEYS = ("", "source_id", "identity")
AUDIO_ROWS = FEATURE_WINDOW[1] - FEATURE_WINDOW[0]  # Whisper rows per video frame (10)


@dataclass
class DataConfig:
    """What the trainer reads from a run's shards, and in which order (train/window_sampler.py)."""

    shards: str = option(
        "",
        "A talkcurate run's output folder (local path, or a URI pyarrow knows: s3://, gs://, ...) holding index.json, "
        "manifest.parquet and shards/; or a sample list (FILE.json from `talkcurate subset --list`) naming some of a "
        "folder's samples.",
    )
    resolution: tuple[int, int] = option(
        (64, 64), "(height, width) of the frames, the reference and the masks; with aspect_buckets, one of the buckets."
    )
    aspect_buckets: tuple[tuple[int, int], ...] = option(
        (),
        "More (height, width) targets: each clip takes the one (resolution included) whose aspect ratio is nearest "
        "its own, and a batch holds one of them.",
    )
    fit: str = option(
        "crop",
        "How a frame of another aspect ratio meets its target: 'crop' scales it to cover the target and cuts the "
        "excess, centred on the clip's face (clamped to the frame); 'letterbox' scales it to fit inside and pads with "
        "black.",
    )
    num_frames: int = option(16, "Frames in a training window.")
    length_buckets: tuple[int, ...] = option(
        (),
        "Longer windows (frames): each clip takes the longest window (num_frames included) that it can fill, and a "
        "batch holds one length.",
    )
    frame_stride: int = option(
        1, "Take every n-th frame of the clip's 25 fps (2: 12.5 fps); each frame keeps its own Whisper rows."
    )
    reference: str = option(
        "outside",
        "The reference (identity) frame: 'outside' picks a frame outside the window's span when the clip has one, "
        "else the window's first frame; 'first' always takes the window's first frame (image-to-video).",
    )
    require_whisper: bool = option(
        True,
        "A sample without KEY.whisper.npy is an error (curate with transcribe.store_features=true); when false, its "
        "audio rows are zeros.",
    )
    audio_dim: int = option(
        384, "Width of the Whisper features (tiny: 384, large: 1280); stored features of another width are an error."
    )
    balance: str = option(
        "",
        "Balance an epoch over groups: '' (every clip once), 'source_id' (each source equally often) or 'identity' "
        "(each person equally often, by the manifest's identity_id; clips without one count as their source).",
    )
    drop_last: bool = option(
        False,
        "Drop each bucket's last incomplete global batch; when false, it is filled with the bucket's first windows of "
        "the epoch again.",
    )
    seed: int = option(
        0, "Seed of the epoch order and of the windows' and reference frames' positions (with the epoch)."
    )
    num_workers: int = option(2, "Data-loader processes per rank (0: load in the training process).")

    def validate(self) -> None:
        if self.fit not in FIT_POLICIES:
            raise ValueError(f"data.fit must be one of {FIT_POLICIES}, not {self.fit!r}")
        if self.reference not in REFERENCE_POLICIES:
            raise ValueError(f"data.reference must be one of {REFERENCE_POLICIES}, not {self.reference!r}")
        if self.balance not in BALANCE_KEYS:
            raise ValueError(f"data.balance must be one of {BALANCE_KEYS}, not {self.balance!r}")
        if min(self.num_frames, self.frame_stride, *self.length_buckets) < 1 or self.num_workers < 0:
            raise ValueError(
                "data.num_frames, length_buckets and frame_stride must be positive, num_workers not negative"
            )
        if min(min(size) for size in self.resolutions) < 1:
            raise ValueError("data.resolution and aspect_buckets must be positive sizes")

    @property
    def resolutions(self) -> tuple[tuple[int, int], ...]:
        """The (height, width) buckets: `resolution` first."""
        return (tuple(self.resolution), *(tuple(size) for size in self.aspect_buckets))

    @property
    def window_lengths(self) -> tuple[int, ...]:
        """The window lengths in frames, longest first."""
        return tuple(sorted({self.num_frames, *self.length_buckets}, reverse=True))


# -- listing: index and manifest -------------------------------------------------------------


@dataclass(frozen=True)
class SampleInfo:
    """A kept clip as the manifest describes it: enough to plan windows without opening its shard."""

    key: str
    shard: str  # shard URL relative to the run's folder
    num_frames: int
    width: int
    height: int
    source_id: str
    identity_id: str | None = None  # the person it shows (the manifest's identity_id), None where unknown
    num_faces: int = 1  # faces the face stage counted in the clip


def _join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def dataset_source(shards: str) -> tuple[str, SampleList | None]:
    """The output folder that `DataConfig.shards` reads from, and the sample list it names, if
    it names one (schemas/sample_list.py) rather than the folder itself."""
    if not is_sample_list(shards):
        return shards, None
    with open_binary(shards) as f:
        listing = SampleList.decode(f.read(), shards)
    return listing.source_folder(shards), listing


def list_samples(shards: str) -> list[SampleInfo]:
    """The kept clips of a run (or those a sample list names), in index order (shard by shard,
    by key within a shard)."""
    root, listing = dataset_source(shards)
    with open_binary(_join(root, INDEX)) as f:
        order = {entry["url"]: i for i, entry in enumerate(json.load(f)["shardlist"])}
    with open_binary(_join(root, MANIFEST)) as f:
        columns = [
            "key",
            "status",
            "shard",
            "num_frames",
            "width",
            "height",
            "source_id",
            "identity_id",
            "num_faces",
        ]
        rows = [row for row in pq.read_table(f, columns=columns).to_pylist() if row["status"] == "kept"]
    if listing is not None:
        kept = {(row["key"], row["shard"]) for row in rows}
        stale = [sample for sample in listing.samples if sample not in kept]
        if stale:
            raise ValueError(
                f"{shards}: {len(stale)} listed samples are not kept clips of {root} in the listed shard "
                f"(e.g. {stale[0][0]} in {stale[0][1]}); write the list again with `talkcurate subset --list`"
            )
        listed = set(listing.samples)
        rows = [row for row in rows if (row["key"], row["shard"]) in listed]
    unlisted = sorted({row["shard"] for row in rows} - set(order))
    if unlisted:
        raise ValueError(
            f"{root}: kept clips in shards the index does not list ({', '.join(unlisted[:3])}); run `talkcurate verify`"
        )
    rows.sort(key=lambda row: (order[row["shard"]], row["key"]))
    return [
        SampleInfo(
            key=row["key"],
            shard=row["shard"],
            num_frames=row["num_frames"],
            width=row["width"],
            height=row["height"],
            source_id=row["source_id"],
            identity_id=row["identity_id"],
            num_faces=row["num_faces"],
        )
        for row in rows
    ]


# -- random access into shards ----------------------------------------------------------------


class ShardReader:
    """Members of a sample, by key, from its shard; each shard's member table is built once per process."""

    def __init__(self, root: str):
        self.root = root
        self._tables: dict[str, dict[str, dict[str, tuple[int, int]]]] = {}

    def table(self, shard: str) -> dict[str, dict[str, tuple[int, int]]]:
        """key -> member suffix -> (offset of the data, size) in the shard."""
        if shard not in self._tables:
            table: dict[str, dict[str, tuple[int, int]]] = {}
            with open_binary(_join(self.root, shard)) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:  # reads headers only: tarfile seeks over each member's data
                    key, _, suffix = info.name.partition(".")
                    table.setdefault(key, {})[suffix] = (info.offset_data, info.size)
            self._tables[shard] = table
        return self._tables[shard]

    def read(self, shard: str, key: str, suffixes: Sequence[str]) -> dict[str, bytes]:
        """The named members of one sample (a suffix the sample lacks is absent from the result)."""
        members = self.table(shard).get(key)
        if members is None:
            raise KeyError(f"{key} is not in {shard}")
        out = {}
        with open_binary(_join(self.root, shard)) as f:
            for suffix in suffixes:
                if suffix in members:
                    offset, size = members[suffix]
                    f.seek(offset)
                    out[suffix] = f.read(size)
        return out


# -- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """Where a clip's frames land on the (height, width) target: scaled to (scaled_width,
    scaled_height), their top-left corner at (x, y) on the canvas (negative: cropped, positive:
    black padding). Pixels and landmarks go through the same mapping, so masks match frames."""

    height: int
    width: int
    scaled_width: int
    scaled_height: int
    x: int
    y: int

    @classmethod
    def fit(cls, width: int, height: int, target: tuple[int, int], policy: str, centre: tuple[float, float]) -> View:
        """The view of a `width` x `height` clip on `target`; `centre` (x, y in [0, 1] of the
        frame, the face's) is kept as near the middle as a crop allows."""
        target_h, target_w = target
        scale = (max if policy == "crop" else min)(target_w / width, target_h / height)
        scaled_w, scaled_h = max(1, round(width * scale)), max(1, round(height * scale))
        if policy == "crop":  # the scaled frame covers the canvas; never past its edges
            scaled_w, scaled_h = max(scaled_w, target_w), max(scaled_h, target_h)
            x = int(np.clip(round(target_w / 2 - centre[0] * scaled_w), target_w - scaled_w, 0))
            y = int(np.clip(round(target_h / 2 - centre[1] * scaled_h), target_h - scaled_h, 0))
        else:
            scaled_w, scaled_h = min(scaled_w, target_w), min(scaled_h, target_h)
            x, y = (target_w - scaled_w) // 2, (target_h - scaled_h) // 2
        return cls(target_h, target_w, scaled_w, scaled_h, x, y)

    def place(self, scaled: np.ndarray) -> np.ndarray:
        """The (height, width, 3) canvas holding a frame already scaled to this view's size."""
        canvas = np.zeros((self.height, self.width, 3), np.uint8)
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.scaled_width, self.width), min(self.y + self.scaled_height, self.height)
        canvas[y0:y1, x0:x1] = scaled[y0 - self.y : y1 - self.y, x0 - self.x : x1 - self.x]
        return canvas

    def landmarks(self, landmarks: np.ndarray) -> np.ndarray:
        """Landmarks (x, y in [0, 1] of the clip's frame) in [0, 1] of the canvas."""
        out = landmarks[..., :2].astype(np.float32)
        out[..., 0] = (out[..., 0] * self.scaled_width + self.x) / self.width
        out[..., 1] = (out[..., 1] * self.scaled_height + self.y) / self.height
        return out


def decode_frames(mp4: bytes, frames: Sequence[int], view: View) -> dict[int, np.ndarray]:
    """RGB uint8 (height, width, 3) canvases of the wanted frames (indices on the clip's 25 fps
    grid), decoding from the key frame before the first of them to the last of them only."""
    wanted = set(frames)
    first = min(wanted)
    out: dict[int, np.ndarray] = {}
    with av.open(io.BytesIO(mp4), mode="r") as container:
        stream = container.streams.video[0]
        origin = stream.start_time or 0

        def index(pts: int) -> int:
            return round((pts - origin) * stream.time_base * FPS)

        if first > 0:
            container.seek(origin + int(first / (FPS * stream.time_base)), stream=stream, backward=True)
        reformatter = VideoReformatter()  # one per clip: PyAV keeps every converter made per frame
        for packet in container.demux(stream):
            if packet.pts is not None:
                # Pictures no other picture refers to (x264's B-frames, about half of a clip's) are
                # skipped unless wanted: a third less decoding before and between the wanted frames.
                stream.codec_context.skip_frame = "DEFAULT" if index(packet.pts) in wanted else "NONREF"
            for frame in packet.decode():
                if index(frame.pts) in wanted:
                    scaled = reformatter.reformat(
                        frame,
                        width=view.scaled_width,
                        height=view.scaled_height,
                        format="rgb24",
                        interpolation=Interpolation.AREA,
                    )
                    out[index(frame.pts)] = view.place(scaled.to_ndarray())
            if len(out) == len(wanted):
                break
    if len(out) != len(wanted):
        raise ValueError(f"frames {sorted(wanted - set(out))[:5]} are not in the clip")
    return out


# -- samples and batches ------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Which frames of which sample to read, at which size: what the sampler hands the dataset."""

    index: int  # into the dataset's samples
    start: int  # first frame, on the clip's 25 fps grid
    num_frames: int
    stride: int
    reference: int  # the reference frame
    height: int
    width: int

    @property
    def frames(self) -> range:
        return range(self.start, self.start + self.num_frames * self.stride, self.stride)


@dataclass
class Sample:
    """One training window. T frames of H x W; D = the Whisper features' width."""

    key: str
    video: torch.Tensor  # (3, T, H, W) float32 in [-1, 1]
    reference: torch.Tensor  # (3, H, W) float32 in [-1, 1]
    audio: torch.Tensor  # (T, 10, D) float32: each frame's Whisper rows (schemas.text.frame_feature_window)
    face_mask: torch.Tensor  # (T, H, W) float32, 1 inside the face oval
    lip_mask: torch.Tensor  # (T, H, W) float32, 1 on the dilated lips
    caption: str
    window: Window


@dataclass
class Batch:
    """B samples of one shape (the sampler's buckets make it so)."""

    video: torch.Tensor  # (B, 3, T, H, W) float32 in [-1, 1]
    reference: torch.Tensor  # (B, 3, H, W) float32 in [-1, 1]
    audio: torch.Tensor  # (B, T, 10, D) float32
    face_mask: torch.Tensor  # (B, T, H, W) float32 0/1
    lip_mask: torch.Tensor  # (B, T, H, W) float32 0/1
    caption: list[str]
    key: list[str]

    _TENSORS = ("video", "reference", "audio", "face_mask", "lip_mask")

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pin_memory thread."""
        return self._map(lambda tensor: tensor.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def _map(self, fn) -> Batch:
        return Batch(**{name: fn(getattr(self, name)) for name in self._TENSORS}, caption=self.caption, key=self.key)


def collate(samples: Sequence[Sample]) -> Batch:
    shapes = {tuple(s.video.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"a batch holds one shape, not {sorted(shapes)} (bucket the windows)")
    return Batch(
        video=torch.stack([s.video for s in samples]),
        reference=torch.stack([s.reference for s in samples]),
        audio=torch.stack([s.audio for s in samples]),
        face_mask=torch.stack([s.face_mask for s in samples]),
        lip_mask=torch.stack([s.lip_mask for s in samples]),
        caption=[s.caption for s in samples],
        key=[s.key for s in samples],
    )


def _to_unit_range(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).float().div_(127.5).sub_(1.0)


class ClipDataset(torch.utils.data.Dataset):
    """`dataset[window]`: the Sample of a Window (map-style, indexed by the sampler's windows)."""

    def __init__(self, config: DataConfig, samples: Sequence[SampleInfo]):
        config.validate()
        self.config = config
        self.samples = list(samples)
        self.reader = ShardReader(dataset_source(config.shards)[0])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, window: Window) -> Sample:
        info = self.samples[window.index]
        members = self.reader.read(
            info.shard, info.key, (MEMBER_VIDEO, MEMBER_FACE, MEMBER_CAPTION, MEMBER_WHISPER_FEATURES)
        )
        frames = list(window.frames)
        track = decode_face_npz(members[MEMBER_FACE])
        x0, y0, x1, y1 = track.crop_box
        view = View.fit(
            info.width, info.height, (window.height, window.width), self.config.fit, ((x0 + x1) / 2, (y0 + y1) / 2)
        )
        pixels = decode_frames(members[MEMBER_VIDEO], [*frames, window.reference], view)
        video = np.stack([pixels[f] for f in frames])  # (T, H, W, 3)
        face, lips = face_and_lip_masks(view.landmarks(track.landmarks[frames]), window.height, window.width)
        return Sample(
            key=info.key,
            video=_to_unit_range(video).permute(3, 0, 1, 2),
            reference=_to_unit_range(pixels[window.reference]).permute(2, 0, 1),
            audio=self._audio(info.key, members.get(MEMBER_WHISPER_FEATURES), frames),
            face_mask=torch.from_numpy(face).float(),
            lip_mask=torch.from_numpy(lips).float(),
            caption=members[MEMBER_CAPTION].decode("utf-8"),
            window=window,
        )

    def _audio(self, key: str, data: bytes | None, frames: list[int]) -> torch.Tensor:
        if data is None:
            if self.config.require_whisper:
                raise ValueError(
                    f"{key} has no {MEMBER_WHISPER_FEATURES}: curate with transcribe.store_features=true, or set "
                    "data.require_whisper=false"
                )
            return torch.zeros(len(frames), AUDIO_ROWS, self.config.audio_dim)
        features = decode_features(data)
        if features.shape[1] != self.config.audio_dim:
            raise ValueError(
                f"{key}: Whisper features of width {features.shape[1]}, data.audio_dim is {self.config.audio_dim}"
            )
        return torch.from_numpy(np.stack([frame_feature_window(features, f, FPS) for f in frames]).astype(np.float32))
