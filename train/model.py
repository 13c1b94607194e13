"""TalkingDiT: an audio-conditioned video diffusion transformer in Wan 2.1's shape.

What Wan's T2V DiT has, with Wan's parameter names (so a Wan checkpoint's backbone maps onto it):
a Conv3d patch embedding, a sinusoidal timestep embedding through `time_embedding` and one shared
`time_projection` into six modulation vectors that every block adds to its own `modulation`
(adaLN: shift, scale and gate of the self-attention and of the FFN), blocks of self-attention over
all video tokens with 3D rotary positions and RMS qk-norm, cross-attention to the caption, a
GELU-tanh FFN, and a modulated head that unpatchifies.

What the talking-portrait task adds (the "audio layers" and the "reference widening"):

* Reference input (SkyReels-Audio joins image controls to the noise on channels): the patch
  embedding takes the noisy latent, the reference frame's latent broadcast over time, and one
  channel that is 1 where the reference is given and 0 where it was dropped (so "no reference"
  differs from "a black reference"). Its input widens from C to 2 C + 1 channels.
* Audio cross-attention in every block, after the caption's: the tokens of each latent frame
  attend only to the Whisper rows of that frame's video frames (10 rows of 384 per video frame,
  LatentSync's window; a Wan latent frame holds 4 video frames, so 40 rows), projected to the
  model width by `audio_embedding` with a learned position per row. Its output projection starts
  at zero, so a pretrained backbone starts out unchanged.

Conditions dropped for classifier-free guidance (`Conditions.drop`) are the "null" inputs that
sampling's unconditional branches pass: a caption of zero tokens (all attended: identical keys
give the same result however many there are), zero audio, a zero reference with its channel 0.

Dtypes: the model casts its inputs to its parameters' dtype itself and keeps the timestep
embedding and the modulation in float32, as Wan does, so it runs in bf16 under FSDP2 mixed
precision without `cast_forward_inputs` (leave that off: it would round the timestep and the
modulation to bf16).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.config import option
from train.latents import group_frames


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a TalkingDiT. The Wan presets carry Wan 2.1 T2V's published values (wan/configs/wan_t2v_*.py)."""

    dim: int = option(64, "Width of every token.")
    ffn_dim: int = option(256, "Hidden width of the FFN.")
    num_heads: int = option(4, "Attention heads (self, caption and audio attention alike).")
    num_layers: int = option(2, "Transformer blocks.")
    patch_size: tuple[int, int, int] = option((1, 2, 2), "Latent cells (t, h, w) per token.")
    latent_channels: int = option(
        48, "Channels of the latent space: the noisy input's, the reference's and the prediction's."
    )
    temporal_compression: int = option(
        1, "Video frames per latent frame of the latent space (1: pixel space; 4: Wan's VAE)."
    )
    text_dim: int = option(384, "Width of the caption embedding (384: all-MiniLM-L6-v2; Wan's umT5-XXL: 4096).")
    audio_dim: int = option(384, "Width of a Whisper encoder row (Whisper tiny).")
    audio_window: int = option(10, "Whisper rows per video frame (schemas/text.py FEATURE_WINDOW).")
    freq_dim: int = option(256, "Width of the sinusoidal timestep embedding.")
    timestep_scale: float = option(1000.0, "t in [0, 1] is embedded as t * scale (Wan's timesteps are sigma * 1000).")
    rope_theta: float = option(10000.0, "Base of the rotary position frequencies.")
    qk_norm: bool = option(True, "RMS-normalize queries and keys over the full width (Wan).")
    cross_attn_norm: bool = option(True, "LayerNorm with affine before the caption cross-attention (Wan).")
    eps: float = option(1e-6, "Epsilon of every norm.")

    def __post_init__(self):
        head_dim, rem = divmod(self.dim, self.num_heads)
        if rem or head_dim % 2 or head_dim < 6:
            raise ValueError(f"dim {self.dim} over {self.num_heads} heads must give an even head width of at least 6")

    @property
    def audio_tokens(self) -> int:
        """Whisper rows each token frame attends to: its video frames' windows."""
        return self.patch_size[0] * self.temporal_compression * self.audio_window


PRESETS: dict[str, ModelConfig] = {
    # Trains on CPU in seconds, in pixel space at factor 4 (48 channels, a token per 8 x 8 pixels).
    "tiny": ModelConfig(),
    "wan-1.3b": ModelConfig(
        dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, latent_channels=16, temporal_compression=4, text_dim=4096
    ),
    "wan-14b": ModelConfig(
        dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, latent_channels=16, temporal_compression=4, text_dim=4096
    ),
}


