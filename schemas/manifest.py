"""The manifest's Arrow schema, the sample JSON and the shard member names: one place, versioned."""

from __future__ import annotations

import dataclasses
import io
import json
import types
import typing
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.face import FaceResult
from schemas.fingerprint import Fingerprint
from schemas.records import FPS, SAMPLE_RATE, CandidateClip, ProbeInfo, Status
from schemas.sync import SyncResult
from schemas.text import Caption, Transcript, Word

MANIFEST = "manifest.parquet"
"""A run's manifest, in its output folder: one row per candidate clip (MANIFEST_SCHEMA)."""

INDEX = "index.json"
"""A run's shard index, in its output folder (wids-shard-index-v1)."""

SCHEMA_VERSION = "1.8"
"""Bumped whenever a manifest column or a sample member changes meaning."""

# Shard member suffixes of one sample (the WebDataset key is everything before the first dot).
MEMBER_VIDEO = "mp4"
MEMBER_AUDIO = "wav"
MEMBER_META = "json"
MEMBER_CAPTION = "txt"
MEMBER_FACE = "face.npz"  # per-frame landmarks, boxes, mouth opening: schemas/face.py
SAMPLE_MEMBERS = (MEMBER_VIDEO, MEMBER_AUDIO, MEMBER_META, MEMBER_CAPTION, MEMBER_FACE)
MEMBER_WHISPER_FEATURES = (
    "whisper.npy"  # optional: Whisper encoder features, schemas/text.py (transcribe.store_features)
)

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # as inputs.source_paths records it
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("reason_detail", pa.string()),
        pa.field("rejected_by", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("num_frames", pa.int32()),
        pa.field("source_duration_s", pa.float64()),
        pa.field("source_fps", pa.float64()),
        pa.field("source_width", pa.int32()),
        pa.field("source_height", pa.int32()),
        pa.field("source_rotation", pa.int32()),
        pa.field("source_video_codec", pa.string()),
        pa.field("source_audio_codec", pa.string()),
        # Filled by later stages; null until they run.
        pa.field("num_faces", pa.int32()),
        pa.field("face_backend", pa.string()),
        pa.field("face_coverage", pa.float64()),
        pa.field("face_size_px", pa.float64()),
        pa.field("head_yaw", pa.float64()),
        pa.field("head_pitch", pa.float64()),
        pa.field("head_roll", pa.float64()),
        pa.field("face_jitter", pa.float64()),
        pa.field("face_sharpness", pa.float64()),
        pa.field("face_brightness", pa.float64()),
        pa.field("identity_backend", pa.string()),
        pa.field("identity_consistency", pa.float64()),
        pa.field("identity_embedding", pa.list_(pa.float32())),
        # The person the clip shows, among the run's kept clips (pipeline/people.py); stable when the
        # run is resumed or extended. Joined in from the journal like the annotations below.
        pa.field("identity_id", pa.string()),
        pa.field("sync_offset_ms", pa.float64()),
        pa.field("sync_confidence", pa.float64()),
        pa.field("sync_margin", pa.float64()),
        pa.field("sync_pooled_clips", pa.int32()),
        pa.field("sync_backend", pa.string()),
        pa.field("speech_range_db", pa.float64()),
        pa.field("mouth_motion", pa.float64()),
        pa.field("transcript", pa.string()),
        pa.field("language", pa.string()),
        pa.field("transcript_backend", pa.string()),
        pa.field("speech_ratio", pa.float64()),
        pa.field("voiced_ratio", pa.float64()),
        pa.field("no_speech_prob", pa.float64()),
        pa.field("avg_logprob", pa.float64()),
        pa.field("caption", pa.string()),
        pa.field("caption_backend", pa.string()),
        # Near-duplicate fingerprints (schemas/fingerprint.py), on kept clips.
        pa.field("video_phash", pa.list_(pa.uint64())),
        pa.field("video_motion", pa.binary()),
        pa.field("audio_fingerprint", pa.binary()),
        # Annotations by `talkcurate dedup` and `talkcurate split`, kept in the journal and joined in
        # (pipeline/output.py); null until the command runs, and for clips added after it ran.
        pa.field("duplicate_of", pa.string()),  # key of the clip kept for this clip's near-duplicate group
        pa.field("split", pa.string()),  # 'train' or 'val'
    ],
    metadata={b"talkcurate_schema_version": SCHEMA_VERSION.encode()},
)


