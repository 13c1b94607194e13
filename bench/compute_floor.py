"""The compute floor of a run: what its inputs and clips cost at the least, each part timed alone.

* decode: one threaded PyAV decode of each input (video and audio, no conversion);
* the model calls the run's configuration really needs, on the clips the run really produced
  (read from its manifest), with the stages' own model wrappers, options and frame sizes:
  face detection (mediapipe and RetinaFace on the frames the face stage runs them on) and face
  mesh landmarks on every frame of the candidate clips (those that reached the face stage), the
  voice-activity gate and Whisper (and the encoder when features are stored) on the audio of the
  clips that reached transcription, and one H.264 encode of each kept clip.

Frames and audio for the model calls come from the normalize stage itself (the analysis frames
the face stage sees, the pictures the clip encoder gets); only the calls are timed. Floor wall =
max(decode wall, total CPU s / cores): no schedule beats decoding each input once, or keeping
every core busy with nothing but this work.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from core.media_io import open_container, video_stream
from pipeline.config import RunConfig
from pipeline.definition import ALL_STAGES
from pipeline.runner import ChainRunner
from schemas.records import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, SourceChunk, SourceVideo, Status
from stages.clip_encoder import ClipEncoder
from stages.face import IDENTITY_KEYPOINTS, FaceStage
from stages.face_models import Detection, FaceDetector, FaceMesh, MediapipeDetector, RetinaFaceDetector, quiet_stderr
from stages.transcribe import TranscribeStage
from stages.whisper_models import voiced_spans


def decode_inputs(files: list[str]) -> dict:
    """Wall and CPU seconds of one threaded decode (video and audio packets to frames) of each file."""
    per_file, failed = {}, {}
    for path in files:
        wall, cpu = time.perf_counter(), time.process_time()
        frames = 0
        try:
            with open_container(path) as container:
                video = video_stream(container)
                streams = [s for s in (video, *container.streams.audio[:1]) if s is not None]
                if video is not None:
                    video.thread_type = "AUTO"
                for packet in container.demux(streams):
                    for frame in packet.decode():
                        frames += isinstance(frame, av.VideoFrame)
        except (av.error.FFmpegError, OSError) as exc:
            failed[path] = f"{type(exc).__name__}: {exc}"  # still timed: the pipeline meets the same file
        per_file[path] = {
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "video_frames": frames,
        }
    return {
        "wall_s": sum(f["wall_s"] for f in per_file.values()),
        "cpu_s": sum(f["cpu_s"] for f in per_file.values()),
        "video_frames": sum(f["video_frames"] for f in per_file.values()),
        "per_file": per_file,
        "failed": failed,
    }


class CallTimer:
    """Wall and CPU seconds (all threads of this process) per kind of model call, and how much
    each kind processed (`unit`: frames, clips, seconds of audio)."""

    def __init__(self):
        self.parts: dict[str, dict] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, items: float, unit: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        part = self.parts.setdefault(name, {"unit": unit, "calls": 0, "items": 0, "wall_s": 0.0, "cpu_s": 0.0})
        part["calls"] += 1
        part["items"] += items
        part["wall_s"] += time.perf_counter() - wall
        part["cpu_s"] += time.process_time() - cpu


@dataclass
class _Timed:
    """A face detector whose calls the floor times, in the face stage's own detection loop."""

    detector: FaceDetector
    timer: CallTimer
    part: str

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        with self.timer(self.part, len(frames), "frames"):
            return self.detector.detect(frames)


@dataclass
class ClipPlan:
    """What the floor must do for one clip of the run's manifest."""

    start_frame: int
    num_frames: int
    faces: bool  # reached the face stage
    mesh: bool  # the face stage meshed its face (the row has its head pose)
    identity: bool  # the face stage embedded its face (the row has its identity consistency)
    speech: bool  # reached transcription
    audio_shift: int  # samples the sync stage moved the clip's audio by, so Whisper hears what the stage's did
    encode: bool  # kept
    frames: list = field(default_factory=list)  # analysis frames, while they stream by
    pictures: list = field(default_factory=list)  # encoder input (kept clips only)

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.num_frames


def _stage_order(name: str | None) -> int:
    names = [cls.name for cls in ALL_STAGES]
    return names.index(name) if name in names else len(names)


