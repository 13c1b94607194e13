"""Train the learned lip-sync model (stages/lip_sync.py) on a curation run's shards.

    talkcurate train-sync SHARDS... --out lip_sync.npz [--components K] [--context-steps S] [--ridge R]

SHARDS are run folders or sample lists (`talkcurate subset --list`): each kept clip gives its
face-mesh landmarks (KEY.face.npz) and its in-sync audio (KEY.wav), exactly what the model reads.
Clips with more than one face are skipped (which face speaks is what the model is to find).

The fit has a closed form, so it takes seconds and involves no randomness: the same shards give
the same weights. A canonical face (generalized Procrustes over the rigid points of every frame)
aligns the mouths; their principal components of motion are what the regressor predicts; ridge
regression maps each frame's pooled log-mel context onto them.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from core.config import option
from schemas.face import NUM_LANDMARKS, decode_face_npz
from schemas.manifest import MEMBER_AUDIO, MEMBER_FACE
from schemas.records import SAMPLE_RATE, SAMPLES_PER_FRAME
from stages import lip_sync
from stages.lip_sync import RIGID_POINTS, audio_features, mouth_shape, pixel_points
from train.data import ShardReader, dataset_source, list_samples

log = logging.getLogger(__name__)


@dataclass
class SyncTrainingConfig:
    """How the lip-sync model is fitted; the defaults made the shipped weights."""

    components: int = option(
        6,
        "Principal components of mouth motion the audio predicts (the first few carry opening, width and "
        "rounding; later ones are mostly noise and person-specific).",
    )
    context_steps: int = option(
        5, "20 ms audio steps on each side of a frame that the regressor reads (5: 140 ms in all)."
    )
    ridge: float = option(
        0.3,
        "Ridge penalty per frame of training data, on standardized audio features (larger: smoother, less fitted "
        "to the training people).",
    )
    null_bank_frames: int = option(
        6000,
        "Frames of mouth predicted from the training audio stored with the weights: the other people's speech a "
        "clip's mouth is compared with to know what chance reaches (6000: 4 minutes).",
    )
    version: str = option("v2", "Version written into the weight file; the manifest's sync_backend names it.")


@dataclass
class TrainingClip:
    landmarks: np.ndarray  # (T, 478, 3)
    width: int
    height: int
    audio: np.ndarray  # int16, T * 640 samples, in sync
    source_id: str


def read_clips(shards: list[str]) -> list[TrainingClip]:
    """The single-face kept clips of the runs or sample lists `shards`."""
    clips = []
    for source in shards:
        reader = ShardReader(dataset_source(source)[0])
        for sample in list_samples(source):
            if sample.num_faces != 1:
                continue
            members = reader.read(sample.shard, sample.key, [MEMBER_FACE, MEMBER_AUDIO])
            track = decode_face_npz(members[MEMBER_FACE])
            audio = _wav_samples(members[MEMBER_AUDIO])
            frames = min(track.num_frames, len(audio) // SAMPLES_PER_FRAME)
            clips.append(
                TrainingClip(
                    track.landmarks[:frames],
                    sample.width,
                    sample.height,
                    audio[: frames * SAMPLES_PER_FRAME],
                    sample.source_id,
                )
            )
    return clips


def _wav_samples(data: bytes) -> np.ndarray:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    if rate != SAMPLE_RATE:
        raise ValueError(f"KEY.wav at {rate} Hz, expected {SAMPLE_RATE}")
    return samples.reshape(-1)


def procrustes_template(clips: list[TrainingClip], iterations: int = 3) -> np.ndarray:
    """The mean rigid-point shape of every frame (generalized Procrustes), RMS radius 1."""
    rigid = np.concatenate([pixel_points(c.landmarks, c.width, c.height)[:, RIGID_POINTS] for c in clips])
    points = np.zeros((len(rigid), NUM_LANDMARKS, 3))  # `align` takes whole meshes; only the rigid points matter here
    points[:, RIGID_POINTS] = rigid
    template = rigid[0] - rigid[0].mean(axis=0)
    for _ in range(iterations):
        template = template / np.sqrt((template**2).sum(axis=1).mean())
        template = lip_sync.align(points, template)[:, RIGID_POINTS].mean(axis=0)
        template -= template.mean(axis=0)
    return template / np.sqrt((template**2).sum(axis=1).mean())


def fit(clips: list[TrainingClip], config: SyncTrainingConfig) -> tuple[dict[str, np.ndarray], dict]:
    """The model's arrays and the fit's figures (explained variance of each component)."""
    template = procrustes_template(clips)
    mouths = [mouth_shape(c.landmarks, c.width, c.height, template) for c in clips]
    features = [audio_features(c.audio, config.context_steps) for c in clips]
    mouth = np.concatenate(mouths).astype(np.float64)
    audio = np.concatenate(features).astype(np.float64)
    basis = np.linalg.svd(mouth - mouth.mean(axis=0), full_matrices=False)[2][: config.components]
    basis *= np.sign(basis.sum(axis=1, keepdims=True))  # one sign for each component, whatever the SVD's
    target = mouth @ basis.T
    target /= target.std(axis=0)  # each component weighs the same in the fit
    mean, scale = audio.mean(axis=0), audio.std(axis=0) + 1e-6
    x = (audio - mean) / scale
    weights = np.linalg.solve(x.T @ x + config.ridge * len(x) * np.eye(x.shape[1]), x.T @ target)
    predicted = x @ weights
    explained = 1.0 - ((predicted - target) ** 2).mean(axis=0) / target.var(axis=0)
    arrays = {
        "template": template,
        "mouth_basis": basis,
        "audio_mean": mean,
        "audio_scale": scale,
        "weights": weights,
        "context_steps": np.array(config.context_steps),
        "null_bank": predicted[: config.null_bank_frames],
    }
    return arrays, {"explained_variance": [round(float(v), 4) for v in explained]}


def export(arrays: dict[str, np.ndarray], version: str, path: str | Path) -> None:
    """Write the model in stages/lip_sync.py's format."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stored = {
        name: a.astype(np.float16 if name == "null_bank" else np.float32) if a.dtype.kind == "f" else a
        for name, a in arrays.items()
    }
    with open(path, "wb") as f:
        np.savez_compressed(f, format=np.array(lip_sync.FORMAT), version=np.array(version), **stored)


def train(shards: list[str], out: str | Path, config: SyncTrainingConfig) -> dict:
    """Fit on `shards`, write the weight file to `out`; returns the fit's summary (also written
    beside it as OUT.json)."""
    started = time.perf_counter()
    clips = read_clips(shards)
    if len(clips) < 2:
        raise ValueError(f"training needs at least 2 single-face clips; found {len(clips)} in {', '.join(shards)}")
    arrays, figures = fit(clips, config)
    export(arrays, config.version, out)
    summary = {
        "version": config.version,
        "shards": list(shards),
        "clips": len(clips),
        "sources": len({c.source_id for c in clips}),
        "frames": int(sum(len(c.landmarks) for c in clips)),
        **figures,
        "seconds": round(time.perf_counter() - started, 1),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
    }
    log.info(
        "lip-sync model %s: %d clips, explained variance %s", config.version, len(clips), figures["explained_variance"]
    )
    Path(f"{out}.json").write_text(json.dumps(summary, indent=1))
    return summary
