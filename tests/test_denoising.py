"""Flow-matching sampling: the shifted schedule, Euler and Heun integration, audio-guided CFG."""

from __future__ import annotations

import math

import pytest
import torch

from train.denoising import SamplerConfig, denoise, guided, sliding_denoise, timesteps, window_starts
from train.model import Conditions, TalkingDiT, preset


def test_the_schedule_runs_from_noise_to_clean_and_shift_spends_steps_at_high_noise():
    plain, shifted = timesteps(10, 1.0), timesteps(10, 5.0)
    for t in (plain, shifted):
        assert t.dtype == torch.float32 and t[0] == 1 and t[-1] == 0 and bool((t[1:] < t[:-1]).all())
    torch.testing.assert_close(plain, torch.linspace(1, 0, 11))
    assert bool((shifted[1:-1] > plain[1:-1]).all())
    with pytest.raises(ValueError):
        timesteps(0, 5.0)


def _exact_velocity(clean: torch.Tensor):
    """The true velocity field of the straight paths to `clean`: v = (x - clean) / t."""
    return lambda x, t: (x - clean) / t.view(-1, *[1] * (x.dim() - 1))


@pytest.mark.parametrize("order", [1, 2])
def test_straight_paths_are_integrated_exactly(order):
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 3, 4, 5, 6, generator=generator), torch.randn(2, 3, 4, 5, 6, generator=generator)
    out = denoise(_exact_velocity(clean), noise, SamplerConfig(steps=7, order=order))
    torch.testing.assert_close(out, clean, atol=1e-5, rtol=1e-5)


def test_heun_is_closer_than_euler_on_a_curved_field():
    # dx/dt = -x sin(1 + t): exact solution x(0) = x(1) exp(cos(1) - cos(2)).
    field = lambda x, t: -x * torch.sin(1 + t.view(-1, 1))  # noqa: E731
    start = torch.ones(1, 1)
    exact = start * math.exp(math.cos(1.0) - math.cos(2.0))
    euler = denoise(field, start, SamplerConfig(steps=8, shift=1.0, order=1))
    heun = denoise(field, start, SamplerConfig(steps=8, shift=1.0, order=2))
    assert abs(float(heun - exact)) < abs(float(euler - exact)) / 5


@pytest.fixture(scope="module")
def model_and_cond():
    torch.manual_seed(0)
    config = preset("tiny")
    model = TalkingDiT(config).eval()
    with torch.no_grad():  # an untrained model predicts zeros (zero head and audio output): give them weights
        for parameter in model.parameters():
            if parameter.abs().sum() == 0:
                parameter.normal_(std=0.02)
    b, frames, h, w = 2, 4, 8, 8
    cond = Conditions(
        text=torch.randn(b, 5, config.text_dim),
        text_mask=torch.ones(b, 5, dtype=torch.bool),
        audio=torch.randn(b, frames, config.audio_window, config.audio_dim),
        reference=torch.randn(b, config.latent_channels, h, w),
        reference_keep=torch.ones(b),
    )
    x = torch.randn(b, config.latent_channels, frames, h, w)
    return model, cond, x


