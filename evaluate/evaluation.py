"""Scoring generated (or real) talking-portrait videos with the models that curate the data.

One `Evaluator` loads the models once and measures each video into a plain dict (what
DIR/NAME.json holds); a video that cannot be measured gets the reason, and the next one goes on.
FID, FVD and Sync-C/D are computed only from weights the user names (evaluate/realism.py,
evaluate/syncnet_scores.py); without them the report says they were not computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.config import option
from evaluate import output, scores
from evaluate.decode import Decoded, EvaluationError, decode, speech_on_grid
from evaluate.paper_metrics import PaperMetrics
from schemas.records import FPS
from stages.face import FaceStage
from stages.lip_sync import LipSyncScorer, SyncEvidence, pooled
from stages.normalize import ANALYSIS_LONG_SIDE
from stages.sync import SyncStage
from stages.sync_embedded import speech_range_db

log = logging.getLogger(__name__)


@dataclass
class EvaluationConfig:
    """What `talkcurate evaluate` measures and with which weights."""

    window_s: float = option(3.0, "Lip sync is also measured on windows this long along the video.")
    hop_s: float = option(1.0, "A window starts every this many seconds.")
    identity_per_second: float = option(2.0, "Frames a second whose face is compared with the reference face.")
    reference_frames: int = option(5, "The reference face is the mean of the first this many frames with a face.")
    in_sync_ms: float = option(40.0, "An offset this close to zero (one frame) is in sync.")
    identity_backend: str = option("dlib-resnet", "Identity model when no ArcFace path is given (face stage's).")
    arcface_model: str = option("", "ArcFace ONNX model (insightface format); when set, the identity model.")
    lip_sync_model: str = option("", "Weights of the learned lip-sync model; empty: the shipped ones.")
    syncnet_model: str = option("", "syncnet-python's syncnet_v2.model, for Sync-C and Sync-D.")
    inception_model: str = option("", "Inception TorchScript detector, for FID.")
    i3d_model: str = option("", "I3D TorchScript detector, for FVD.")
    real: list = option([], "Real videos whose frames and clips FID and FVD compare with.")


@dataclass
class Reference:
    embedding: np.ndarray | None  # (D,) unit vector; None: the identity backend records none
    description: dict = field(default_factory=dict)


class Evaluator:
    """The curation models, loaded once, measuring one video after another."""

    def __init__(self, config: EvaluationConfig):
        self.config = config
        faces = FaceStage(identity_backend=config.identity_backend, identity_model_path=config.arcface_model)
        faces.validate()
        self.tracker = faces.tracker()
        self.tracker.load()
        self.identity, _ = faces.identity_model()
        sync = SyncStage()  # its defaults: the offset search, and the thresholds of a sure offset
        self.max_offset = sync.max_offset_frames
        self.rules = scores.SyncRules(sync.min_significance, sync.min_margin, config.in_sync_ms)
        self.lip_sync = LipSyncScorer(config.lip_sync_model)
        self.paper = PaperMetrics(config, decode)
        self.sync_evidence: list[SyncEvidence] = []  # each measured video's whole-video evidence, for the set's

    def pooled_sync(self) -> dict:
        """Lip sync of every video measured so far taken together (each weighed by its length, as the
        sync stage pools a source's clips): a checkpoint's offset and confidence over a test set, surer
        than any one short video's."""
        if not self.sync_evidence:
            return {"videos": 0, "status": "not computed: no video's lip sync was measured"}
        return {"videos": len(self.sync_evidence), **scores.described(pooled(self.sync_evidence), self.rules)}

    # -- the reference face ------------------------------------------------------------------------

    def reference(self, path: str | Path) -> Reference:
        """The face of an image, or a video's first frames with a face."""
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            scale = ANALYSIS_LONG_SIDE / max(image.shape[:2])
            image = cv2.resize(
                image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            )
            frames, kind = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[None], "image"
        else:
            frames, kind = decode(path, max_frames=round(10 * FPS)).frames, "video"
        face = scores.track_face(self.tracker, frames)
        picks = scores.first_faces(face, self.config.reference_frames)
        if not len(picks):
            raise EvaluationError("no_face", "the face mesh found no face")
        described = {"kind": kind, "path": str(path), "frames": [int(t) for t in picks]}
        return Reference(self._mean_embedding(frames, face, picks), described)

    def _mean_embedding(self, frames: np.ndarray, face: scores.TrackedFace, picks) -> np.ndarray | None:
        embeddings = scores.embed_frames(self.identity, frames, face, picks)
        if embeddings is None:
            return None
        mean = embeddings.mean(axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    # -- one video ---------------------------------------------------------------------------------

    def evaluate(self, path: str | Path, reference: Reference | None = None, speech: str | Path | None = None) -> dict:
        """Everything measured on one video, as DIR/NAME.json holds it; `error` names why a part is missing."""
        report = {"video": str(path), "name": Path(path).stem, "error": None, "frames": None, "duration_s": None}
        report.update(size=None, audio=None, sync=None, identity=None, face=None)
        report["paper_metrics"] = self.paper.absent("the video could not be measured")
        try:
            video = decode(path)
        except EvaluationError as error:
            return {**report, "error": {"reason": error.reason, "detail": error.detail}}
        audio, audio_source, coverage = self._audio(video, speech)
        report.update(
            frames=video.num_frames,
            duration_s=video.num_frames / FPS,
            size=list(video.source_size),
            audio={
                "source": audio_source,
                "coverage": coverage,
                "speech_range_db": None if audio is None else speech_range_db(audio),
            },
        )
        try:
            face = scores.track_face(self.tracker, video.frames)
        except EvaluationError as error:
            return {**report, "error": {"reason": error.reason, "detail": error.detail}}
        report["face"] = self._stability(video, face)
        report["identity"] = self._identity(video, face, reference)
        if audio is None:
            report["error"] = {"reason": "no_audio", "detail": "the video has no audio stream and no --audio was given"}
        else:
            report["sync"] = self._sync(video, face, audio)
        report["paper_metrics"] = self.paper.video(video.frames, face.boxes, audio)
        return report

    def _audio(self, video: Decoded, speech: str | Path | None) -> tuple[np.ndarray | None, str, float]:
        if speech is not None:
            audio, coverage = speech_on_grid(speech, video.num_frames)
            return audio, f"--audio {speech}", coverage
        if video.audio is None:
            return None, "none: the video has no audio stream", 0.0
        return video.audio, "the video's own track", video.audio_coverage

    def _sync(self, video: Decoded, face: scores.TrackedFace, audio: np.ndarray) -> dict:
        config = self.config

        def measured(span: tuple[int, int]) -> tuple[dict, SyncEvidence]:
            score, evidence = scores.sync_score(
                self.lip_sync, face.landmarks, video.size, audio, span, self.max_offset, self.rules
            )
            score["face_share"] = float(face.found[span[0] : span[1]].mean())
            return score, evidence

        whole, evidence = measured((0, video.num_frames))
        self.sync_evidence.append(evidence)
        spans = scores.windows(video.num_frames, round(config.window_s * FPS), round(config.hop_s * FPS))
        return {
            "backend": self.lip_sync.name,
            "whole": whole,
            "window_s": config.window_s,
            "hop_s": config.hop_s,
            "windows": [measured(span)[0] for span in spans],
            "rules": {
                "in_sync": f"confidence >= {self.rules.min_confidence:g}, margin >= {self.rules.min_margin:g} "
                f"and |offset| <= {self.rules.max_offset_ms:g} ms",
                "offset": "as sure, but the offset is larger",
                "unsure": "below the confidence or the margin: no offset fits clearly",
            },
        }

    def _identity(self, video: Decoded, face: scores.TrackedFace, reference: Reference | None) -> dict:
        if reference is None:  # the video's own first frames with a face
            picks = scores.first_faces(face, self.config.reference_frames)
            own = {"kind": "self", "frames": [int(t) for t in picks]}
            own["note"] = "no --reference given: the reference is this video's own first frames with a face"
            reference = Reference(self._mean_embedding(video.frames, face, picks), own)
        described = {"backend": self.identity.name, "reference": reference.description}
        if reference.embedding is None:
            return {**described, "mean": None, "min": None, "samples": [], "status": "not computed: no identity model"}
        sampled = scores.identity_frames(video.num_frames, self.config.identity_per_second)
        sampled = sampled[face.found[sampled]]  # frames whose face the mesh found
        similarities = (
            scores.embed_frames(self.identity, video.frames, face, sampled) @ reference.embedding
            if len(sampled)
            else np.zeros(0)
        )
        curve = scores.identity_curve(similarities, sampled)
        return {**described, "per_second": self.config.identity_per_second, **curve}

    def _stability(self, video: Decoded, face: scores.TrackedFace) -> dict:
        return {
            "num_faces": face.num_faces,
            "found_share": float(face.found.mean()),
            **scores.against_real_speech(
                scores.landmark_jitter(face.landmarks, face.found, video.size),
                scores.mouth_statistics(face.landmarks, face.found, video.size),
            ),
        }


def evaluate_videos(
    videos: list[str],
    out: str | Path,
    config: EvaluationConfig,
    reference: str | None = None,
    speech: str | None = None,
) -> tuple[list[dict], dict]:
    """Evaluate each video into OUT/NAME.json, then OUT/summary.json and OUT/index.html; returns
    the reports and the summary. A reference without a face or unreadable speech is the user's to
    fix (ValueError)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(config)
    try:
        face = evaluator.reference(reference) if reference is not None else None
    except EvaluationError as error:
        raise ValueError(f"--reference {reference}: {error.reason}: {error.detail}") from error
    if speech is not None:
        try:
            speech_on_grid(speech, 1)  # unreadable speech would fail every video: say so once, before any
        except EvaluationError as error:
            raise ValueError(error.detail) from error
    reports = []
    for video in videos:
        log.info("evaluating %s", video)
        reports.append(evaluator.evaluate(video, face, speech))
    names = output.file_names(reports)
    for data, name in zip(reports, names):
        output.write_json(folder / name, data)
    summary = {
        "videos": {name: data["video"] for data, name in zip(reports, names)},
        "errors": sum(data["error"] is not None for data in reports),
        "sync_pooled": evaluator.pooled_sync(),
        **evaluator.paper.summary(),
    }
    output.write_json(folder / "summary.json", summary)
    page = output.html_page(reports, names, folder, summary, evaluator.rules.min_confidence)
    (folder / "index.html").write_text(page)
    return reports, summary
