"""The one place a config's `architecture` becomes an encoder and a decoder, for every stage-1 model."""

from __future__ import annotations

from typing import Any

from torch import nn

from .configs import AutoencoderConfig
from .networks import Decoder, Encoder
from .vqgan_networks import VQGANDecoder, VQGANEncoder


def _vqgan_options(config: AutoencoderConfig) -> dict[str, Any]:
    return dict(image_size=config.image_size, channels=config.channels,
                channel_multipliers=config.level_multipliers, num_res_blocks=config.num_res_blocks,
                attention_resolutions=config.attention_resolutions, mid_attention=config.mid_attention,
                gradient_checkpointing=config.gradient_checkpointing)


def build_encoder(config: AutoencoderConfig, in_channels: int, out_channels: int) -> nn.Module:
    """`b in_channels H W -> b out_channels h w`, h = H / 2**num_downsamples."""
    if config.architecture == "vqgan":
        return VQGANEncoder(in_channels, out_channels, **_vqgan_options(config))
    return Encoder(in_channels, out_channels, channels=config.channels, num_downsamples=config.num_downsamples,
                   num_res_blocks=config.num_res_blocks)


def build_decoder(config: AutoencoderConfig, in_channels: int, out_channels: int) -> nn.Module:
    """`b in_channels h w -> b out_channels H W`; has `last_layer_weight`, the final conv's weight."""
    if config.architecture == "vqgan":
        return VQGANDecoder(in_channels, out_channels, **_vqgan_options(config))
    return Decoder(in_channels, out_channels, channels=config.channels, num_upsamples=config.num_downsamples,
                   num_res_blocks=config.num_res_blocks)
