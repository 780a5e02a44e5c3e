"""The encoder and decoder of the taming-transformers VQGAN / LlamaGen VQ family.

Levels from the highest resolution down, each at `channels * channel_multipliers[i]` channels with
residual blocks, single-head self-attention at the chosen feature-map sides, a res-attn-res middle block
at the lowest resolution, GroupNorm and SiLU throughout. `num_downsamples` stride-2 stages make
`num_downsamples + 1` levels.

Unlike LlamaGen there is no separate `z_channels` width with 1x1 `quant_conv` / `post_quant_conv`: the
final 3x3 conv writes the latent channels directly (and the decoder's first conv reads them). With no
non-linearity between them, a 3x3 conv followed by a 1x1 conv is one 3x3 conv, so the functions the
networks can express are the same, for ~2 M fewer parameters at the VQ-16 size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vqgen.fields import option

from .networks import group_norm

if TYPE_CHECKING:
    from .configs import AutoencoderConfig


@dataclass
class VQGANOptions:
    """The options only this network reads; they are fields of every stage-1 config (see architectures.py)."""

    channel_multipliers: list[int] = option(
        default_factory=list, help="vqgan: width channels * m of each of the num_downsamples + 1 levels, highest "
                                   "resolution first (none given: channels at every level)")
    attention_resolutions: list[int] = option(
        default_factory=list, help="vqgan: feature-map sides with self-attention after every residual block")
    mid_attention: bool = option(True, "vqgan: self-attention in the middle block (res-attn-res)")
    gradient_checkpointing: bool = option(False, "vqgan: recompute block activations in the backward pass (less "
                                                 "memory, ~1/3 more compute); training only")

    def validate(self: AutoencoderConfig) -> None:
        levels = self.num_downsamples + 1
        if self.channel_multipliers and len(self.channel_multipliers) != levels:
            raise ValueError(
                f"channel_multipliers {self.channel_multipliers} has {len(self.channel_multipliers)} entries, but "
                f"num_downsamples {self.num_downsamples} makes {levels} levels: give one multiplier per level"
            )
        if any(m < 1 for m in self.channel_multipliers):
            raise ValueError(f"channel_multipliers must be positive, got {self.channel_multipliers}")
        sides = [self.image_size // 2**i for i in range(levels)]
        missing = [r for r in self.attention_resolutions if r not in sides]
        if missing:
            raise ValueError(f"attention_resolutions {missing} are not feature-map sides of this network {sides}")

    @property
    def level_multipliers(self: AutoencoderConfig) -> list[int]:
        """The width multiplier of each level, highest resolution first (1 everywhere when none given)."""
        return self.channel_multipliers or [1] * (self.num_downsamples + 1)


class ResnetBlock(nn.Module):
    """Pre-activation residual block, `b in_channels h w -> b out_channels h w` (1x1 shortcut when they differ)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all `h * w` positions, residual: `b c h w -> b c h w`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three c) h w -> three b 1 (h w) c", three=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv: `b c h w -> b c h/2 w/2` (h, w even)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard of a transposed conv): `b c h w -> b c 2h 2w`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _CheckpointedStack(nn.Module):
    """With `gradient_checkpointing`, in training and under autograd, each block recomputes its activations
    in the backward pass instead of storing them: memory for the 256² presets, at ~1/3 more compute."""

    gradient_checkpointing: bool

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)


def _level_blocks(in_channels: int, out_channels: int, count: int, attention: bool) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for i in range(count):
        blocks.append(ResnetBlock(in_channels if i == 0 else out_channels, out_channels))
        if attention:
            blocks.append(AttentionBlock(out_channels))
    return blocks


def _middle(channels: int, attention: bool) -> nn.Sequential:
    blocks = [ResnetBlock(channels, channels), *([AttentionBlock(channels)] if attention else []),
              ResnetBlock(channels, channels)]
    return nn.Sequential(*blocks)


class VQGANEncoder(_CheckpointedStack):
    """`b in_channels H W -> b out_channels H/f W/f`, `f = 2 ** num_downsamples`.

    `attention_resolutions` are feature-map sides (e.g. 16 for 256² images at f = 16): every residual
    block of a level at that side is followed by self-attention.
    """

    def __init__(self, config: AutoencoderConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gradient_checkpointing = config.gradient_checkpointing
        widths = [config.channels * m for m in config.level_multipliers]
        self.conv_in = nn.Conv2d(in_channels, config.channels, 3, padding=1)
        blocks: list[nn.Module] = []
        c, side = config.channels, config.image_size
        for level, width in enumerate(widths):
            blocks += _level_blocks(c, width, config.num_res_blocks, side in config.attention_resolutions)
            c = width
            if level < len(widths) - 1:
                blocks.append(Downsample(c))
                side //= 2
        self.blocks = nn.ModuleList(blocks)
        self.middle = _middle(c, config.mid_attention)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in [*self.blocks, *self.middle]:
            h = self._run(block, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQGANDecoder(_CheckpointedStack):
    """`b in_channels h w -> b out_channels h*f w*f`, `f = 2 ** num_downsamples`.

    The mirror of `VQGANEncoder` with, as in taming-transformers and LlamaGen, one more residual block
    per level (`num_res_blocks + 1`); it writes images of the config's `image_size`.
    """

    def __init__(self, config: AutoencoderConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gradient_checkpointing = config.gradient_checkpointing
        widths = [config.channels * m for m in config.level_multipliers]
        c, side = widths[-1], config.image_size // 2 ** (len(widths) - 1)
        self.conv_in = nn.Conv2d(in_channels, c, 3, padding=1)
        self.middle = _middle(c, config.mid_attention)
        blocks: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            blocks += _level_blocks(c, widths[level], config.num_res_blocks + 1, side in config.attention_resolutions)
            c = widths[level]
            if level > 0:
                blocks.append(Upsample(c))
                side *= 2
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """The final conv's weight `out_channels channels 3 3`: where a GAN loss compares gradient norms."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in [*self.middle, *self.blocks]:
            h = self._run(block, h)
        return self.conv_out(F.silu(self.norm_out(h)))
