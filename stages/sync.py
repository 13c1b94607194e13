"""Sync: keep clips whose lips move with the audio, fix those whose audio is merely shifted, and
find the speaker among several faces.

The single most important filter for audio-driven portraits. Per clip, in order (each rule's
measurement is recorded before the rule, so a rejected row says what was measured):

1. `no_speech`: the audio's loud-to-quiet spread is too small for speech (silence, hum, hiss).
2. `not_talking`: no candidate face's mouth moves (a still photo, a listener, a frozen frame).
3. The offset of every moving face against the audio, by the backend: SyncNet when weights are
   configured, else the embedded mouth-audio estimator (stages/sync_embedded.py) or, with
   `sync.backend = "lip-sync"`, the learned model (stages/lip_sync.py); both need only the face
   stage's landmarks.
4. Several faces (the face stage keeps each that passes its rules as a candidate): the face that
   clearly fits the audio best, by the threshold and a margin over the runner-up, becomes the
   clip's tracked face; if none clearly does, `multiple_faces`.
5. `low_sync_confidence` below the backend's threshold; `out_of_sync` when the offset is beyond
   what may be corrected; otherwise the clip is corrected: its audio is taken the offset later in
   the audio context around it, so the stored `KEY.wav` is in sync with the video.
6. With either embedded backend (`sync.pool_chunk`), the chunk's clips are then settled together:
   their evidence pooled into one offset for the source, which keeps clips too short to be sure
   alone and rejects a clip that disagrees with a surer source (`settle`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from core.config import option
from schemas.face import FaceResult
from schemas.records import FPS, SAMPLE_RATE, CandidateClip, Rejected
from schemas.sync import SyncResult, TrackScore
from stages import lip_sync
from stages.base import Resources, Stage
from stages.lip_sync import LipSyncScorer, SyncEvidence
from stages.sync_embedded import MouthAudioEvidence, MouthAudioScorer, mouth_motion, speech_range_db
from stages.sync_models import SyncEstimate, SyncNetScorer, crop_for_syncnet

MS_PER_FRAME = 1000 / FPS
Evidence = SyncEvidence | MouthAudioEvidence  # what a backend that pools measured on one clip, or on several
SYNC_MODES = ("filter", "measure")
SYNC_BACKENDS = ("mouth-audio-cca", "lip-sync")


@dataclass
class SyncStage(Stage[CandidateClip, CandidateClip]):
    """Measure each clip's audio-video offset on its speaking face; correct it or reject the clip."""

    name: ClassVar[str] = "sync"
    input_type: ClassVar[type] = CandidateClip
    resources: ClassVar[Resources] = Resources(cpus=1)
    uses_frames: ClassVar[bool] = True  # SyncNet's face crops are cut from the analysis frames

    syncnet_model_path: str = option(
        "",
        "SyncNet weights (syncnet-python's syncnet_v2.model); when set, SyncNet is the backend whatever sync.backend "
        "says.",
    )
    backend: str = option(
        "mouth-audio-cca",
        "Without SyncNet weights: `mouth-audio-cca`, the per-clip estimator on the face landmarks, or `lip-sync`, the "
        "learned model (stages/lip_sync.py; not yet the default: see the README's measurements).",
    )
    lip_sync_model_path: str = option(
        "",
        "Weights of the learned lip-sync model (from `talkcurate train-sync`); empty: the ones shipped in "
        "stages/models/lip_sync.npz.",
    )
    max_offset_frames: int = option(
        15,
        "Offsets are searched within +-this many frames (SyncNet's evaluation uses 15); at most "
        "scene_cut.audio_context_frames.",
    )
    max_correction_ms: float = option(
        520.0,
        "Offsets up to this are corrected, larger ones are `out_of_sync` (520 ms = 13 frames: short of the search's "
        "edge, where an estimate may be cut off).",
    )
    min_speech_range_db: float = option(
        10.0,
        "Spread between loud and quiet 10 ms steps of the clip's audio below which it is `no_speech` (speech "
        "alternates syllables and pauses: 40-60 dB).",
    )
    min_mouth_motion: float = option(
        0.005,
        "Standard deviation of the inner-lip gap over face height below which a face is not talking; when no face "
        "moves, `not_talking`.",
    )
    min_confidence_embedded: float = option(
        0.35,
        "mouth-audio-cca backend: confidence (how far the mouth-audio fit stands above chance, in z-like units) below "
        "which a clip is `low_sync_confidence`; real speakers score about 0.45-1.1, other speech and music 0-0.25.",
    )
    speaker_margin_embedded: float = option(
        0.15,
        "mouth-audio-cca backend, several faces: the speaker's confidence must beat every other face's by this much, "
        "else `multiple_faces`.",
    )
    min_significance: float = option(
        3.0,
        "lip-sync backend: how far the offset curve's peak must stand above the peaks the same mouth reaches against "
        "other people's speech, in units of their spread (the confidence), else `low_sync_confidence`.",
    )
    min_margin: float = option(
        0.04,
        "lip-sync backend: how far the peak must stand above the best rival peak 3 or more frames away (the margin), "
        "else `low_sync_confidence` (evenly paced speech has rivals one syllable away).",
    )
    speaker_margin_lip_sync: float = option(
        0.03,
        "lip-sync backend, several faces: the speaker's agreement with the audio at its best offset (the curve's "
        "peak) must beat every other face's by this much, else `multiple_faces` (people saying sentences of one "
        "pattern, as GRID's, fit each other's sound almost as well).",
    )
    min_confidence_syncnet: float = option(
        3.0,
        "SyncNet backend: confidence (median minus minimum distance) below which a clip is `low_sync_confidence` "
        "(LatentSync's threshold).",
    )
    speaker_margin_syncnet: float = option(
        2.0,
        "SyncNet backend, several faces: the speaker's confidence must beat every other face's by this much, else "
        "`multiple_faces`.",
    )
    pool_chunk: bool = option(
        True,
        "Without SyncNet: decide each clip with the evidence of every clip of its chunk (a source, or chunk.chunk_s "
        "of a long one): an offset is usually one number per file, so clips too short to be sure alone are kept when "
        "the pooled evidence is sure and their own agrees, and a clip differs from its source only when its own "
        "evidence is the stronger.",
    )
    pool_tolerance_embedded: float = option(
        0.1,
        "mouth-audio-cca backend, pooling: a clip unsure alone is kept at its chunk's pooled offset only when its own "
        "canonical correlation there stands above chance and within this of its own peak (the lip-sync backend "
        "uses sync.min_margin).",
    )
    mode: str = option(
        "filter",
        "`filter`: reject clips that are out of sync or unsure and correct the rest; `measure`: record every talking "
        "clip's offset and confidence but keep its audio as it is and reject nothing for sync (footage known to be in "
        "sync, such as a corpus to train the sync model on).",
    )

    def validate(self) -> None:
        if self.mode not in SYNC_MODES:
            raise ValueError(f"sync.mode must be one of {SYNC_MODES}, not {self.mode!r}")
        if self.backend not in SYNC_BACKENDS:
            raise ValueError(f"sync.backend must be one of {SYNC_BACKENDS}, not {self.backend!r}")
        if self.max_offset_frames < 1:
            raise ValueError("sync.max_offset_frames must be at least 1")
        if not 0 <= self.max_correction_ms <= self.max_offset_frames * MS_PER_FRAME:
            raise ValueError(
                f"sync.max_correction_ms must be between 0 and the search range, sync.max_offset_frames "
                f"({self.max_offset_frames} frames = {self.max_offset_frames * MS_PER_FRAME:.0f} ms)"
            )
        if min(self.speaker_margin_embedded, self.speaker_margin_lip_sync, self.speaker_margin_syncnet) < 0:
            raise ValueError(
                "sync.speaker_margin_embedded, speaker_margin_lip_sync and speaker_margin_syncnet must not be negative"
            )

    def validate_with(self, stages: Mapping[str, Stage]) -> None:
        context = getattr(stages.get("scene_cut"), "audio_context_frames", None)
        if context is not None and context < self.max_offset_frames:
            raise ValueError(_context_error(self.max_offset_frames, context))

    def settles(self) -> bool:
        return self.pool_chunk and self.mode == "filter" and not self.syncnet_model_path

    def required_modules(self) -> tuple[str, ...]:
        return ("torch", "python_speech_features") if self.syncnet_model_path else ()

    def setup(self) -> None:
        self._pending: dict[str, _Pending] = {}  # clips of the chunk awaiting `settle`, by key
        if self.syncnet_model_path:
            self._scorer = SyncNetScorer(self.syncnet_model_path)
        elif self.backend == "lip-sync":
            self._scorer = LipSyncScorer(self.lip_sync_model_path)
        else:  # gates its confidence on the same speech and mouth thresholds as this stage's rules
            self._scorer = MouthAudioScorer(
                min_mouth_motion=self.min_mouth_motion, min_speech_range_db=self.min_speech_range_db
            )

    @property
    def _syncnet(self) -> bool:
        return isinstance(self._scorer, SyncNetScorer)

    def process(self, item: CandidateClip) -> CandidateClip | Rejected:
        face = item.face
        if face is None or face.track is None:
            raise ValueError("the sync stage needs the face stage's tracked face")
        if item.audio_context_frames < self.max_offset_frames:
            raise ValueError(_context_error(self.max_offset_frames, item.audio_context_frames))
        if self._syncnet and item.frames is None:
            raise ValueError("the SyncNet backend needs the clip's analysis frames (normalize.analysis_long_side > 0)")
        faces = [face, *face.candidates]
        result = SyncResult(backend=self._scorer.name, speech_range_db=speech_range_db(item.audio))
        # The candidates are scored here and never shipped further; `result` is filled in below.
        scored = dataclasses.replace(
            item,
            face=dataclasses.replace(face, candidates=[]),
            sync=result,
            backends={**item.backends, "sync": self._scorer.name},
        )
        if result.speech_range_db < self.min_speech_range_db:
            return Rejected(
                "no_speech",
                f"loud-to-quiet spread of the audio {result.speech_range_db:.1f} dB, minimum "
                f"{self.min_speech_range_db:g} dB",
                measured=scored,
            )

        width, height = item.video.width, item.video.height
        motions = [mouth_motion(f.track.landmarks, width, height) for f in faces]
        result.mouth_motion = motions[0]
        moving = [i for i, motion in enumerate(motions) if motion >= self.min_mouth_motion]
        if not moving:
            return Rejected(
                "not_talking", f"mouth motion {max(motions):.4f}, minimum {self.min_mouth_motion:g}", measured=scored
            )
        estimates = {i: self._estimate(scored, faces[i]) for i in moving}
        if len(faces) > 1:
            result.tracks = [
                _track_score(f, motion, estimates.get(i)) for i, (f, motion) in enumerate(zip(faces, motions))
            ]
        threshold, margin = {
            SyncNetScorer: (self.min_confidence_syncnet, self.speaker_margin_syncnet),
            LipSyncScorer: (self.min_significance, self.speaker_margin_lip_sync),
            MouthAudioScorer: (self.min_confidence_embedded, self.speaker_margin_embedded),
        }[type(self._scorer)]

        def fit(i: int) -> float:  # how well face i fits the audio, in the unit its speaker margin is in
            agreement = estimates[i].agreement
            return estimates[i].confidence if agreement is None else agreement

        ranked = sorted(moving, key=fit, reverse=True)
        best = ranked[0]
        if best != 0:
            scored = dataclasses.replace(scored, face=dataclasses.replace(faces[best], candidates=[]))
        estimate = estimates[best]
        result.mouth_motion = motions[best]
        result.offset_ms = float(estimate.offset_frames * MS_PER_FRAME)
        result.confidence = float(estimate.confidence)
        result.margin = None if estimate.margin is None else float(estimate.margin)
        if self.mode == "measure":
            return scored
        if len(ranked) > 1 and (estimate.confidence < threshold or fit(best) - fit(ranked[1]) < margin):
            scores = ", ".join(f"{fit(i):.2f} (face at x {_centre(faces[i])[0]:.2f})" for i in ranked)
            return Rejected(
                "multiple_faces",
                f"no face clearly speaks: fits to the audio {scores}; the speaker needs confidence "
                f"{threshold:g} and a lead of {margin:g} ({self._scorer.name})",
                measured=scored,
            )
        unsure = self._unsure(estimate, threshold)
        if self.settles():  # every clip's evidence counts for its chunk's `settle`
            self._pending[item.key] = _Pending(estimate.evidence, unsure)
            if unsure is not None and unsure.reason != "out_of_sync":
                return scored  # unsure alone: goes on uncorrected, and `settle` decides
        if unsure is not None:
            return dataclasses.replace(unsure, measured=scored)
        return dataclasses.replace(scored, sync=_corrected(result))

    def _unsure(self, estimate: SyncEstimate, threshold: float) -> Rejected | None:
        """Why the clip's own estimate cannot be kept, or None."""
        offset_ms = estimate.offset_frames * MS_PER_FRAME
        if estimate.confidence < threshold:
            return Rejected(
                "low_sync_confidence",
                f"sync confidence {estimate.confidence:.2f}, minimum {threshold:g} ({self._scorer.name})",
            )
        if estimate.margin is not None and estimate.margin < self.min_margin:
            return Rejected(
                "low_sync_confidence",
                f"the best offset ({offset_ms:+.0f} ms) leads its best rival by {estimate.margin:.3f}, "
                f"minimum {self.min_margin:g} ({self._scorer.name})",
            )
        return self._out_of_sync(offset_ms)

    def _out_of_sync(self, offset_ms: float, origin: str = "") -> Rejected | None:
        if abs(offset_ms) > self.max_correction_ms:
            return Rejected(
                "out_of_sync",
                f"audio offset {offset_ms:+.0f} ms{origin}, at most {self.max_correction_ms:g} ms is corrected",
            )
        return None

    def settle(self, items: list[CandidateClip]) -> list[CandidateClip | Rejected]:
        """The chunk's clips decided together: the evidence of all its scored clips (also those a later
        stage rejected) pooled into one offset curve for the source. A clip sure alone keeps its own
        offset, unless the source is surer and disagrees: then it is rejected; a clip unsure alone is
        kept at the source's offset when the source is sure and the clip's own curve there stands
        above chance and near its own peak; anything else is `low_sync_confidence`."""
        pending, self._pending = self._pending, {}
        source = self._scorer.pooled([p.evidence for p in pending.values()]) if len(pending) > 1 else None
        if isinstance(self._scorer, LipSyncScorer):
            rules = _PoolRules(self.min_significance, chance_floor=1.0, tolerance=self.min_margin)
        else:  # the CCA's confidence is 0 at chance's mean peak
            rules = _PoolRules(self.min_confidence_embedded, chance_floor=0.0, tolerance=self.pool_tolerance_embedded)
        return [self._settled(item, pending.get(item.key), source, len(pending), rules) for item in items]

    def _settled(
        self, item: CandidateClip, own: _Pending | None, source: Evidence | None, clips: int, rules: _PoolRules
    ) -> CandidateClip | Rejected:
        if own is None:  # not scored here (the sync stage rejected nothing it did not score)
            return item
        evidence = own.evidence
        sure = (
            source is not None
            and source.significance >= rules.threshold
            and (source.margin is None or source.margin >= self.min_margin)
        )
        pooled = f"the {clips} clips of its chunk"
        if own.unsure is None:
            if not sure or abs(source.offset_frames - evidence.offset_frames) < lip_sync.RIVAL_FRAMES:
                decided = source if sure else evidence  # the same peak: the source's curve is the finer estimate
            elif evidence.significance >= source.significance:
                decided = evidence  # differs from its source, on stronger evidence of its own
            else:
                return Rejected(
                    "low_sync_confidence",
                    f"its offset {evidence.offset_frames * MS_PER_FRAME:+.0f} ms disagrees with {pooled} "
                    f"({source.offset_frames * MS_PER_FRAME:+.0f} ms), which are surer ({self._scorer.name})",
                )
        elif sure and _supports(evidence, source.offset_frames, rules):
            decided = source  # unsure alone, but its own curve there stands above chance and near its peak
        elif source is None:
            return Rejected(own.unsure.reason, f"{own.unsure.detail}; no other clip of its chunk to pool with")
        else:
            return Rejected(
                own.unsure.reason,
                f"{own.unsure.detail}; {pooled}: offset {source.offset_frames * MS_PER_FRAME:+.0f} ms, "
                f"confidence {source.significance:.2f}{_margin(source)}: not sure, or not this clip's",
            )
        result = dataclasses.replace(
            item.sync,
            offset_ms=float(decided.offset_frames * MS_PER_FRAME),
            confidence=float(decided.significance),
            margin=None if decided.margin is None else float(decided.margin),
            pooled_clips=clips if decided is source else 1,
        )
        too_far = self._out_of_sync(result.offset_ms, f" (from {pooled})")
        if too_far is not None:
            return dataclasses.replace(too_far, measured=dataclasses.replace(item, sync=result))
        return dataclasses.replace(item, sync=_corrected(result))

    def _estimate(self, item: CandidateClip, face: FaceResult) -> SyncEstimate:
        if self._syncnet:
            return self._scorer.score(
                crop_for_syncnet(item.frames, face.track.boxes), item.audio, self.max_offset_frames
            )
        return self._scorer.score(
            face.track.landmarks,
            item.video.width,
            item.video.height,
            item.audio_context,
            item.audio_context_frames,
            self.max_offset_frames,
        )


