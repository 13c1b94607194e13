"""`DIR/README.md`: the output folder's Hugging Face dataset card, so `datasets.load_dataset(DIR)`
reads the shards with every member typed.

Without a card, `datasets` infers the types from the first samples it meets: a JSON field that is
null there gets a null type and a later shard fails to cast, and the mp4 and wav members become
Video and Audio features, which need torchcodec to load. The card declares every member instead:
the videos and audio as bytes, KEY.json as `SAMPLE_METADATA_TYPE`, the face arrays as nested lists.

The card's one configuration is named after the shards' checksums. `datasets` caches a local
folder by its base name and the card's configuration, not by where the files are: two runs both
written to `.../out` with a card alike would share one cache entry, and the second would load the
first's samples. Named by their content, other shards get their own entry.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import yaml

from schemas.face import FACE_ARRAYS_TYPE
from schemas.manifest import (
    MANIFEST,
    MEMBER_AUDIO,
    MEMBER_CAPTION,
    MEMBER_FACE,
    MEMBER_META,
    MEMBER_VIDEO,
    MEMBER_WHISPER_FEATURES,
    SAMPLE_METADATA_TYPE,
    SCHEMA_VERSION,
)

CARD = "README.md"

SAMPLE_TYPE = pa.struct(
    [
        pa.field("__key__", pa.string()),
        pa.field("__url__", pa.string()),
        pa.field(MEMBER_VIDEO, pa.binary()),
        pa.field(MEMBER_AUDIO, pa.binary()),
        pa.field(MEMBER_META, SAMPLE_METADATA_TYPE),
        pa.field(MEMBER_CAPTION, pa.string()),
        pa.field(MEMBER_FACE, FACE_ARRAYS_TYPE),
        pa.field(MEMBER_WHISPER_FEATURES, pa.list_(pa.list_(pa.float16()))),
    ]
)
"""One sample as `datasets`' webdataset reader gives it: members by suffix, decoded by their last one."""

# Arrow's names of the primitive types, as `datasets` spells them.
_DTYPES = {
    pa.string(): "string",
    pa.binary(): "binary",
    pa.bool_(): "bool",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.uint64(): "uint64",
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
}


def _feature(data_type: pa.DataType) -> dict | str:
    """A feature in the card's YAML form (`datasets.Features._to_yaml_list`)."""
    if pa.types.is_struct(data_type):
        return {"struct": [{"name": f.name, **_named(f.type)} for f in data_type]}
    if pa.types.is_list(data_type):
        return {"list": _feature(data_type.value_type)}
    return _DTYPES[data_type]


def _named(data_type: pa.DataType) -> dict:
    feature = _feature(data_type)
    return feature if isinstance(feature, dict) else {"dtype": feature}


def config_name(index: dict) -> str:
    """`shards-` and 12 hex digits of the SHA-1 of the index's shard names, sizes and checksums."""
    listing = "\n".join(f"{s['url']} {s['filesize']} {s['md5sum']}" for s in index["shardlist"])
    return "shards-" + hashlib.sha1(listing.encode()).hexdigest()[:12]


def dataset_card(index: dict, shard_glob: str = "shards/*.tar") -> str:
    """The card of an output folder whose shards `index` (wids-shard-index-v1) lists."""
    name, data_files = config_name(index), [{"split": "train", "path": shard_glob}]
    features = [{"name": f.name, **_named(f.type)} for f in SAMPLE_TYPE]
    header = {
        "configs": [{"config_name": name, "data_files": data_files, "default": True}],
        "dataset_info": {"config_name": name, "features": features},  # the types belong to that config
        "tags": ["talkcurate", "talking-head", "audio-visual", "webdataset"],
    }
    return f"""---
{yaml.safe_dump(header, sort_keys=False)}---

# Talking-portrait clips curated by talkcurate

WebDataset shards of audio-video-text samples, one speaking face each, in sync, written by
`talkcurate run` (manifest schema {SCHEMA_VERSION}). Every kept clip is one sample:

| member | what |
|---|---|
| `{MEMBER_VIDEO}` | H.264, 25 fps, no sound (bytes) |
| `{MEMBER_AUDIO}` | 16 kHz mono PCM, in sync with the video (bytes) |
| `{MEMBER_META}` | source, times, face, sync, transcript, caption, the backend of each |
| `{MEMBER_CAPTION}` | the caption |
| `{MEMBER_FACE}` | per-frame landmarks, face boxes, mouth opening, one crop box |
| `{MEMBER_WHISPER_FEATURES}` | Whisper encoder features, when the run stored them (else null) |

```python
from datasets import load_dataset

clips = load_dataset("path/to/this/folder", split="train")  # or streaming=True
```

All of a run's samples are in the one `train` split here; `{MANIFEST}` has every candidate clip,
kept or rejected with its reason, and the `split` column that `talkcurate split` writes. The
licence of the clips is that of their sources: whoever shares this folder must hold the rights to
share them.
"""
