"""Flow-matching sampling: the timestep schedule, Euler and Heun steps, audio-guided CFG.

The model predicts the velocity `noise - clean` of `x_t = (1 - t) clean + t noise` (train/loss.py),
so denoising integrates dx/dt = v from t = 1 (noise) to t = 0. Time is spaced with Wan's shift,
which spends more steps at high noise; steps are taken in float32 whatever the model's dtype.

Guidance has separate caption and audio scales, in the two-term form: with u the prediction with
neither caption nor audio, c with the caption only and f with both,

    v = u + s_text (c - u) + s_audio (f - c)

so scales of 1 give f, the fully conditional prediction. The three predictions come from one
forward pass on a tripled batch (the reference frame conditions all three).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from core.config import option
from train.model import Conditions

Velocity = Callable[[Tensor, Tensor], Tensor]
"""(x (B, C, T', h, w), t (B,)) -> velocity, x's shape."""


@dataclass
class SamplerConfig:
    """How a clip is denoised: steps, solver and guidance."""

    steps: int = option(30, "Denoising steps (model evaluations per step: 1 for Euler, 2 for Heun but the last).")
    shift: float = option(5.0, "Wan's time shift: t' = s t / (1 + (s - 1) t); larger spends more steps at high noise.")
    order: int = option(1, "1: Euler; 2: Heun (second order, a corrector evaluation per step).")
    text_scale: float = option(5.0, "Classifier-free guidance scale of the caption (1: no guidance).")
    audio_scale: float = option(
        4.0, "Classifier-free guidance scale of the audio, on top of the caption's (1: no guidance)."
    )


def timesteps(steps: int, shift: float) -> Tensor:
    """(steps + 1,) float32 times from 1 (noise) down to 0 (clean), shifted."""
    if steps < 1 or shift <= 0:
        raise ValueError("steps must be at least 1 and shift positive")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def denoise(
    velocity: Velocity,
    noise: Tensor,
    config: SamplerConfig,
    progress: bool = False,
    after_step: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """Integrate from `noise` at t = 1 to a clean sample at t = 0. `after_step(i, x)` may replace
    the sample after step i (sliding windows fuse their overlap there)."""
    if config.order not in (1, 2):
        raise ValueError("sampler order must be 1 (Euler) or 2 (Heun)")
    times = timesteps(config.steps, config.shift).to(noise.device)
    x = noise.float()
    batch = x.shape[0]
    for index, (now, nxt) in enumerate(
        tqdm(zip(times[:-1], times[1:]), total=config.steps, disable=not progress, desc="denoising")
    ):
        v = velocity(x, now.expand(batch)).float()
        predicted = x + (nxt - now) * v
        if config.order == 2 and nxt > 0:
            corrected = velocity(predicted, nxt.expand(batch)).float()
            predicted = x + (nxt - now) * (v + corrected) / 2
        x = predicted if after_step is None else after_step(index, predicted)
    return x


def guided(
    model: Callable[[Tensor, Tensor, Conditions], Tensor], cond: Conditions, text_scale: float, audio_scale: float
) -> Velocity:
    """The velocity with caption and audio guidance, the three predictions in one batched forward."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        no, yes = torch.zeros(b, dtype=torch.bool, device=x.device), torch.ones(b, dtype=torch.bool, device=x.device)
        neither = cond.drop(text=yes, audio=yes, reference=no)
        caption_only = cond.drop(text=no, audio=yes, reference=no)
        tripled = Conditions(
            *(
                torch.cat(parts)
                for parts in zip(
                    *(
                        (c.text, c.text_mask, c.audio, c.reference, c.reference_keep)
                        for c in (neither, caption_only, cond)
                    )
                )
            )
        )
        unconditional, with_caption, full = model(torch.cat([x, x, x]), torch.cat([t, t, t]), tripled).float().chunk(3)
        return unconditional + text_scale * (with_caption - unconditional) + audio_scale * (full - with_caption)

    return velocity


# -- sliding windows: unlimited length in constant memory ------------------------------------------


def window_starts(total: int, frames: int, overlap: int) -> list[int]:
    """First frames of windows of `frames` covering `total` frames, each sharing at least `overlap`
    frames with the one before (the last is moved back to end exactly at `total`)."""
    if not 0 <= overlap < frames:
        raise ValueError(f"the overlap ({overlap}) must be shorter than a window ({frames} frames)")
    if total <= frames:
        return [0]
    return [*range(0, total - frames, frames - overlap), total - frames]


def sliding_denoise(
    velocity_for: Callable[[int, int], Velocity],
    noise_for: Callable[[int, int], Tensor],
    total: int,
    frames: int,
    overlap: int,
    config: SamplerConfig,
    emit: Callable[[Tensor], None],
    progress: bool = False,
    known_for: Callable[[int, int], tuple[Tensor, Tensor]] | None = None,
) -> None:
    """Denoise `total` frames (on the latent time axis) window by window and hand the finished
    frames to `emit` in order, holding at most one window and one overlap's trajectory.

    `velocity_for(start, length)` is the (guided) velocity with the conditions of that span (its
    audio), `noise_for(start, length)` its starting noise (the same for a frame in either of two
    windows). A window's first frames overlap the previous window's last ones; after every
    denoising step they are blended, the previous window's weight falling linearly from 1 to 0
    across the overlap, so the next window continues the last one instead of cutting to it.

    Editing: `known_for(start, length)` gives the span's clean latents and a mask (1: regenerate,
    0: keep; broadcastable to the latents). After every step the kept region is replaced by the
    clean latents noised to the step's time with the window's own noise, so the model fills the
    masked region in agreement with what surrounds it.
    """
    starts = window_starts(total, frames, overlap)
    times = timesteps(config.steps, config.shift)
    previous: list[Tensor] = []  # the previous window's tail (the frames the next one shares) after each step
    for k, start in enumerate(tqdm(starts, disable=not progress, desc="windows")):
        length = min(frames, total - start)
        shared = (starts[k - 1] + frames - start) if k else 0
        following = (start + length - starts[k + 1]) if k + 1 < len(starts) else 0
        noise = noise_for(start, length)
        window = _Window(
            times,
            length,
            shared,
            following,
            previous,
            noise,
            *(known_for(start, length) if known_for else (None, None)),
        )
        denoised = denoise(velocity_for(start, length), noise, config, after_step=window.fuse)
        emit(denoised[:, :, : length - following])
        previous = window.tail


@dataclass
class _Window:
    """One window of `sliding_denoise`: what its steps blend in and keep after each step."""

    times: Tensor
    length: int
    shared: int  # leading frames shared with the previous window
    following: int  # trailing frames shared with the next window
    previous: list[Tensor]  # the previous window's tail after each step
    noise: Tensor
    known: Tensor | None
    regenerate: Tensor | None
    tail: list[Tensor] = field(default_factory=list)  # this window's trailing frames after each step

    def fuse(self, index: int, x: Tensor) -> Tensor:
        if self.shared:
            weight = torch.linspace(1.0, 0.0, self.shared + 2)[1:-1].view(1, 1, self.shared, 1, 1).to(x)
            x = torch.cat(
                [weight * self.previous[index] + (1 - weight) * x[:, :, : self.shared], x[:, :, self.shared :]], dim=2
            )
        if self.known is not None:
            t = self.times[index + 1].item()
            x = self.regenerate * x + (1 - self.regenerate) * ((1 - t) * self.known + t * self.noise.float())
        if self.following:
            self.tail.append(x[:, :, self.length - self.following :].clone())
        return x