def plan_clips(manifest: Path) -> dict[str, list[ClipPlan]]:
    """Per source (by source_id: the manifest names a source relative to its input), the clips of a
    run's manifest that reached the face stage, with what each needs."""
    import pyarrow.parquet as pq

    # A row carries what the face stage measured before its rules decided (null: not measured), so
    # the head pose says the face was meshed and the identity consistency that it was embedded.
    columns = [
        "source_id",
        "start_s",
        "num_frames",
        "status",
        "rejected_by",
        "sync_offset_ms",
        "head_yaw",
        "identity_consistency",
    ]
    rows = pq.read_table(manifest, columns=columns).to_pylist()
    plans: dict[str, list[ClipPlan]] = defaultdict(list)
    for row in rows:
        kept = row["status"] == Status.KEPT.value
        reached = len(ALL_STAGES) if kept else _stage_order(row["rejected_by"])
        if reached < _stage_order(FaceStage.name) or not row["num_frames"]:
            continue
        plans[row["source_id"]].append(
            ClipPlan(
                start_frame=round(row["start_s"] * FPS),
                num_frames=row["num_frames"],
                faces=True,
                mesh=row["head_yaw"] is not None,
                identity=row["identity_consistency"] is not None,
                speech=reached >= _stage_order(TranscribeStage.name),
                encode=kept,
                audio_shift=round((row["sync_offset_ms"] or 0.0) * SAMPLE_RATE / 1000),  # as the sync stage rounds it
            )
        )
    for clips in plans.values():
        clips.sort(key=lambda c: c.start_frame)
    return plans