def _corrected(result: SyncResult) -> SyncResult:
    """`result` taking the clip's audio its offset later in the audio context (the in-sync sound of
    lagging audio starts later)."""
    return dataclasses.replace(result, audio_shift=round(result.offset_ms * SAMPLE_RATE / 1000))


@dataclass(frozen=True)
class _PoolRules:
    """What a backend's pooled evidence must reach: the confidence a sure source needs, and how a
    clip unsure alone supports the source's offset (its own significance there above `chance_floor`,
    its curve there within `tolerance` of its own peak)."""

    threshold: float
    chance_floor: float
    tolerance: float


def _supports(evidence: Evidence, offset_frames: float, rules: _PoolRules) -> bool:
    """A clip's own curve at `offset_frames` stands above chance and near its own peak."""
    value = evidence.at(offset_frames)
    return evidence.significance_of(value) > rules.chance_floor and value >= evidence.peak - rules.tolerance


def _margin(evidence: Evidence) -> str:
    return "" if evidence.margin is None else f", margin {evidence.margin:.3f}"


@dataclass
class _Pending:
    evidence: Evidence
    unsure: Rejected | None  # why the clip's own estimate is not enough, or None


def _context_error(max_offset_frames: int, context_frames: int) -> str:
    return (
        f"sync.max_offset_frames is {max_offset_frames}, but clips carry {context_frames} frames of audio context "
        f"(scene_cut.audio_context_frames): the search needs at least as many"
    )


def _centre(face: FaceResult) -> tuple[float, float]:
    boxes = face.track.boxes
    return float(np.nanmedian(boxes[:, [0, 2]].mean(axis=1))), float(np.nanmedian(boxes[:, [1, 3]].mean(axis=1)))


def _track_score(face: FaceResult, motion: float, estimate: SyncEstimate | None) -> TrackScore:
    if estimate is None:
        return TrackScore(_centre(face), motion)
    return TrackScore(_centre(face), motion, float(estimate.offset_frames * MS_PER_FRAME), float(estimate.confidence))
