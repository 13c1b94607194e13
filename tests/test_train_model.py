"""The model side of training: TalkingDiT at the tiny preset on CPU and the Wan presets counted on
the meta device, the latent spaces (pixel space, an exported VAE folder), the packaged caption
encoder, and the flow-matching objective with its facial mask loss."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from torch import nn

from train.latents import ExportedVAE, LatentSpaceConfig, PixelSpace, build_latent_space, export_vae, group_frames
from train.loss import LossConfig, flow_matching_loss, sample_timesteps, token_regions, weighted_loss
from train.model import (
    PRESETS,
    AudioCrossAttention,
    Conditions,
    TalkingDiT,
    apply_rope,
    audio_parameters,
    param_count,
    preset,
    rope_frequencies,
)
from train.text_encoder import TextEncoder, TextEncoderConfig

TINY = PRESETS["tiny"]


def conditions(b: int, frames: int, latent: torch.Size, text_len: int = 5, seed: int = 0) -> Conditions:
    """Random conditions for a batch whose video has `frames` frames and whose latents are `latent`."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = latent[1], latent[3], latent[4]
    return Conditions(
        text=torch.randn(b, text_len, TINY.text_dim, generator=g),
        text_mask=torch.ones(b, text_len, dtype=torch.bool),
        audio=torch.randn(b, frames, TINY.audio_window, TINY.audio_dim, generator=g),
        reference=torch.randn(b, c, h, w, generator=g),
        reference_keep=torch.ones(b),
    )


def batch(b: int = 2, frames: int = 4, size: int = 32, seed: int = 0):
    """What the data side yields (video and reference in [-1, 1], masks 0/1) for a tiny run: a face
    box and a lip box inside it, moving a little over the frames."""
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(b, 3, frames, size, size, generator=g) * 2 - 1
    face = torch.zeros(b, frames, size, size)
    lip = torch.zeros_like(face)
    for t in range(frames):
        face[:, t, 8 : 8 + 16, 8 + t : 8 + t + 16] = 1
        lip[:, t, 18:22, 12 + t : 20 + t] = 1
    return video, video[:, :, 0], face, lip


def test_wan_presets_match_the_published_parameter_counts():
    """The backbone (no audio layers, no reference widening) of the Wan presets, built on the meta
    device, against Wan 2.1 T2V's DiT: 1,418,996,800 parameters for 1.3B (the Hugging Face metadata
    of Wan-AI/Wan2.1-T2V-1.3B's diffusion_pytorch_model.safetensors, 5,676,070,424 bytes in fp32,
    as quoted by several public repositories) and 14,288,491,584 for 14B (counted from
    diffusers' WanTransformer3DModel at the published config in public repositories). The
    same numbers follow from Wan's wan/modules/model.py at the wan_t2v_1_3B / wan_t2v_14B configs
    (dim 1536 / 5120, ffn 8960 / 13824, 12 / 40 heads, 30 / 40 layers, text_dim 4096, freq_dim 256,
    patch (1, 2, 2), 16 channels)."""
    published = {"wan-1.3b": 1_418_996_800, "wan-14b": 14_288_491_584}
    for name, count in published.items():
        config = PRESETS[name]
        backbone = param_count(config)
        audio = param_count(config, exclude_audio=False) - backbone
        widening = param_count(config, exclude_reference=False) - backbone
        print(
            f"{name}: backbone {backbone:,} (published {count:,}); audio layers +{audio:,} "
            f"({100 * audio / backbone:.1f}%); "
            f"reference widening +{widening:,}"
        )
        assert abs(backbone - count) / count < 0.05
        assert backbone == count  # same modules as Wan's, so exact
        assert widening == 17 * 4 * config.dim


def test_meta_build_then_materialize():
    """The trainer's path for big models: build on meta, allocate (`to_empty`), initialize."""
    with torch.device("meta"):
        model = TalkingDiT(TINY)
    model.to_empty(device="cpu")
    model.init_weights()
    latents = torch.randn(1, TINY.latent_channels, 2, 4, 4)
    out = model(latents, torch.tensor([0.5]), conditions(1, 2, latents.shape))
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert all(p.abs().sum() == 0 for name, p in model.named_parameters() if name.endswith("audio_attn.attn.o.weight"))


