"""Talking-portrait generation from a trained run: a portrait image, speech of any length, an
optional caption -> an H.264 mp4 at 25 fps with the speech muxed, exactly as long as the speech.

The speech is encoded by the pipeline's Whisper once (its features at 50 Hz are small even for an
hour), each video frame takes its Whisper window as in training, and the latent video is denoised
window by window (train/denoising.py): finished frames are decoded and written as they come, so
memory does not grow with the speech's length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from core.config import option
from core.media_io import decode_audio
from schemas.records import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from schemas.text import frame_feature_window
from train.checkpoint import Checkpointer
from train.config import JobConfig, load_config, model_config
from train.denoising import SamplerConfig, guided, sliding_denoise
from train.editing import ReferenceVideo, fit_frame, to_tensor
from train.latents import LatentSpace, build_latent_space
from train.model import Conditions, TalkingDiT
from train.text_encoder import TextEncoder

log = logging.getLogger(__name__)


@dataclass
class WindowConfig:
    """How a long clip is cut into windows denoised together."""

    frames: int = option(16, "Video frames denoised together (a window).")
    overlap: int = option(
        5, "Frames a window shares with the one before, blended at every step (SkyReels-Audio: 13-17 at 25 fps)."
    )


@dataclass
class Trained:
    config: JobConfig
    model: TalkingDiT
    latents: LatentSpace
    text: TextEncoder


def build(config: JobConfig, device: str = "cpu") -> Trained:
    """The run's latent space, caption encoder and model, with the model freshly initialised."""
    latents = build_latent_space(config.latents).to(device).eval().requires_grad_(False)
    text = TextEncoder(config.text, device)
    model = TalkingDiT(model_config(config.model, latents, text.dim))
    return Trained(config, model.to(device).eval().requires_grad_(False), latents, text)


def load_trained(run: str | Path, step: int | None = None, device: str = "cpu") -> Trained:
    """The model of a training run folder (its config.toml and checkpoints/step-N), on one process."""
    run = Path(run)
    if not (run / "config.toml").is_file():
        raise FileNotFoundError(f"{run} is not a training run folder (no config.toml)")
    checkpoints = Checkpointer(run / "checkpoints")
    step = checkpoints.latest() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run / 'checkpoints'} holds no step-N checkpoint")
    trained = build(load_config(run / "config.toml"), device)
    state = {"model": trained.model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoints.folder / f"step-{step}"))
    trained.model.load_state_dict(state["model"])
    log.info("loaded %s step %d", run, step)
    return trained


def read_portrait(path: str | Path, height: int, width: int) -> torch.Tensor:
    """(1, 3, height, width) in [-1, 1]: the image scaled to cover the size and centre-cropped."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not an image OpenCV can read")
    return to_tensor(fit_frame(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), height, width)[None])


class _Writer:
    """H.264 frames as they come, then the speech as AAC; 25 fps."""

    def __init__(self, path: Path, width: int, height: int):
        self.container = av.open(str(path), mode="w")
        self.video = self.container.add_stream("libx264", rate=FPS, options={"crf": "18", "preset": "veryfast"})
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.audio = self.container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self.frames = 0

    def add(self, frames: torch.Tensor) -> None:
        """(T, 3, H, W) in [-1, 1]."""
        pixels = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for picture in pixels:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, FPS)
            self.container.mux(self.video.encode(frame))
            self.frames += 1

    def finish(self, speech: np.ndarray) -> None:
        """Flush the video, then mux `speech` (int16 mono, cut to the video's length)."""
        self.container.mux(self.video.encode(None))
        speech = np.ascontiguousarray(speech[: self.frames * SAMPLES_PER_FRAME])
        frame = av.AudioFrame.from_ndarray(speech[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, 0, Fraction(1, SAMPLE_RATE)
        self.container.mux(self.audio.encode(frame))
        self.container.mux(self.audio.encode(None))
        self.container.close()


def generate(
    trained: Trained,
    portrait: str | Path | None,
    speech_path: str | Path,
    out: str | Path,
    text: str = "",
    sampler: SamplerConfig | None = None,
    window: WindowConfig | None = None,
    seed: int = 0,
    progress: bool = False,
    reference_video: str | Path | None = None,
) -> int:
    """Write the video; returns its frame count (the speech's duration times 25, rounded).

    With `reference_video`, edit it: only the mouth region of its frames is generated, the rest of
    every frame is the video's own (train/editing.py); the identity is `portrait`, or the video's
    first frame without one."""
    sampler, window = sampler or SamplerConfig(), window or WindowConfig()
    model, latents = trained.model, trained.latents
    if latents.temporal_compression != 1:
        raise ValueError("sliding-window generation works on latent spaces without temporal compression (pixel space)")
    if portrait is None and reference_video is None:
        raise ValueError("give a portrait image, a reference video, or both")
    from stages.whisper_models import FasterWhisperModel

    speech = decode_audio(str(speech_path))
    total = int(round(len(speech) / SAMPLES_PER_FRAME))
    if total < 1:
        raise ValueError(f"{speech_path}: shorter than one frame")
    features = FasterWhisperModel().encode(speech)
    audio = torch.from_numpy(np.stack([frame_feature_window(features, f, FPS) for f in range(total)])).float()[None]
    height, width = trained.config.data.resolution
    device = next(model.parameters()).device
    editing = ReferenceVideo(reference_video, height, width) if reference_video is not None else None
    identity = read_portrait(portrait, height, width) if portrait is not None else to_tensor(editing.window(0, 1)[0])
    with torch.no_grad():
        reference = latents.encode_image(identity.to(device))
        caption, caption_mask = trained.text([text])
    _, channels, h, w = reference.shape

    def velocity_for(start: int, length: int):
        cond = Conditions(
            text=caption,
            text_mask=caption_mask,
            audio=audio[:, start : start + length].to(device),
            reference=reference,
            reference_keep=torch.ones(1, device=device),
        )
        return guided(model, cond, sampler.text_scale, sampler.audio_scale)

    def noise_for(start: int, length: int) -> torch.Tensor:
        return torch.stack(
            [
                torch.randn(1, channels, h, w, generator=torch.Generator().manual_seed(seed * 1_000_003 + f))
                for f in range(start, start + length)
            ],
            dim=2,
        ).to(device)

    def known_for(start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, masks = editing.window(start, length)
        clean = latents.encode(to_tensor(frames).transpose(0, 1)[None].to(device)).float()
        # a latent cell is regenerated when any of its pixels is
        cells = torch.nn.functional.max_pool2d(torch.from_numpy(masks).float()[:, None], latents.spatial_compression)
        return clean, cells.transpose(0, 1)[None].to(device)

    writer = _Writer(Path(out), width, height)

    def emit(part: torch.Tensor) -> None:
        frames = latents.decode(part)[0].transpose(0, 1).float().cpu()
        if editing is not None:
            kept, masks = editing.window(writer.frames, len(frames))
            regenerate = torch.from_numpy(masks)[:, None].float()
            frames = regenerate * frames + (1 - regenerate) * to_tensor(kept)
        writer.add(frames)

    with torch.no_grad():
        sliding_denoise(
            velocity_for,
            noise_for,
            total,
            window.frames,
            window.overlap,
            sampler,
            emit,
            progress=progress,
            known_for=known_for if editing is not None else None,
        )
    writer.finish(speech)
    return writer.frames
