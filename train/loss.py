"""The training objective: rectified flow (flow matching) as Wan trains, with condition dropout and a
facial mask loss.

Flow matching: x_t = (1 - t) x0 + t noise, and the model predicts the velocity noise - x0; t = 0 is
the clean latent, t = 1 pure noise. t is drawn uniform or logit-normal and then shifted towards
noise by `shift` (t' = s t / (1 + (s - 1) t), the time shift of Wan's and SD3's samplers), so
training spends its steps where sampling does.

Condition dropout: each sample loses its caption, its audio and its reference frame independently
with the configured probabilities, replaced by the null inputs of `Conditions.drop`, so that the
same model gives the unconditional predictions classifier-free guidance needs at sampling.

Facial mask loss (SkyReels-Audio, Hallo3): every pixel weighs `background_weight`, `face_weight`
inside the face mask or `lip_weight` inside the lip mask (the lip mask wins where both are set).
A token's weight is the mean pixel weight over the video pixels it covers (its latent cells'
pixels, over its latent frame's video frames), and the loss is the mean over tokens of weight x
the token's squared error. It is divided by the token count, not by the weights' sum: so the face
weight scales the gradient on face tokens and leaves every other token's gradient unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core.config import option
from train.latents import group_frames
from train.model import Conditions, ModelConfig, TalkingDiT

REGIONS = ("background", "face", "lip")


@dataclass
class LossConfig:
    """Flow-matching time sampling, condition dropout and the facial mask loss's weights."""

    timestep_sampling: str = option("uniform", '"uniform" or "logit_normal" (SD3: sigmoid of a normal).')
    logit_mean: float = option(0.0, "logit_normal: mean of the normal.")
    logit_std: float = option(1.0, "logit_normal: standard deviation of the normal.")
    shift: float = option(5.0, "Time shift towards noise (1: none; Wan T2V samples with 5).")
    text_dropout: float = option(0.1, "Probability a sample's caption is dropped.")
    audio_dropout: float = option(0.1, "Probability a sample's audio is dropped.")
    reference_dropout: float = option(0.05, "Probability a sample's reference frame is dropped.")
    background_weight: float = option(1.0, "Loss weight of a pixel outside the face.")
    face_weight: float = option(2.0, "Loss weight of a face pixel outside the lips.")
    lip_weight: float = option(3.0, "Loss weight of a lip-region pixel.")

    def __post_init__(self):
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError("timestep_sampling must be uniform or logit_normal")
        if self.shift <= 0:
            raise ValueError("shift must be positive")
        for name in ("text_dropout", "audio_dropout", "reference_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability")


@dataclass
class LossOutput:
    loss: Tensor  # scalar to backpropagate: mean over tokens of weight x squared error
    region_loss: dict[
        str, Tensor
    ]  # unweighted mean squared error per pixel area of each region (NaN where it is absent); detached
    region_area: dict[
        str, Tensor
    ]  # token-equivalents of each region in the batch, to combine region losses across ranks; detached


def sample_timesteps(batch: int, config: LossConfig, generator: torch.Generator, device: torch.device) -> Tensor:
    """(batch,) flow times in (0, 1), shifted towards noise."""
    if config.timestep_sampling == "uniform":
        t = torch.rand(batch, generator=generator, device=device)
    else:
        t = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(batch, generator=generator, device=device))
    return config.shift * t / (1 + (config.shift - 1) * t)


def token_regions(
    face_mask: Tensor, lip_mask: Tensor, grid: tuple[int, int, int], model: ModelConfig
) -> dict[str, Tensor]:
    """The share of each token's pixels in each region, (B, frames, rows, columns) per region, the
    three summing to 1. Masks are (B, T, H, W) on the video's frames and pixels; `grid` is the token grid."""
    lip = lip_mask.float()
    face = torch.maximum(face_mask.float(), lip) - lip
    frames, rows, cols = grid
    height, width = face_mask.shape[-2:]
    if height % rows or width % cols:
        raise ValueError(f"{height} x {width} masks do not divide into the {rows} x {cols} token grid")
    kernel = (model.patch_size[0], height // rows, width // cols)
    shares = {}
    for name, mask in (("face", face), ("lip", lip)):
        per_latent_frame = group_frames(mask, frames * model.patch_size[0], model.temporal_compression).mean(dim=2)
        shares[name] = F.avg_pool3d(per_latent_frame[:, None], kernel)[:, 0]
    shares["background"] = 1 - shares["face"] - shares["lip"]
    return shares


def weighted_loss(
    prediction: Tensor, target: Tensor, face_mask: Tensor, lip_mask: Tensor, config: LossConfig, model: ModelConfig
) -> LossOutput:
    """The facial mask loss of a velocity `prediction` (B, C, T', h, w) against `target`."""
    pt, ph, pw = model.patch_size
    error = (prediction.float() - target.float()).pow(2).mean(dim=1)
    token_error = F.avg_pool3d(error[:, None], (pt, ph, pw))[:, 0]
    shares = token_regions(face_mask, lip_mask, tuple(token_error.shape[1:]), model)
    weight = (
        config.background_weight * shares["background"]
        + config.face_weight * shares["face"]
        + config.lip_weight * shares["lip"]
    )
    with torch.no_grad():
        area = {name: shares[name].sum() for name in REGIONS}
        region_loss = {name: (shares[name] * token_error).sum() / area[name] for name in REGIONS}
    return LossOutput(loss=(weight * token_error).mean(), region_loss=region_loss, region_area=area)


def flow_matching_loss(
    model: TalkingDiT,
    latents: Tensor,
    cond: Conditions,
    face_mask: Tensor,
    lip_mask: Tensor,
    config: LossConfig,
    generator: torch.Generator,
) -> LossOutput:
    """One training step's loss on clean `latents` (B, C, T', h, w). Every random draw (time,
    noise, dropout) comes from `generator`, so a run restored with its state repeats exactly."""
    b, device = latents.shape[0], latents.device
    t = sample_timesteps(b, config, generator, device)
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    drop = torch.rand(3, b, generator=generator, device=device)
    probabilities = torch.tensor([config.text_dropout, config.audio_dropout, config.reference_dropout], device=device)
    text, audio, reference = drop < probabilities[:, None]
    tb = t.view(b, 1, 1, 1, 1).to(latents.dtype)
    prediction = model((1 - tb) * latents + tb * noise, t, cond.drop(text=text, audio=audio, reference=reference))
    return weighted_loss(prediction, noise - latents, face_mask, lip_mask, config, model.config)
