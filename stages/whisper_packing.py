"""Several clips' speech decoded in one Whisper window.

Whisper's encoder always takes a 30 s window, so a 3 s clip decoded alone pays for 27 s of
padding. Packing lays the voiced spans of several clips one after another in one window, with
`gap_s` of silence between them (long enough that Whisper does not run words of two clips into
one), decodes the window once, and gives each clip back the words whose middle falls in one of
its own spans, moved into the clip's time and clipped into that span. A segment that Whisper ran
across two clips is split between them by its words.

Only the decoding is shared: which clips are packed, and which are decoded alone after all, is the
transcribe stage's decision (stages/transcribe.py), and encoder features are always taken per clip.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.records import SAMPLE_RATE
from schemas.text import Word
from stages.whisper_models import Segment, Span, Transcription, WhisperBackend, as_float

WINDOW_S = 30.0  # Whisper's input window


@dataclass(frozen=True)
class Piece:
    """One voiced span of one clip, placed in a packed window."""

    clip: int  # the clip's index among those packed
    start_s: float  # the span, in the clip's time
    end_s: float
    at_s: float  # where the span starts in the packed audio

    def to_clip(self, t: float) -> float:
        """Packed time `t` in the clip's time, clipped into the span."""
        return min(max(t - self.at_s + self.start_s, self.start_s), self.end_s)


def packed_length(spans: Sequence[Span], gap_s: float) -> float:
    """Seconds one clip's spans take in a window, with a gap after each."""
    return sum(end - start for start, end in spans) + gap_s * len(spans)


def plan_windows(spans: Sequence[Sequence[Span]], gap_s: float, window_s: float = WINDOW_S) -> list[list[int]]:
    """Clips (indices into `spans`) grouped into windows, in order: a window takes the next clips
    while their spans and gaps fit in `window_s`. A clip never spans two windows; one that does not
    fit an empty window gets a window of its own (Whisper then decodes it window by window, as alone)."""
    windows: list[list[int]] = []
    used = window_s
    for index, clip_spans in enumerate(spans):
        length = packed_length(clip_spans, gap_s)
        if used + length > window_s + gap_s:  # the last gap need not fit: nothing follows it
            windows.append([])
            used = 0.0
        windows[-1].append(index)
        used += length
    return windows


def pack(audios: Sequence[np.ndarray], spans: Sequence[Sequence[Span]], gap_s: float) -> tuple[np.ndarray, list[Piece]]:
    """The clips' voiced spans one after another, `gap_s` of silence between them, as float32 at
    16 kHz, and where each span went."""
    parts: list[np.ndarray] = []
    pieces: list[Piece] = []
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    at = 0
    for clip, (audio, clip_spans) in enumerate(zip(audios, spans)):
        samples = as_float(audio)
        for start, end in clip_spans:
            part = samples[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
            if parts:
                parts.append(gap)
                at += len(gap)
            pieces.append(Piece(clip, start, end, at / SAMPLE_RATE))
            parts.append(part)
            at += len(part)
    return np.concatenate(parts), pieces


def transcribe_packed(
    model: WhisperBackend, audios: Sequence[np.ndarray], spans: Sequence[Sequence[Span]], gap_s: float
) -> list[Transcription]:
    """Each clip's transcription, its voiced `spans` decoded together with the others' in one
    window (more when they do not fit): one per clip, in order, in the clip's own time."""
    audio, pieces = pack(audios, spans, gap_s)
    decoded = model.transcribe(audio, [(0.0, len(audio) / SAMPLE_RATE)])
    # A word belongs to the piece around its middle: pieces own half the gap on either side.
    bounds = [(a.at_s + a.end_s - a.start_s + b.at_s) / 2 for a, b in zip(pieces, pieces[1:])]

    def piece_at(t: float) -> Piece:
        return pieces[bisect.bisect_right(bounds, t)]

    segments: list[list[Segment]] = [[] for _ in audios]
    for segment in decoded.segments:
        for clip, words in _split(segment, piece_at).items():
            segments[clip].append(_clip_segment(segment, words, piece_at))
    return [Transcription(decoded.language, clip_segments) for clip_segments in segments]


def _split(segment: Segment, piece_at) -> dict[int, list[Word]]:
    """The segment's words by the clip they belong to (a segment without words: whole, by its middle)."""
    if not segment.words:
        return {piece_at((segment.start_s + segment.end_s) / 2).clip: []}
    by_clip: dict[int, list[Word]] = {}
    for word in segment.words:
        by_clip.setdefault(piece_at((word.start_s + word.end_s) / 2).clip, []).append(word)
    return by_clip


def _clip_segment(segment: Segment, words: list[Word], piece_at) -> Segment:
    """The part of `segment` made of `words` (all of one clip), in that clip's time. The decoder's
    statistics are the window's; the tokens are shared out by words."""
    moved = []
    for word in words:
        piece = piece_at((word.start_s + word.end_s) / 2)
        moved.append(Word(word.text, piece.to_clip(word.start_s), piece.to_clip(word.end_s), word.probability))
    if moved:
        start, end = moved[0].start_s, moved[-1].end_s
    else:
        piece = piece_at((segment.start_s + segment.end_s) / 2)
        start, end = piece.to_clip(segment.start_s), piece.to_clip(segment.end_s)
    whole = len(words) == len(segment.words)
    return Segment(
        text=segment.text if whole else " ".join(w.text for w in words),
        start_s=start,
        end_s=end,
        words=moved,
        avg_logprob=segment.avg_logprob,
        no_speech_prob=segment.no_speech_prob,
        num_tokens=segment.num_tokens if whole else max(1, round(segment.num_tokens * len(words) / len(segment.words))),
    )
