"""What the sync stage found for one clip: the audio-video offset, how sure it is, the correction.

Offsets are in milliseconds and positive when the audio lags the video (the sound comes after
the lips move). A clip is corrected by taking its audio `audio_shift` samples later in the audio
context around it (`CandidateClip.audio`), so the stored `KEY.wav` is in sync with the video.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrackScore:
    """One candidate face's fit to the audio, when several faces were scored to find the speaker."""

    box_centre: tuple[float, float]  # median x, y of the face box centre, in [0, 1] of the frame
    mouth_motion: float
    offset_ms: float | None = None  # None: the mouth does not move, so the face was not scored
    confidence: float | None = None


@dataclass
class SyncResult:
    """The sync stage's findings; measured values are None where a rule rejected the clip before them."""

    backend: str  # the scorer, e.g. "mouth-audio-cca" or "syncnet"
    speech_range_db: float  # loud-to-quiet spread of the clip's audio (speech alternates, silence does not)
    mouth_motion: float | None = None  # of the tracked face: std of the inner-lip gap over face height
    offset_ms: float | None = None  # estimated before correction; > 0: the audio lags the video
    # in the backend's own units (embedded: significance of the fit above chance; SyncNet: median - min distance)
    confidence: float | None = None
    margin: float | None = None  # learned model: the best offset's lead over its best rival 3+ frames away
    pooled_clips: int | None = None  # lip-sync backend, sync.pool_chunk: how many clips' evidence gave the offset
    audio_shift: int = 0  # samples the in-sync audio starts after the clip's own start in the audio context
    tracks: list[TrackScore] = field(default_factory=list)  # every candidate face, when there were several