def test_forward_shapes_dtypes_and_null_caption():
    torch.manual_seed(0)
    model = TalkingDiT(TINY)
    for p in model.parameters():  # away from the zero-initialized head and audio output
        p.data.normal_(0, 0.1)
    latents = torch.randn(2, TINY.latent_channels, 3, 4, 6)
    t = torch.tensor([0.2, 0.9])
    cond = conditions(2, 3, latents.shape)
    out = model(latents, t, cond)
    assert out.shape == latents.shape and out.dtype == torch.float32

    # A dropped caption is all-zero tokens: the result does not depend on how many.
    everything = torch.ones(2, dtype=torch.bool)
    short = replace(cond, text=torch.randn(2, 3, TINY.text_dim), text_mask=torch.ones(2, 3, dtype=torch.bool))
    long = replace(cond, text=torch.randn(2, 9, TINY.text_dim), text_mask=torch.tensor([[True] * 4 + [False] * 5] * 2))
    short, long = (c.drop(text=everything, audio=~everything, reference=~everything) for c in (short, long))
    torch.testing.assert_close(model(latents, t, short), model(latents, t, long))
    assert not torch.allclose(model(latents, t, short), out)

    # bf16 parameters (FSDP2 mixed precision): float32 inputs are cast inside.
    out_bf16 = model.to(torch.bfloat16)(latents, t, cond)
    assert out_bf16.dtype == torch.float32 and torch.isfinite(out_bf16).all()


def test_audio_attends_to_its_own_frame_only():
    torch.manual_seed(0)
    attention = AudioCrossAttention(TINY)
    nn.init.normal_(attention.attn.o.weight, std=0.1)
    b, frames, per_frame = 2, 3, 5
    x = torch.randn(b, frames * per_frame, TINY.dim)
    audio = torch.randn(b, frames, 10, TINY.dim)
    changed = audio.clone()
    changed[:, 1] += 1
    delta = (attention(x, changed) - attention(x, audio)).abs().reshape(b, frames, per_frame, -1).amax(dim=(0, 2, 3))
    assert delta[1] > 1e-3 and delta[0] == 0 and delta[2] == 0


