"""Caption: one text per clip describing what a talking-portrait model should learn to condition on.

Runs after sync and transcription, on the few JPEG keyframes the keyframes stage made (the analysis
frames stay in the worker group that decoded them). Two backends behind one interface
(stages/caption_models.py):

* `embedded` (default): a template sentence from what the pipeline measured (shot size, people,
  speaking and language, head pose and motion, lighting, background colour, camera motion), no
  model; stages/caption_embedded.py says how each part is measured.
* `vlm:<folder name>`: a Qwen2-VL / Qwen2.5-VL model from `vlm_path`, shown the keyframes with
  `prompt`; the clips of a batch are generated together, on `device` (a GPU when it names one,
  and then each worker asks the scheduler for one).

No clip is rejected here; a clip without keyframes is an error (the keyframes stage did not run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from core.config import option
from schemas.records import CandidateClip, Rejected
from schemas.text import Caption
from stages.base import Resources, Stage
from stages.caption_embedded import EmbeddedCaptioner
from stages.caption_models import DEFAULT_PROMPT, Captioner, CaptionInput, VlmCaptioner


@dataclass
class CaptionStage(Stage[CandidateClip, CandidateClip]):
    """Caption each clip from its keyframes and measurements."""

    name: ClassVar[str] = "caption"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)

    vlm_path: str = option(
        "",
        "Local folder of a Qwen2-VL or Qwen2.5-VL model (Hugging Face layout); empty: the embedded captioner, from "
        "the pipeline's measurements.",
    )
    device: str = option(
        "cpu", "Where the VLM runs: cpu, cuda or cuda:N (a GPU per worker is then requested from the scheduler)."
    )
    max_new_tokens: int = option(160, "Longest VLM caption, in tokens.")
    prompt: str = option(DEFAULT_PROMPT, "What the VLM is asked after seeing the keyframes.")

    def validate(self) -> None:
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError("caption.device must be cpu, cuda or cuda:N")
        if self.max_new_tokens < 1:
            raise ValueError("caption.max_new_tokens must be at least 1")

    def worker_resources(self) -> Resources:
        return self.resources.on(self.device) if self.vlm_path else self.resources

    def required_modules(self) -> tuple[str, ...]:
        return ("torch", "transformers") if self.vlm_path else ()

    def setup(self) -> None:
        self._captioner: Captioner = (
            VlmCaptioner(self.vlm_path, self.device, self.prompt, self.max_new_tokens)
            if self.vlm_path
            else EmbeddedCaptioner()
        )

    def process(self, item: CandidateClip) -> CandidateClip | Rejected:
        return self.process_batch([item])[0]

    def process_batch(self, items: list[CandidateClip]) -> list[CandidateClip | Rejected]:
        texts = self._captioner.caption([_caption_input(item) for item in items])
        name = self._captioner.name
        return [
            dataclasses.replace(item, caption=Caption(name, text), backends={**item.backends, "caption": name})
            for item, text in zip(items, texts)
        ]


def _caption_input(item: CandidateClip) -> CaptionInput:
    if not item.keyframes:
        raise ValueError(
            "the caption stage needs the clip's keyframes (the keyframes stage runs at the end of the clips group)"
        )
    return CaptionInput(
        keyframes=item.keyframes,
        height=item.video.height,
        face=item.face,
        sync=item.sync,
        language=item.transcript.language if item.transcript else "",
    )