def manifest_row(clip: CandidateClip, shard: str | None) -> dict[str, Any]:
    """The manifest row of a clip that has left the pipeline (kept with its shard, or rejected)."""
    kept = clip.status is not Status.REJECTED
    probe = clip.probe
    return {
        "key": clip.key,
        "source": clip.source.name,
        "source_id": clip.source.source_id,
        "start_s": clip.start_s,
        "end_s": clip.end_s,
        "duration_s": clip.end_s - clip.start_s,
        "status": Status.KEPT.value if kept else Status.REJECTED.value,
        "reason": None if kept else clip.reason,
        "reason_detail": None if kept else clip.reason_detail,
        "rejected_by": None if kept else clip.rejected_by,
        "shard": shard if kept else None,
        "width": clip.video.width if clip.video else None,
        "height": clip.video.height if clip.video else None,
        "num_frames": clip.num_frames if clip.num_frames > 0 else None,
        "source_duration_s": probe.duration_s if probe else None,
        "source_fps": probe.fps if probe else None,
        "source_width": probe.width if probe else None,
        "source_height": probe.height if probe else None,
        "source_rotation": probe.rotation if probe else None,
        "source_video_codec": probe.video_codec if probe else None,
        "source_audio_codec": probe.audio_codec if probe else None,
        **_face_columns(clip.face),
        **_sync_columns(clip.sync),
        **_transcript_columns(clip.transcript),
        "caption": None if clip.caption is None else clip.caption.text,
        "caption_backend": None if clip.caption is None else clip.caption.backend,
        **_fingerprint_columns(clip.fingerprint),
        "duplicate_of": None,
        "split": None,
    }


def _number(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)  # NaN: not measured


def _face_columns(face: FaceResult | None) -> dict[str, Any]:
    if face is None:
        return {name: None for name in _FACE_COLUMNS}
    return {
        "num_faces": face.num_faces,
        "face_backend": face.backend,
        "face_coverage": _number(face.coverage),
        "face_size_px": _number(face.size_px),
        "head_yaw": _number(face.yaw),
        "head_pitch": _number(face.pitch),
        "head_roll": _number(face.roll),
        "face_jitter": _number(face.jitter),
        "face_sharpness": _number(face.sharpness),
        "face_brightness": _number(face.brightness),
        "identity_backend": face.identity_backend,
        "identity_consistency": _number(face.identity_consistency),
        "identity_embedding": None if face.identity_embedding is None else face.identity_embedding.tolist(),
    }


_FACE_COLUMNS = tuple(_face_columns(FaceResult(backend="", num_faces=0)))


def _fingerprint_columns(fingerprint: Fingerprint | None) -> dict[str, Any]:
    if fingerprint is None:
        return dict.fromkeys(("video_phash", "video_motion", "audio_fingerprint"))
    return fingerprint.columns()


def _sync_columns(sync: SyncResult | None) -> dict[str, Any]:
    return {
        "sync_offset_ms": None if sync is None else sync.offset_ms,
        "sync_confidence": None if sync is None else sync.confidence,
        "sync_margin": None if sync is None else sync.margin,
        "sync_pooled_clips": None if sync is None else sync.pooled_clips,
        "sync_backend": None if sync is None else sync.backend,
        "speech_range_db": None if sync is None else sync.speech_range_db,
        "mouth_motion": None if sync is None else sync.mouth_motion,
    }


_TRANSCRIPT_COLUMNS = (
    "transcript",
    "language",
    "transcript_backend",
    "speech_ratio",
    "voiced_ratio",
    "no_speech_prob",
    "avg_logprob",
)


def _transcript_columns(transcript: Transcript | None) -> dict[str, Any]:
    if transcript is None:
        return dict.fromkeys(_TRANSCRIPT_COLUMNS)
    return {
        "transcript": transcript.text,
        "language": transcript.language or None,
        "transcript_backend": transcript.backend,
        "speech_ratio": _number(transcript.speech_ratio),
        "voiced_ratio": _number(transcript.voiced_ratio),
        "no_speech_prob": _number(transcript.no_speech_prob),
        "avg_logprob": _number(transcript.avg_logprob),
    }


def _transcript_key(column: str) -> str:
    return column.removeprefix("transcript_") if column != "transcript" else "text"


def _transcript_metadata(transcript: Transcript | None) -> dict[str, Any] | None:
    if transcript is None:
        return None
    meta = {_transcript_key(name): value for name, value in _transcript_columns(transcript).items()}
    meta["words"] = [dataclasses.asdict(word) for word in transcript.words]
    meta["features_member"] = None if transcript.features is None else MEMBER_WHISPER_FEATURES
    return meta


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