def test_rotary_positions_are_relative():
    """Wan's split of the head width into time, row and column frequencies: a query-key product
    depends only on the offset between the two tokens' (t, h, w) positions."""
    grid, head_dim = (4, 5, 6), 24
    rope = rope_frequencies(grid, head_dim, 10000.0, torch.device("cpu"))
    assert rope[0].shape == (4 * 5 * 6, head_dim // 2)
    q, k = torch.randn(2, 1, 1, head_dim)
    n = grid[0] * grid[1] * grid[2]
    qs, ks = (
        apply_rope(q.expand(1, n, 1, head_dim), rope)[0, :, 0],
        apply_rope(k.expand(1, n, 1, head_dim), rope)[0, :, 0],
    )
    index = torch.arange(n).reshape(grid)

    def dot(a, b):
        return (qs[index[a]] * ks[index[b]]).sum()

    torch.testing.assert_close(dot((1, 2, 3), (0, 1, 1)), dot((3, 4, 5), (2, 3, 3)))
    assert not torch.isclose(dot((1, 2, 3), (0, 1, 1)), dot((1, 2, 3), (0, 1, 2)))


def test_frames_group_into_latent_frames():
    x = torch.arange(8).view(1, 8)
    assert group_frames(x, 2, 4).tolist() == [[[0, 1, 2, 3], [4, 5, 6, 7]]]
    causal = torch.arange(9).view(1, 9)  # Wan's VAE: 1 + 4 k frames -> 1 + k latent frames
    assert group_frames(causal, 3, 4).tolist() == [[[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]]
    with pytest.raises(ValueError):
        group_frames(x, 3, 4)

    # The Wan presets' time compression: 9 video frames, 3 latent frames, 40 Whisper rows each.
    config = preset("tiny", temporal_compression=4)
    model = TalkingDiT(config)
    latents = torch.randn(1, config.latent_channels, 3, 4, 4)
    assert model(latents, torch.tensor([0.5]), conditions(1, 9, latents.shape)).shape == latents.shape
    assert model.audio_embedding.position.shape == (40, config.dim)


def test_pixel_space_is_exact_and_is_the_tiny_latent_space():
    space = build_latent_space(LatentSpaceConfig())
    assert isinstance(space, PixelSpace) and space.channels == TINY.latent_channels
    video, reference, _, _ = batch()
    latents = space.encode(video)
    assert latents.shape == (2, 48, 4, 8, 8)
    assert torch.equal(space.decode(latents), video)
    assert torch.equal(space.encode_image(reference), latents[:, :, 0])
    with pytest.raises(ValueError):
        space.encode(video[..., :30])


class RandomEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=(1, 4, 4), stride=(1, 4, 4))

    def forward(self, video):
        return self.conv(video)


class RandomDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.ConvTranspose3d(8, 3, kernel_size=(1, 4, 4), stride=(1, 4, 4))

    def forward(self, latents):
        return torch.tanh(self.conv(latents))


def test_exported_vae_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no VAE at"):
        build_latent_space(LatentSpaceConfig(vae_path=str(tmp_path / "missing")))
    torch.manual_seed(0)
    encoder, decoder = RandomEncoder(), RandomDecoder()
    folder = export_vae(
        tmp_path / "vae", encoder, decoder, channels=8, temporal_compression=1, spatial_compression=4, causal=False
    )
    space = build_latent_space(LatentSpaceConfig(vae_path=str(folder)))
    assert isinstance(space, ExportedVAE)
    assert (space.channels, space.temporal_compression, space.spatial_compression) == (8, 1, 4)
    assert not any(p.requires_grad for p in space.parameters())
    video = torch.rand(3, 3, 5, 24, 40) * 2 - 1  # another batch, length and size than exported with
    latents = space.encode(video)
    torch.testing.assert_close(latents, encoder(video))
    assert space.decode(latents).shape == video.shape
    assert space.encode_image(video[:, :, 0]).shape == (3, 8, 6, 10)


def test_packaged_caption_encoder():
    encoder = TextEncoder(TextEncoderConfig())
    assert encoder.dim == 384 and not encoder.model.training
    captions = [
        "A woman speaks to the camera in a bright room.",
        "hi",
        "A woman speaks to the camera in a bright room.",
    ]
    embeddings, mask = encoder(captions)
    assert embeddings.shape[0] == 3 and embeddings.shape[2] == 384 and embeddings.dtype == torch.float32
    assert mask.sum(dim=1).tolist()[1] == 3  # [CLS] hi [SEP]
    assert mask[0].all() and torch.equal(embeddings[0], embeddings[2])
    assert len(encoder._cache) == 2 and not embeddings.requires_grad
    alone, _ = encoder(["hi"])  # the same numbers whatever the batch
    torch.testing.assert_close(alone[0], embeddings[1, :3], rtol=0, atol=0)


def test_timestep_sampling_and_shift():
    g = torch.Generator().manual_seed(0)
    unshifted = sample_timesteps(20000, LossConfig(shift=1.0), g, torch.device("cpu"))
    shifted = sample_timesteps(20000, LossConfig(shift=5.0), g, torch.device("cpu"))
    logit = sample_timesteps(20000, LossConfig(timestep_sampling="logit_normal", shift=1.0), g, torch.device("cpu"))
    assert 0.48 < unshifted.mean() < 0.52 and shifted.mean() > 0.7  # towards noise: 5/4 (1 - ln 5 / 4) = 0.747
    assert 0.48 < logit.mean() < 0.52 and logit.std() < unshifted.std()  # concentrated mid-way
    assert shifted.min() > 0 and shifted.max() < 1


def test_region_losses_and_the_face_weight_scales_face_tokens_only():
    """The gradient of the loss with respect to the model's output: tokens with no face-only pixel
    keep theirs when the face weight changes, tokens all inside the face (outside the lips) scale
    by the ratio of the face weights."""
    video, _, face, lip = batch()
    latents = PixelSpace(4).encode(video)
    target = torch.randn_like(latents)
    prediction = torch.randn_like(latents)

    def gradient(face_weight):
        output = prediction.clone().requires_grad_(True)
        result = weighted_loss(output, target, face, lip, LossConfig(face_weight=face_weight), TINY)
        result.loss.backward()
        return result, output.grad

    low, grad_low = gradient(2.0)
    high, grad_high = gradient(5.0)
    print({name: round(value.item(), 4) for name, value in low.region_loss.items()})
    assert set(low.region_loss) == {"background", "face", "lip"}
    assert all(torch.isfinite(v) and v > 0 for v in low.region_loss.values())
    for name in low.region_loss:  # the region losses are unweighted
        torch.testing.assert_close(low.region_loss[name], high.region_loss[name])

    shares = token_regions(face, lip, (4, 4, 4), TINY)  # the token grid: 32 px frames, 8 px tokens
    per_cell = {
        name: share.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)[:, None] for name, share in shares.items()
    }
    outside = (per_cell["face"] == 0).expand_as(grad_low)
    inside = (per_cell["face"] == 1).expand_as(grad_low)
    assert outside.any() and inside.any()
    assert torch.equal(grad_low[outside], grad_high[outside])
    torch.testing.assert_close(grad_high[inside], grad_low[inside] * 5.0 / 2.0)


