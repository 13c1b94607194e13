"""Train the learned lip-sync model (stages/lip_sync.py) on a curation run's shards.

    talkcurate train-sync SHARDS... --out lip_sync.npz [--steps N] [--seed S]

SHARDS are run folders or sample lists (`talkcurate subset --list`): each kept clip gives its
face-mesh landmarks (KEY.face.npz) and its in-sync audio (KEY.wav), exactly what the model reads.
Clips with more than one face are skipped (which face speaks is what the model is to find).

Each step takes windows of `window_frames` frames from random clips. The video stream embeds the
window's frames, the audio stream the window's audio with `max_offset_frames` more on each side;
the window's agreement with its audio at each offset, and with other clips' audio, are the logits
of a classification whose answer is offset 0 (InfoNCE over offsets, as SyncNet's offset search).
Audio gets noise at a random signal-to-noise ratio and the mouth a random size and jitter, so
the model leans on timing rather than on one recording's sound or one face.

Reproducible from the seed: training runs on one thread, so the same shards and seed give the
same weights on any machine with the same torch build.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch import nn

from schemas.face import NUM_LANDMARKS, decode_face_npz
from schemas.manifest import MEMBER_AUDIO, MEMBER_FACE
from schemas.records import SAMPLE_RATE
from stages import lip_sync
from stages.lip_sync import MEL_BANDS, MEL_PER_FRAME, RIGID_POINTS, VIDEO_FEATURES, log_mel, mouth_shape, pixel_points
from stages.sync_models import SAMPLES_PER_FRAME
from train.data import ShardReader, dataset_source, list_samples

log = logging.getLogger(__name__)


@dataclass
class SyncTrainingConfig:
    """How the lip-sync model is trained; the defaults made the shipped weights."""

    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 32
    """Windows per step."""
    window_frames: int = 20
    """Frames of a training window (0.8 s)."""
    max_offset_frames: int = 10
    """Offsets on each side that a window is told apart from."""
    foreign_audio: int = 4
    """Other windows' audio (of other clips) each window is also told apart from."""
    learning_rate: float = 2e-3
    """AdamW's peak learning rate (cosine decay after a 5% warm-up)."""
    weight_decay: float = 1e-3
    """AdamW's weight decay."""
    hidden: int = 32
    """Channels of both streams' hidden layers."""
    audio_hidden: int = 24
    """Channels of the audio stream's first layer, at 100 Hz."""
    embedding: int = 16
    """Width of the per-frame embeddings."""
    min_snr_db: float = 5.0
    """The noise added to the audio is between this and 40 dB below it."""
    seed: int = 0
    """Seed of the initial weights, the windows and the augmentation."""
    version: str = "v1"
    """Version written into the weight file; the manifest's sync_backend names it."""


class LipSyncNet(nn.Module):
    """The network of stages/lip_sync.py in torch: same layers, same layout, exported by `export`."""

    def __init__(self, config: SyncTrainingConfig):
        super().__init__()
        h, d = config.hidden, config.embedding
        self.video = nn.ModuleList([nn.Conv1d(VIDEO_FEATURES, h, 5, padding=2), nn.Conv1d(h, h, 5, padding=2), nn.Conv1d(h, d, 3, padding=1)])
        self.audio = nn.ModuleList([nn.Conv1d(MEL_BANDS, config.audio_hidden, 5, padding=2),
                                    nn.Conv1d(MEL_PER_FRAME * config.audio_hidden, h, 5, padding=2), nn.Conv1d(h, d, 3, padding=1)])
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    @staticmethod
    def _stream(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(layers):
            x = layer(x)
            if i < len(layers) - 1:
                x = torch.relu(x)
        return nn.functional.normalize(x, dim=1)

    def embed_video(self, mouth: torch.Tensor) -> torch.Tensor:
        """(B, T, VIDEO_FEATURES) -> (B, D, T)."""
        return self._stream(self.video, mouth.transpose(1, 2))

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 4T, MEL_BANDS) -> (B, D, T): a frame's four 10 ms steps side by side after the first layer."""
        x = torch.relu(self.audio[0](mel.transpose(1, 2)))
        b, c, steps = x.shape
        x = x.transpose(1, 2).reshape(b, steps // MEL_PER_FRAME, MEL_PER_FRAME * c).transpose(1, 2)
        return self._stream(self.audio[1:], x)


def export(model: LipSyncNet, template: np.ndarray, version: str, path: str | Path) -> None:
    """Write the weights in stages/lip_sync.py's format (float16 halves the file; inference is float32)."""
    arrays = {name: p.detach().cpu().numpy().astype(np.float16) for name, p in model.state_dict().items() if name != "log_scale"}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, format=np.array(lip_sync.FORMAT), version=np.array(version), template=template.astype(np.float32), **arrays)


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
            clips.append(TrainingClip(track.landmarks[:frames], sample.width, sample.height, audio[: frames * SAMPLES_PER_FRAME], sample.source_id))
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