@torch.no_grad()
def test_guidance_scales_of_one_give_the_conditional_prediction(model_and_cond):
    model, cond, x = model_and_cond
    t = torch.full((x.shape[0],), 0.7)
    torch.testing.assert_close(guided(model, cond, 1.0, 1.0)(x, t), model(x, t, cond), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_each_guidance_scale_changes_the_output(model_and_cond):
    model, cond, x = model_and_cond
    t = torch.full((x.shape[0],), 0.7)
    base = guided(model, cond, 1.0, 1.0)(x, t)
    text = guided(model, cond, 3.0, 1.0)(x, t)
    audio = guided(model, cond, 1.0, 3.0)(x, t)
    assert (text - base).abs().max() > 1e-4 and (audio - base).abs().max() > 1e-4
    assert (text - audio).abs().max() > 1e-4
    # The two-term form: the audio term is what the audio adds on top of the caption.
    no = torch.zeros(x.shape[0], dtype=torch.bool)
    caption_only = model(x, t, cond.drop(text=no, audio=~no, reference=no))
    torch.testing.assert_close(audio - base, 2.0 * (model(x, t, cond) - caption_only), atol=1e-4, rtol=1e-3)


# -- sliding windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [5, 16, 40, 41])
def test_windows_cover_every_frame_with_at_least_the_overlap(total):
    frames, overlap = 16, 5
    starts = window_starts(total, frames, overlap)
    assert starts[0] == 0 and min(total, starts[-1] + frames) == total
    for a, b in zip(starts, starts[1:]):
        assert a + frames - b >= overlap and b > a
    with pytest.raises(ValueError, match="overlap"):
        window_starts(total, 4, 4)


def _run_windows(velocity_for, total, frames=12, overlap=4, steps=6, channels=2, known_for=None):
    """Sliding denoising of `total` latent frames of (channels, 3, 3) with per-frame seeded noise;
    returns the emitted frames joined, and every window length the velocity saw."""

    def noise_for(start, length):
        return torch.stack(
            [
                torch.randn(1, channels, 3, 3, generator=torch.Generator().manual_seed(f))
                for f in range(start, start + length)
            ],
            dim=2,
        )

    seen, out = [], []

    def tracked(start, length):
        seen.append(length)
        return velocity_for(start, length)

    sliding_denoise(
        tracked, noise_for, total, frames, overlap, SamplerConfig(steps=steps), out.append, known_for=known_for
    )
    return torch.cat(out, dim=2), seen


def test_sliding_windows_reproduce_a_long_target_exactly_on_straight_paths():
    total = 45
    clean = torch.sin(torch.arange(total, dtype=torch.float32) / 5).view(1, 1, total, 1, 1).expand(1, 2, total, 3, 3)
    video, seen = _run_windows(lambda start, length: _exact_velocity(clean[:, :, start : start + length]), total)
    assert video.shape == clean.shape and max(seen) == 12  # never more than one window at a time
    torch.testing.assert_close(video, clean, atol=1e-5, rtol=1e-5)


def test_blending_leaves_no_seam_at_window_boundaries():
    """Each window's own target is the same smooth curve plus an offset of its own (odd windows
    `jump` higher), the way two windows of a real model disagree. Without fusion the joined video
    jumps by about `jump` where windows meet; with it the disagreement is spread over the shared
    frames, so no frame-to-frame change at a boundary exceeds the curve's own largest change plus
    jump / (overlap + 1), with 0.02 of tolerance."""
    total, frames, overlap = 40, 12, 4
    curve = torch.sin(torch.arange(total, dtype=torch.float32) / 4)
    inside = float(torch.sin(torch.tensor(0.25)))  # about the curve's largest step (1/4 rad per frame)
    jump = 2.0

    def run(shared: int):
        starts = window_starts(total, frames, shared)

        def velocity_for(start, length):
            offset = jump * (starts.index(start) % 2)
            return _exact_velocity(
                (curve[start : start + length] + offset).view(1, 1, length, 1, 1).expand(1, 2, length, 3, 3)
            )

        video, _ = _run_windows(velocity_for, total, frames, shared)
        steps = (video[0, 0, 1:, 0, 0] - video[0, 0, :-1, 0, 0]).abs()
        # The largest change where one window hands over to the next (across the shared frames).
        return max(float(steps[b - 1 : b + max(shared, 1)].max()) for b in starts[1:])

    assert run(overlap) <= inside + jump / (overlap + 1) + 0.02, run(overlap)
    assert run(0) > inside + jump / 2  # the same windows joined without fusion jump


def test_editing_keeps_the_known_region_and_generates_the_rest():
    """The model's target is `generated` everywhere; the known video is `kept`. Where the mask says
    keep, the result is exactly `kept`; where it says regenerate, exactly `generated`."""
    total = 30
    generated = (
        torch.cos(torch.arange(total, dtype=torch.float32) / 3).view(1, 1, total, 1, 1).expand(1, 2, total, 3, 3)
    )
    kept = torch.full_like(generated, 0.7)
    mask = torch.zeros(1, 1, total, 3, 3)
    mask[..., 1, :] = 1  # the middle row of every frame is regenerated

    def known_for(start, length):
        return kept[:, :, start : start + length], mask[:, :, start : start + length]

    video, _ = _run_windows(
        lambda start, length: _exact_velocity(generated[:, :, start : start + length]), total, known_for=known_for
    )
    inside = mask.expand_as(video).bool()
    torch.testing.assert_close(video[~inside], kept[~inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(video[inside], generated[inside], atol=1e-5, rtol=0)
