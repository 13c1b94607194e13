"""The latent space the diffusion model works in, behind one interface, and how video frames map to
latent frames.

Two kinds:

* `PixelSpace` (the tiny preset's): pixels folded space-to-depth, `factor` x `factor` pixel blocks
  into channels, so a 64 x 64 RGB frame becomes 16 x 16 cells of 48 channels at factor 4. Lossless
  and exact to invert, no weights to train or ship, and the small model sees few tokens: with
  patch (1, 2, 2) a token covers 8 x 8 pixels. Frames stay frames (temporal compression 1).
* `ExportedVAE`: a pretrained video autoencoder (Wan's VAE, for the Wan presets) loaded from a
  folder holding `encoder.pt2` and `decoder.pt2` (`torch.export` programs, so no model code is
  needed to run them) and `latent_space.json` with its channels and compressions. `export_vae`
  writes that folder from any pair of encoder/decoder modules, e.g. diffusers' `AutoencoderKLWan`
  wrapped so that `encode` returns the normalized latent mean. Encoding must already apply the
  VAE's latent normalization: the diffusion model expects roughly unit-variance latents.

Latent frames: a VAE that compresses time by c either maps c video frames to each latent frame,
or (causal, like Wan's) the first frame alone to the first latent frame and c frames to each later
one (T = 1 + c (T' - 1)). `group_frames` gives every latent frame its video frames, which is how the
model finds each latent frame's audio and the loss each token's face and lip masks.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim, export

from core.config import option

ENCODER_FILE, DECODER_FILE, META_FILE = "encoder.pt2", "decoder.pt2", "latent_space.json"


@dataclass
class LatentSpaceConfig:
    """Which latent space to train in."""

    vae_path: str = option("", "Folder written by `export_vae` (a pretrained VAE); empty: pixel space.")
    pixel_factor: int = option(4, "Pixel space: side of the pixel block folded into one latent cell.")


class LatentSpace(nn.Module, ABC):
    """Encodes video in [-1, 1] to latents and back. Frozen: it is never trained with the model."""

    channels: int  # latent channels
    temporal_compression: int  # video frames per latent frame
    spatial_compression: int  # pixels per latent cell side
    causal: bool  # the first video frame has a latent frame of its own (Wan's VAE)

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, channels, T', H / s, W / s)."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """The inverse of `encode` (up to the autoencoder's reconstruction error)."""

    def encode_image(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, channels, H / s, W / s): the image as a one-frame video (the reference
        frame's latent)."""
        return self.encode(image.unsqueeze(2)).squeeze(2)

    def latent_frames(self, num_frames: int) -> int:
        """How many latent frames `num_frames` video frames encode to; an error for a count the
        autoencoder cannot take."""
        c = self.temporal_compression
        frames = num_frames - 1 if self.causal else num_frames
        if frames % c or num_frames < 1:
            rule = f"1 + {c} k" if self.causal else f"a multiple of {c}"
            raise ValueError(f"this latent space takes clips of {rule} frames, not {num_frames}")
        return frames // c + (1 if self.causal else 0)


class PixelSpace(LatentSpace):
    """Space-to-depth pixels: (B, 3, T, H, W) -> (B, 3 f^2, T, H / f, W / f); channel order (rgb, row, column)."""

    temporal_compression = 1
    causal = False

    def __init__(self, factor: int):
        super().__init__()
        if factor < 1:
            raise ValueError("pixel_factor must be at least 1")
        self.spatial_compression = factor
        self.channels = 3 * factor * factor

    def encode(self, video: Tensor) -> Tensor:
        b, c, t, h, w = video.shape
        f = self.spatial_compression
        if h % f or w % f:
            raise ValueError(f"pixel space with factor {f} needs frame sides that are multiples of {f}, not {h} x {w}")
        x = video.reshape(b, c, t, h // f, f, w // f, f).permute(0, 1, 4, 6, 2, 3, 5)
        return x.reshape(b, c * f * f, t, h // f, w // f)

    def decode(self, latents: Tensor) -> Tensor:
        b, _, t, h, w = latents.shape
        f = self.spatial_compression
        x = latents.reshape(b, 3, f, f, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(b, 3, t, h * f, w * f)


class ExportedVAE(LatentSpace):
    """A pretrained autoencoder from a folder written by `export_vae`."""

    def __init__(self, path: str | Path):
        super().__init__()
        folder = Path(path)
        missing = [name for name in (ENCODER_FILE, DECODER_FILE, META_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no VAE at {folder}: it lacks {', '.join(missing)}. A VAE folder holds {ENCODER_FILE} and "
                f"{DECODER_FILE} "
                f"(torch.export programs) and {META_FILE}; write one with train.latents.export_vae, or leave vae_path "
                "empty to train in pixel space"
            )
        meta = json.loads((folder / META_FILE).read_text())
        self.channels = int(meta["channels"])
        self.temporal_compression = int(meta["temporal_compression"])
        self.spatial_compression = int(meta["spatial_compression"])
        self.causal = bool(meta["causal"])
        self.encoder = torch.export.load(folder / ENCODER_FILE).module()
        self.decoder = torch.export.load(folder / DECODER_FILE).module()
        self.requires_grad_(False)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        self.latent_frames(video.shape[2])
        return self.encoder(video)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


def export_vae(
    folder: str | Path,
    encoder: nn.Module,
    decoder: nn.Module,
    channels: int,
    temporal_compression: int,
    spatial_compression: int,
    causal: bool,
) -> Path:
    """Write `encoder` (video -> normalized latents) and `decoder` (latents -> video) as an
    `ExportedVAE` folder, traced at a small example size with batch, length and frame size left
    dynamic (in the steps the compressions allow)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c, s = temporal_compression, spatial_compression
    batch, steps, rows, cols = Dim("batch"), Dim("steps"), Dim("rows"), Dim("cols")
    frames = c * steps + 1 if causal else c * steps
    video = torch.zeros(2, 3, 2 * c + (1 if causal else 0), 2 * s, 3 * s)
    latents = torch.zeros(2, channels, 3 if causal else 2, 2, 3)
    latent_frames = steps + 1 if causal else steps
    with torch.no_grad():
        programs = {
            ENCODER_FILE: export(
                encoder.eval(), (video,), dynamic_shapes=({0: batch, 2: frames, 3: s * rows, 4: s * cols},)
            ),
            DECODER_FILE: export(
                decoder.eval(), (latents,), dynamic_shapes=({0: batch, 2: latent_frames, 3: rows, 4: cols},)
            ),
        }
    for name, program in programs.items():
        torch.export.save(program, folder / name)
    meta = {"channels": channels, "temporal_compression": c, "spatial_compression": s, "causal": causal}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def build_latent_space(config: LatentSpaceConfig) -> LatentSpace:
    return ExportedVAE(config.vae_path) if config.vae_path else PixelSpace(config.pixel_factor)


def group_frames(x: Tensor, latent_frames: int, compression: int) -> Tensor:
    """(B, T, ...) per video frame -> (B, latent_frames, compression, ...): each latent frame's video
    frames. With a causal VAE (T = 1 + c (T' - 1)) the first latent frame's group repeats the first
    frame, so every group has the same size and an average over it is that frame's value."""
    b, t = x.shape[:2]
    if t == 1 + (latent_frames - 1) * compression and compression > 1:
        x = torch.cat([x[:, :1].expand(b, compression - 1, *x.shape[2:]), x], dim=1)
    elif t != latent_frames * compression:
        raise ValueError(
            f"{t} video frames do not make {latent_frames} latent frames at temporal compression {compression}"
        )
    return x.reshape(b, latent_frames, compression, *x.shape[2:])