def test_condition_dropout_replaces_conditions_by_the_null_ones():
    video, reference, face, lip = batch()
    space = PixelSpace(4)
    latents, model = space.encode(video), TalkingDiT(TINY)
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    cond = conditions(2, 4, latents.shape)
    cond.reference = space.encode_image(reference)
    everything = torch.ones(2, dtype=torch.bool)
    dropped = flow_matching_loss(
        model,
        latents,
        cond,
        face,
        lip,
        LossConfig(text_dropout=1, audio_dropout=1, reference_dropout=1),
        torch.Generator().manual_seed(3),
    )
    null = cond.drop(text=everything, audio=everything, reference=everything)
    assert null.reference_keep.sum() == 0 and null.audio.abs().sum() == 0 and null.text_mask.all()
    by_hand = flow_matching_loss(
        model,
        latents,
        null,
        face,
        lip,
        LossConfig(text_dropout=0, audio_dropout=0, reference_dropout=0),
        torch.Generator().manual_seed(3),
    )
    kept = flow_matching_loss(
        model,
        latents,
        cond,
        face,
        lip,
        LossConfig(text_dropout=0, audio_dropout=0, reference_dropout=0),
        torch.Generator().manual_seed(3),
    )
    assert dropped.loss.item() == by_hand.loss.item() != kept.loss.item()


def test_tiny_preset_overfits_one_batch():
    """Forward and backward of the whole tiny model on one batch (2 clips, 4 frames of 32 x 32
    pixels: 64 tokens each): with the same noise and times each step, the loss falls."""
    torch.manual_seed(0)
    video, reference, face, lip = batch()
    space = PixelSpace(4)
    latents = space.encode(video)
    cond = conditions(2, 4, latents.shape)
    cond.reference = space.encode_image(reference)
    model = TalkingDiT(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    config = LossConfig(shift=1.0, text_dropout=0, audio_dropout=0, reference_dropout=0)
    losses, start = [], time.perf_counter()
    for _ in range(50):
        result = flow_matching_loss(model, latents, cond, face, lip, config, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    step = (time.perf_counter() - start) / 50
    print(
        f"tiny: {sum(p.numel() for p in model.parameters()):,} parameters, {step * 1000:.1f} ms per step "
        f"(forward + backward + AdamW), loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in audio_parameters(model))