class ModelFloor:
    """Times the model calls the run's configuration makes, on frames and audio the normalize stage decodes."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.face: FaceStage = config.stages[FaceStage.name]
        self.tracker = self.face.tracker()  # the stage's detection schedule and mesh crops, run on timed detectors
        self.transcribe: TranscribeStage = config.stages[TranscribeStage.name]
        self.timer = CallTimer()
        self.load_s: dict[str, float] = {}
        started = time.perf_counter()
        self.mediapipe = _Timed(
            MediapipeDetector(self.face.min_detection_confidence), self.timer, "face detection: mediapipe"
        )
        self.retinaface = _Timed(
            RetinaFaceDetector(self.face.min_detection_confidence, self.face.retinaface_max_side),
            self.timer,
            "face detection: retinaface",
        )
        self.identity, _ = self.face.identity_model()
        self.load_s["face"] = time.perf_counter() - started
        started = time.perf_counter()
        self.whisper = self.transcribe.load_model()
        self.load_s["whisper"] = time.perf_counter() - started

    def measure_source(self, uri: str, clips: list[ClipPlan]) -> None:
        ingest = ChainRunner([self.config.stages["probe"], self.config.stages["chunk"]])
        for chunk in ingest.run(SourceVideo.from_uri(uri)):
            if isinstance(chunk, SourceChunk):
                inside = [c for c in clips if chunk.start_frame <= c.start_frame < chunk.end_frame]
                if inside:
                    self._measure_chunk(chunk, inside)

    def _measure_chunk(self, chunk: SourceChunk, clips: list[ClipPlan]) -> None:
        normalized = self.config.stages["normalize"].process(chunk)
        by_frame = {f: clip for clip in clips for f in range(clip.start_frame, clip.end_frame)}
        for frame in normalized.frames():
            clip = by_frame.get(frame.index)
            if clip is None:
                continue
            clip.frames.append(frame.analysis)
            if clip.encode:
                clip.pictures.append(frame.picture)
            if frame.index + 1 == clip.end_frame:
                self._faces(clip)
                if clip.encode:
                    self._encode(clip, normalized)
                clip.frames, clip.pictures = [], []
        margin = self.config.stages["scene_cut"].audio_context_frames
        for clip in clips:
            if clip.speech:
                # The corrected audio, as CandidateClip.audio reads it from the context around the clip.
                context, _ = normalized.audio(clip.start_frame - margin, clip.end_frame + margin)
                start = margin * SAMPLES_PER_FRAME + clip.audio_shift
                self._speech(context[start : start + clip.num_frames * SAMPLES_PER_FRAME])

    def _faces(self, clip: ClipPlan) -> None:
        frames = clip.frames
        min_coverage = self.face.min_face_coverage if self.face.early_stop else 0.0
        detections = self.tracker.detect_faces(frames, self.mediapipe, self.retinaface, min_coverage).faces
        if not clip.mesh:
            return
        crops = [
            self.tracker.mesh_crop(frame, box)[0]
            for frame, box in zip(frames, _largest_face_boxes(detections))
            if box is not None
        ]
        with quiet_stderr():
            mesh = FaceMesh(self.face.min_detection_confidence)
            try:
                with self.timer("face landmarks: mesh", len(crops), "frames"):
                    landmarks = [mesh.landmarks(crop) for crop in crops]
            finally:
                mesh.close()
        if not clip.identity:
            return
        # The identity model on the clip's sampled frames (here their mesh crops), as the face stage samples them.
        meshed = [(crop, points) for crop, points in zip(crops, landmarks) if points is not None]
        picks = self.face.identity_picks(len(meshed))
        faces = [(meshed[i][0], meshed[i][1][IDENTITY_KEYPOINTS, :2] * meshed[i][0].shape[1::-1]) for i in picks]
        if faces:
            with self.timer(f"face identity: {self.identity.name}", len(faces), "frames"):
                self.identity.embed(faces)

    def _encode(self, clip: ClipPlan, normalized) -> None:
        encoder = ClipEncoder(normalized.width, normalized.height, normalized.encoder)
        with self.timer("encode: x264", len(clip.pictures), "frames"):
            for picture in clip.pictures:
                encoder.add(picture)
            encoder.finish()

    def _speech(self, audio: np.ndarray) -> None:
        seconds = len(audio) / SAMPLE_RATE
        spans = None
        if self.transcribe.vad:
            with self.timer("speech: VAD", seconds, "audio s"):
                spans = voiced_spans(audio)
            if not spans:
                return  # the stage rejects the clip without decoding
        with self.timer("speech: whisper", seconds, "audio s"):
            self.whisper.transcribe(audio, spans)
        if self.transcribe.store_features:
            with self.timer("speech: whisper encoder (features)", seconds, "audio s"):
                self.whisper.encode(audio)


def _largest_face_boxes(detections) -> list[np.ndarray | None]:
    """Per frame, the largest detected face's box; frames without one take the nearest earlier
    frame's (or the first later one's), as the face stage bridges gaps in a track."""
    boxes = [
        max(faces, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])).box if faces else None
        for faces in detections
    ]
    known = [i for i, b in enumerate(boxes) if b is not None]
    if not known:
        return boxes
    filled, last = [], boxes[known[0]]
    for box in boxes:
        last = box if box is not None else last
        filled.append(last)
    return filled


def combine_floors(floors: list[dict]) -> dict:
    """The floor of several cases' inputs run together: their parts added up, the wall taken
    again from the totals (one decode of every input, or all the CPU work spread on the cores)."""
    cores = floors[0]["cores"]
    decode = {key: sum(f["decode"][key] for f in floors) for key in ("wall_s", "cpu_s", "video_frames")}
    models: dict[str, dict] = {}
    for floor in floors:
        for name, part in floor["models"].items():
            total = models.setdefault(name, {**part, "calls": 0, "items": 0, "wall_s": 0.0, "cpu_s": 0.0})
            for key in ("calls", "items", "wall_s", "cpu_s"):
                total[key] += part[key]
    cpu = decode["cpu_s"] + sum(p["cpu_s"] for p in models.values())
    return {
        "decode": decode,
        "models": models,
        "clips": {key: sum(f["clips"][key] for f in floors) for key in floors[0]["clips"]},
        "cores": cores,
        "cpu_s": cpu,
        "wall_s": max(decode["wall_s"], cpu / cores),
    }


def measure_floor(files: list[str], run_dir: str, overrides: list[str]) -> dict:
    """The whole floor of one case; meant for a fresh process whose thread settings match a Ray
    worker's (see bench.py), so model calls run as they do in the stages."""
    import logging
    import os

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = RunConfig.load(None, overrides)
    cores = config.execution.num_cpus or os.cpu_count() or 1
    decode = decode_inputs(files)
    models = ModelFloor(config)
    plans = plan_clips(Path(run_dir) / "manifest.parquet")
    uris = {SourceVideo.from_uri(uri).source_id: uri for uri in files}
    for source_id, clips in plans.items():
        models.measure_source(uris[source_id], clips)
    parts = dict(models.timer.parts)
    total_cpu = decode["cpu_s"] + sum(p["cpu_s"] for p in parts.values())
    return {
        "decode": decode,
        "models": parts,
        "model_load_s": models.load_s,
        "clips": {
            "faces": sum(len(c) for c in plans.values()),
            "speech": sum(c.speech for cs in plans.values() for c in cs),
            "encode": sum(c.encode for cs in plans.values() for c in cs),
        },
        "cores": cores,
        "cpu_s": total_cpu,
        "wall_s": max(decode["wall_s"], total_cpu / cores),
    }