def preset(name: str, **overrides) -> ModelConfig:
    """A preset with some fields replaced, e.g. `preset("wan-1.3b", text_dim=384)` to pair Wan's sizes
    with the MiniLM caption encoder."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


@dataclass
class Conditions:
    """What the model is conditioned on, for a batch of B clips."""

    text: Tensor  # (B, L, text_dim) caption token embeddings
    text_mask: Tensor  # (B, L) bool: True on real tokens
    audio: Tensor  # (B, T, audio_window, audio_dim): each video frame's Whisper window
    reference: Tensor  # (B, C, h, w) latent of the identity frame
    reference_keep: Tensor  # (B,) 1 where the reference is given, 0 where it was dropped

    def drop(self, text: Tensor, audio: Tensor, reference: Tensor) -> Conditions:
        """The same conditions with those of the samples flagged True (each (B,) bool) replaced by
        the null inputs: training's condition dropout and sampling's unconditional branches."""
        return Conditions(
            text=self.text * _keep(text, self.text),
            text_mask=self.text_mask | text[:, None],
            audio=self.audio * _keep(audio, self.audio),
            reference=self.reference * _keep(reference, self.reference),
            reference_keep=self.reference_keep * _keep(reference, self.reference_keep),
        )


def _keep(dropped: Tensor, like: Tensor) -> Tensor:
    return (~dropped).to(like.dtype).view(-1, *[1] * (like.dim() - 1))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's dtype (Wan's WanLayerNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def rope_frequencies(
    grid: tuple[int, int, int], head_dim: int, theta: float, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Cosines and sines (L, head_dim / 2) of 3D rotary positions for a (frames, rows, columns) token
    grid, in its flattening order. The head width is split like Wan's: a third of the pairs (rounded
    down) each for rows and columns, the rest for time."""
    pairs = head_dim // 2
    axis_pairs = (pairs - 2 * (head_dim // 6), head_dim // 6, head_dim // 6)
    angles = []
    for axis, (size, n) in enumerate(zip(grid, axis_pairs)):
        inverse = theta ** (-torch.arange(n, device=device, dtype=torch.float64) / n)
        angle = torch.arange(size, device=device, dtype=torch.float64)[:, None] * inverse
        shape = [1, 1, 1, n]
        shape[axis] = size
        angles.append(angle.view(shape).expand(*grid, n))
    angle = torch.cat(angles, dim=-1).reshape(-1, pairs).float()
    return angle.cos(), angle.sin()


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate consecutive pairs of (B, L, heads, head_dim) by the positions' angles, in float32."""
    cos, sin = (r[:, None] for r in rope)
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Multi-head attention of `x` over `context` (itself for self-attention), Wan's layout."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(
        self, x: Tensor, context: Tensor, rope: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """`mask`: bool, broadcastable to (B, heads, Lx, Lcontext), True where attention is allowed."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1))
        v = self.v(context).unflatten(-1, (self.num_heads, -1))
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.o(out.transpose(1, 2).flatten(2))


class AudioCrossAttention(nn.Module):
    """Each token frame's tokens attend to that frame's audio tokens only: the frames become the
    batch, (B * frames, tokens per frame, dim) queries against (B * frames, audio tokens, dim) keys."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = LayerNorm(config.dim, config.eps, elementwise_affine=True)
        self.attn = Attention(config.dim, config.num_heads, config.qk_norm, config.eps)

    def forward(self, x: Tensor, audio: Tensor) -> Tensor:
        """x (B, frames * tokens per frame, dim), audio (B, frames, audio tokens, dim)."""
        b, frames = audio.shape[:2]
        queries = self.norm(x).reshape(b * frames, -1, x.shape[-1])
        return self.attn(queries, audio.flatten(0, 1)).reshape(x.shape)


class AudioEmbedding(nn.Module):
    """Whisper rows (..., audio_tokens, audio_dim) -> (..., audio_tokens, dim), with a learned
    embedding of each row's place in its frames' windows (cross-attention has no order otherwise)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(config.audio_dim, config.dim), nn.GELU(approximate="tanh"), nn.Linear(config.dim, config.dim)
        )
        self.position = nn.Parameter(torch.zeros(config.audio_tokens, config.dim))

    def forward(self, audio: Tensor) -> Tensor:
        return self.proj(audio) + self.position.to(audio.dtype)


class Block(nn.Module):
    """Modulated self-attention, caption cross-attention, audio cross-attention, modulated FFN."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = Attention(dim, config.num_heads, config.qk_norm, eps)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(dim, config.num_heads, config.qk_norm, eps)
        self.audio_attn = AudioCrossAttention(config)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(
        self, x: Tensor, e: Tensor, rope: tuple[Tensor, Tensor], text: Tensor, text_mask: Tensor, audio: Tensor
    ) -> Tensor:
        """x (B, L, dim); e (B, 6, dim) float32 from `time_projection`; text (B, Lt, dim) with
        text_mask (B, 1, 1, Lt); audio (B, frames, audio tokens, dim)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e).chunk(6, dim=1)
        h = _modulate(self.norm1(x), shift1, scale1)
        x = x + (self.self_attn(h, h, rope=rope) * gate1).type_as(x)
        x = x + self.cross_attn(self.norm3(x), text, mask=text_mask)
        x = x + self.audio_attn(x, audio)
        y = self.ffn(_modulate(self.norm2(x), shift2, scale2))
        return x + (y * gate2).type_as(x)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return (x.float() * (1 + scale) + shift).type_as(x)


class Head(nn.Module):
    """Modulated LayerNorm and a linear map from a token to its patch of latent cells."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, math.prod(config.patch_size) * config.latent_channels)
        self.modulation = nn.Parameter(torch.zeros(1, 2, config.dim))

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = (self.modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
        return self.head(_modulate(self.norm(x), shift, scale))


class TalkingDiT(nn.Module):
    """Predicts the flow-matching velocity (noise - clean latent) of a noisy latent clip."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dim, c = config.dim, config.latent_channels
        self.patch_embedding = nn.Conv3d(2 * c + 1, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.audio_embedding = AudioEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.head = Head(config)
        self.init_weights()

    def init_weights(self) -> None:
        """Wan's initialization (Xavier linears, small text and time embeddings, a zero head), plus a
        zero output projection of every audio attention. Also run after `to_empty` when the model was
        built on the meta device."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        weight = self.patch_embedding.weight  # Xavier as a linear map of the flattened patch (Wan), without a view
        bound = math.sqrt(6 / (weight[0].numel() + weight.shape[0]))
        nn.init.uniform_(weight, -bound, bound)
        nn.init.zeros_(self.patch_embedding.bias)
        for embedding in (self.text_embedding, self.time_embedding, self.audio_embedding.proj):
            for linear in embedding[0], embedding[2]:
                nn.init.normal_(linear.weight, std=0.02)
        nn.init.normal_(self.audio_embedding.position, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.modulation, std=self.config.dim**-0.5)
            nn.init.zeros_(block.audio_attn.attn.o.weight)
        nn.init.normal_(self.head.modulation, std=self.config.dim**-0.5)
        nn.init.zeros_(self.head.head.weight)

    def forward(self, x: Tensor, t: Tensor, cond: Conditions) -> Tensor:
        """x (B, C, T', h, w) noisy latents; t (B,) flow time in [0, 1] (0 clean, 1 noise); returns
        the predicted velocity, float32, x's shape. The video behind x has T frames:
        `cond.audio` is (B, T, audio_window, audio_dim)."""
        cfg = self.config
        dtype = self.patch_embedding.weight.dtype
        b, _, frames, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(
                f"latent grid {frames} x {height} x {width} is not a multiple of the patch size {cfg.patch_size}"
            )
        grid = (frames // pt, height // ph, width // pw)

        reference = cond.reference[:, :, None].expand(-1, -1, frames, -1, -1)
        keep = cond.reference_keep.view(b, 1, 1, 1, 1).expand(-1, 1, frames, height, width)
        tokens = self.patch_embedding(torch.cat([x, reference, keep], dim=1).to(dtype))
        tokens = tokens.flatten(2).transpose(1, 2)

        e = self.time_embedding(_timestep_embedding(t.float() * cfg.timestep_scale, cfg.freq_dim).to(dtype)).float()
        e6 = self.time_projection(e.to(dtype)).float().unflatten(1, (6, cfg.dim))
        text = self.text_embedding(cond.text.to(dtype))
        audio = group_frames(cond.audio, frames, cfg.temporal_compression).reshape(
            b, grid[0], cfg.audio_tokens, cfg.audio_dim
        )
        audio = self.audio_embedding(audio.to(dtype))
        rope = rope_frequencies(grid, cfg.dim // cfg.num_heads, cfg.rope_theta, x.device)

        for block in self.blocks:
            tokens = block(tokens, e6, rope, text, cond.text_mask[:, None, None, :], audio)
        out = self.head(tokens, e).float()
        return out.reshape(b, *grid, pt, ph, pw, cfg.latent_channels).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape)


def _timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Wan's sinusoidal embedding: cosines then sines of t at frequencies 10000^(-k / (dim / 2))."""
    half = dim // 2
    angle = t.double()[:, None] * torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    return torch.cat([angle.cos(), angle.sin()], dim=1).float()


def is_audio_parameter(name: str) -> bool:
    """The audio layers' parameters (`audio_embedding.*` and every block's `audio_attn.*`): what a
    curriculum stage that trains only the audio path selects."""
    return any(part.startswith("audio") for part in name.split("."))


def audio_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((name, p) for name, p in model.named_parameters() if is_audio_parameter(name))


def param_count(config: ModelConfig, exclude_audio: bool = True, exclude_reference: bool = True) -> int:
    """Parameters of a TalkingDiT of `config`, counted on the meta device (no memory, any size).
    With both exclusions (the default) this is the backbone, what Wan's T2V DiT of the same sizes
    has: no audio layers and no reference widening of the patch embedding's input (C + 1 of its
    2 C + 1 input channels)."""
    with torch.device("meta"):
        model = TalkingDiT(config)
    count = sum(p.numel() for name, p in model.named_parameters() if not (exclude_audio and is_audio_parameter(name)))
    if exclude_reference:
        count -= (config.latent_channels + 1) * math.prod(config.patch_size) * config.dim
    return count