class Windows:
    """Random training windows with their widened audio, augmented."""

    def __init__(self, clips: list[TrainingClip], template: np.ndarray, config: SyncTrainingConfig, rng: np.random.Generator):
        need = config.window_frames + 2 * config.max_offset_frames
        self.clips = [c for c in clips if len(c.landmarks) >= need]
        if len(self.clips) < 2:
            raise ValueError(f"training needs at least 2 single-face clips of {need} frames or more; found {len(self.clips)}")
        self.mouths = [mouth_shape(c.landmarks, c.width, c.height, template) for c in self.clips]
        self.config, self.rng = config, rng
        lengths = np.array([len(c.landmarks) - need + 1 for c in self.clips], np.float64)
        self.weights = lengths / lengths.sum()  # every window position equally likely

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, rng = self.config, self.rng
        m, length = cfg.max_offset_frames, cfg.window_frames
        mouths, mels = [], []
        for i in rng.choice(len(self.clips), size=cfg.batch_size, p=self.weights):
            clip = self.clips[i]
            start = int(rng.integers(m, len(clip.landmarks) - length - m + 1))
            mouth = self.mouths[i][start : start + length] * rng.uniform(0.7, 1.3)
            mouths.append(mouth + rng.normal(0.0, 0.02 * mouth.std() + 1e-6, mouth.shape))
            audio = clip.audio[(start - m) * SAMPLES_PER_FRAME : (start + length + m) * SAMPLES_PER_FRAME].astype(np.float64)
            power = max(np.mean(audio**2), 1.0)
            snr_db = rng.uniform(cfg.min_snr_db, 40.0)
            audio = audio + rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), audio.shape)
            mels.append(log_mel(np.clip(audio, -32768, 32767).astype(np.int16)))
        return torch.from_numpy(np.stack(mouths).astype(np.float32)), torch.from_numpy(np.stack(mels))


def window_logits(model: LipSyncNet, video: torch.Tensor, audio: torch.Tensor, max_offset: int, foreign: int) -> torch.Tensor:
    """(B, 2 * max_offset + 1 + foreign) logits: each window against its audio at every offset
    (offset 0 in the middle), then against the centred audio of the next `foreign` windows."""
    length = video.shape[2]
    own = torch.stack([(video * audio[:, :, j : j + length]).sum(1).mean(1) for j in range(2 * max_offset + 1)], dim=1)
    centred = audio[:, :, max_offset : max_offset + length]
    others = [(video * centred.roll(k, dims=0)).sum(1).mean(1) for k in range(1, foreign + 1)]
    return model.log_scale.exp() * torch.cat([own, torch.stack(others, dim=1)], dim=1) if others else model.log_scale.exp() * own


def train(shards: list[str], out: str | Path, config: SyncTrainingConfig) -> dict:
    """Train on `shards`, write the weight file to `out`; returns the run's summary (also written
    beside it as OUT.json)."""
    started = time.perf_counter()
    torch.set_num_threads(1)  # float sums in one order: the same weights from the same seed anywhere
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    clips = read_clips(shards)
    template = procrustes_template(clips)
    windows = Windows(clips, template, config, rng)
    model = LipSyncNet(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.steps))))
    target = torch.full((config.batch_size,), config.max_offset_frames)
    foreign = min(config.foreign_audio, config.batch_size - 1)
    losses, accuracies = [], []
    for step in range(config.steps):
        mouth, mel = windows.batch()
        logits = window_logits(model, model.embed_video(mouth), model.embed_audio(mel), config.max_offset_frames, foreign)
        loss = nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        accuracies.append(float((logits.argmax(1) == target).float().mean()))
        if (step + 1) % max(1, config.steps // 10) == 0:
            log.info("step %d/%d: loss %.3f, windows right %.0f%%", step + 1, config.steps,
                     np.mean(losses[-50:]), 100 * np.mean(accuracies[-50:]))
    export(model, template, config.version, out)
    summary = {
        "version": config.version, "seed": config.seed, "steps": config.steps, "shards": list(shards),
        "clips": len(windows.clips), "sources": len({c.source_id for c in windows.clips}),
        "frames": int(sum(len(c.landmarks) for c in windows.clips)),
        "first_loss": float(np.mean(losses[:50])), "last_loss": float(np.mean(losses[-50:])),
        "last_window_accuracy": float(np.mean(accuracies[-50:])), "seconds": round(time.perf_counter() - started, 1),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
    }
    Path(f"{out}.json").write_text(json.dumps(summary, indent=1))
    return summary
