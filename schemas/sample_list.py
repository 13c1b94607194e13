"""Sample lists (`talkcurate subset --list FILE.json`): a selection of a run's kept samples that the
trainer reads in place (`data.shards = "FILE.json"`), with no bytes copied.

    {
      "__kind__": "talkcurate-sample-list-v1",
      "source": "/data/run",                  # the output folder the samples live in
      "where": "language = 'en'",             # the predicate that chose them (null: all)
      "samples": [{"key": "2af6a490f729ab46_00000000", "shard": "shards/shard-000000.tar"}, ...]
    }

`source` is a local path (a relative one is taken from the list's folder) or a URI; `shard` is
relative to it, as in the source's index. A list's file name ends in `.json`: that is how a
reader tells it from an output folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

KIND = "talkcurate-sample-list-v1"
SUFFIX = ".json"


def is_sample_list(path: str) -> bool:
    return path.endswith(SUFFIX)


@dataclass(frozen=True)
class SampleList:
    source: str
    where: str | None
    samples: tuple[tuple[str, str], ...]  # (key, shard)

    def source_folder(self, list_path: str) -> str:
        """`source`; a relative one is taken from the folder of the list at `list_path`."""
        if "://" in self.source or self.source.startswith("/"):
            return self.source
        return f"{list_path.rpartition('/')[0] or '.'}/{self.source}"

    def encode(self) -> bytes:
        samples = [{"key": key, "shard": shard} for key, shard in self.samples]
        return json.dumps(
            {"__kind__": KIND, "source": self.source, "where": self.where, "samples": samples}, indent=1
        ).encode()

    @classmethod
    def decode(cls, data: bytes, name: str) -> SampleList:
        """The list in `data`; ValueError naming `name` when it is not one."""
        try:
            document = json.loads(data)
            if document.get("__kind__") != KIND:
                raise ValueError(f"its __kind__ is {document.get('__kind__')!r}, not {KIND!r}")
            samples = tuple((str(s["key"]), str(s["shard"])) for s in document["samples"])
            return cls(str(document["source"]), document.get("where"), samples)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = f"no {exc} field" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{name} is not a talkcurate sample list ({detail})") from None
