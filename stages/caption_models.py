"""Captioners behind a small interface: a batch of clips' keyframes and measurements in, one caption
text per clip out.

`VlmCaptioner` is the model backend: a Qwen2-VL or Qwen2.5-VL vision-language model from a local
folder in the Hugging Face layout (config.json, weights, tokenizer, preprocessor_config.json), loaded
with transformers' `AutoModelForImageTextToText`. It sees every keyframe of a clip as an image, in
time order, followed by the instruction (`DEFAULT_PROMPT`), and answers greedily.

Why not the model's `AutoProcessor`: Qwen's processor also builds its video processor, which needs
torchvision, and torchvision does not import beside the CPU torch this project pins. So the prompt is
assembled here the way Qwen's processor and chat template do it: the PIL image processor turns each
keyframe into patches and says how many (`image_grid_thw`); each image becomes `<|vision_start|>`,
one `<|image_pad|>` per merged patch group (`grid_thw.prod() // merge_size**2`) and `<|vision_end|>`,
inside Qwen's ChatML turns with its default system message. `mm_token_type_ids` marks the image
tokens, which the model needs to lay out its 3D rotary positions. Clips are batched in one
`generate` call with left padding; outputs match captioning each clip alone.

The embedded backend, which needs no model, is in stages/caption_embedded.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.face import FaceResult
from schemas.sync import SyncResult
from schemas.text import Keyframe
from stages.keyframes import decode_keyframe

MODEL_PATH_OPTION = "caption.vlm_path"
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
SYSTEM_MESSAGE = "You are a helpful assistant."  # what Qwen's chat template adds when no system turn is given

DEFAULT_PROMPT = (
    "The images are frames of one video clip of a person, in time order, about one second apart. "
    "Describe the clip in one paragraph for training a talking-portrait video model: the person's "
    "appearance (apparent age, hair, facial features), their expression and emotion, how their head "
    "and hands move, their clothing, the background, the lighting, the shot size (close-up, medium "
    "shot, wide shot) and whether and how the camera moves. Describe only what is visible; do not "
    "name the person or quote what they say."
)


@dataclass(frozen=True)
class CaptionInput:
    """What a captioner may use of one clip: its keyframes and what earlier stages measured."""

    keyframes: list[Keyframe]
    height: int  # of the stored clip, in pixels (the face size is measured in them)
    face: FaceResult | None = None
    sync: SyncResult | None = None
    language: str = ""  # the transcript's language code (e.g. "en"); empty when not transcribed


class Captioner(Protocol):
    name: str  # the `caption_backend` value

    def caption(self, batch: Sequence[CaptionInput]) -> list[str]:
        """One caption per input, in order."""


class VlmCaptioner:
    """A Qwen2-VL / Qwen2.5-VL model from a local folder (see the module docstring)."""

    def __init__(self, model_path: str, device: str = "cpu", prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 160):
        import torch
        import transformers
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForImageTextToText,
            AutoTokenizer,
            GenerationConfig,
        )

        transformers.logging.set_verbosity_error()  # weight-loading reports and progress bars, per worker
        transformers.logging.disable_progress_bar()
        path = Path(model_path) if model_path else None
        if path is None or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no vision-language model folder at {model_path!r} (it needs config.json): set {MODEL_PATH_OPTION} "
                f"to a local Qwen2-VL or Qwen2.5-VL folder, or leave it empty for the embedded captioner"
            )
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except ValueError as error:
            raise ValueError(
                f"{MODEL_PATH_OPTION}={model_path!r}: config.json is not a model transformers knows: {error}"
            ) from error
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{MODEL_PATH_OPTION}={model_path!r} holds a {config.model_type!r} model; the captioner builds prompts "
                f"for {', '.join(SUPPORTED_MODEL_TYPES)} (Qwen2-VL, Qwen2.5-VL)"
            )
        self.name = f"vlm:{path.resolve().name}"
        self.prompt = prompt
        self._torch = torch
        self._device = torch.device(device)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
        self._images = AutoImageProcessor.from_pretrained(path, local_files_only=True, backend="pil")
        self._model = (
            AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype="auto")
            .to(self._device)
            .eval()
        )
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        tokens = self._tokenizer.convert_ids_to_tokens
        self._image_token_id = config.image_token_id
        self._vision = (
            tokens(config.vision_start_token_id),
            tokens(config.image_token_id),
            tokens(config.vision_end_token_id),
        )
        self._generation = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self._tokenizer.pad_token_id,
            eos_token_id=self._model.generation_config.eos_token_id,
        )

    def caption(self, batch: Sequence[CaptionInput]) -> list[str]:
        from PIL import Image

        pictures = [Image.fromarray(decode_keyframe(k)) for clip in batch for k in clip.keyframes]
        images = self._images(images=pictures, return_tensors="pt")
        tokens_per_image = (images["image_grid_thw"].prod(-1) // self._images.merge_size**2).tolist()
        texts, first = [], 0
        for clip in batch:
            counts = tokens_per_image[first : first + len(clip.keyframes)]
            first += len(clip.keyframes)
            texts.append(self._chat(counts))
        inputs = self._tokenizer(texts, return_tensors="pt", padding=True)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self._image_token_id).int()
        inputs.update(images)
        with self._torch.inference_mode():
            generated = self._model.generate(**inputs.to(self._device), generation_config=self._generation)
        answers = generated[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self._tokenizer.batch_decode(answers, skip_special_tokens=True)]

    def _chat(self, tokens_per_image: list[int]) -> str:
        """Qwen's ChatML for one clip: a system turn, a user turn with every image then the prompt,
        and the start of the assistant's turn."""
        start, pad, end = self._vision
        images = "".join(f"{start}{pad * count}{end}" for count in tokens_per_image)
        return (
            f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n"
            f"<|im_start|>user\n{images}{self.prompt}<|im_end|>\n"
            f"<|im_start|>assistant\n"
        )