_SOURCE_INFO = (
    "duration_s",
    "fps",
    "variable_frame_rate",
    "width",
    "height",
    "rotation",
    "video_codec",
    "audio_codec",
    "audio_sample_rate",
    "audio_channels",
)
BACKENDS = ("caption", "face", "identity", "sync", "transcript")  # the stages that name the backend they ran


def _arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of a record field's type hint (JSON numbers: float64 and int64)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (list, tuple):
        return pa.list_(_arrow_type(typing.get_args(hint)[0]))
    if dataclasses.is_dataclass(hint):
        return _record_type(hint)
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}[hint]


def _record_type(cls: type, only: tuple[str, ...] | None = None) -> pa.StructType:
    hints = typing.get_type_hints(cls)
    names = only or [f.name for f in dataclasses.fields(cls)]
    return pa.struct([pa.field(name, _arrow_type(hints[name])) for name in names])


def _columns_type(columns: tuple[str, ...], rename: Any = str) -> list[pa.Field]:
    return [pa.field(rename(name), MANIFEST_SCHEMA.field(name).type) for name in columns]


SAMPLE_METADATA_TYPE = pa.struct(
    [
        pa.field("schema_version", pa.string()),
        pa.field("key", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("fps", pa.int64()),
        pa.field("num_frames", pa.int64()),
        pa.field("sample_rate", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("source_info", _record_type(ProbeInfo, _SOURCE_INFO)),
        pa.field(
            "face",
            pa.struct(
                _columns_type(tuple(c for c in _FACE_COLUMNS if c != "identity_embedding"))
                + [pa.field("crop_box", pa.list_(pa.float64())), pa.field("member", pa.string())]
            ),
        ),
        pa.field("sync", _record_type(SyncResult)),
        pa.field(
            "transcript",
            pa.struct(
                _columns_type(_TRANSCRIPT_COLUMNS, _transcript_key)
                + [pa.field("words", pa.list_(_record_type(Word))), pa.field("features_member", pa.string())]
            ),
        ),
        pa.field("caption", _record_type(Caption)),
        pa.field("backends", pa.struct([pa.field(name, pa.string()) for name in BACKENDS])),
    ]
)
"""`KEY.json` typed: every key of every sample (null where a stage did not run or found nothing), so
a reader's types never depend on which samples it happens to see first."""


def sample_metadata(clip: CandidateClip) -> dict[str, Any]:
    """`KEY.json`: everything a trainer or a person needs to know about one sample."""
    probe = clip.probe
    return {
        "schema_version": SCHEMA_VERSION,
        "key": clip.key,
        "source": clip.source.name,
        "source_id": clip.source.source_id,
        "start_s": clip.start_s,
        "end_s": clip.end_s,
        "fps": FPS,
        "num_frames": clip.num_frames,
        "sample_rate": SAMPLE_RATE,
        "width": clip.video.width if clip.video else None,
        "height": clip.video.height if clip.video else None,
        "source_info": None if probe is None else {name: getattr(probe, name) for name in _SOURCE_INFO},
        "face": _face_metadata(clip.face),
        "sync": None if clip.sync is None else dataclasses.asdict(clip.sync),
        "transcript": _transcript_metadata(clip.transcript),
        "caption": None if clip.caption is None else dataclasses.asdict(clip.caption),
        "backends": {name: clip.backends.get(name) for name in BACKENDS},
    }


def _face_metadata(face: FaceResult | None) -> dict[str, Any] | None:
    if face is None:
        return None
    columns = _face_columns(face)
    columns.pop("identity_embedding")
    track = face.track
    columns["crop_box"] = None if track is None else [round(float(v), 5) for v in track.crop_box]
    columns["member"] = MEMBER_FACE
    return columns


def encode_metadata(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def decode_face_member(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample with `KEY.face.npz` decoded into one member per array (schemas/face.py
    FaceTrackData): "face.landmarks", "face.boxes", ... in place of "face.npz"; the other members as
    they are. For the readers that leave that two-part suffix as bytes: Ray Data
    (`read_webdataset(..., decoder=[True, decode_face_member])`: one column per array), wids (keys
    with a leading dot, file objects) and webdataset (`.map(decode_face_member)`, bytes)."""
    decoded = dict(sample)
    for key in (MEMBER_FACE, f".{MEMBER_FACE}"):
        value = decoded.pop(key, None)
        if value is None:
            continue
        prefix = key.removesuffix(".npz")
        with np.load(io.BytesIO(value.read() if hasattr(value, "read") else value)) as arrays:
            decoded.update((f"{prefix}.{name}", arrays[name]) for name in arrays.files)
    return decoded
