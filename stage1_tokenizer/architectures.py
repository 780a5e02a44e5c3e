"""The network registry: a config's `architecture` -> the encoder and decoder every stage-1 model builds.

Adding a network is one file (an encoder and a decoder, each built as `cls(config, in_channels,
out_channels)`, and the dataclass of any options only it reads) plus one line here. Its options become
fields of `AutoencoderConfig`, and so flags of the training script; a config.json leaves out the options
of the networks it does not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from .networks import Decoder, Encoder
from .vqgan_networks import VQGANDecoder, VQGANEncoder, VQGANOptions

if TYPE_CHECKING:
    from .configs import AutoencoderConfig


@dataclass(frozen=True)
class Network:
    description: str  # the help of `--architecture`
    encoder: type[nn.Module]  # `b in_channels H W -> b out_channels h w`, h = H / 2**num_downsamples
    decoder: type[nn.Module]  # `b in_channels h w -> b out_channels H W`; has `last_layer_weight`
    options: type | None = None  # a dataclass of the fields only this network reads; `validate(config)` checks them


ARCHITECTURES: dict[str, Network] = {
    "conv": Network("one width, residual blocks at the latent resolution (vqgen 0.1)", Encoder, Decoder),
    "vqgan": Network("the taming / LlamaGen network (channel multipliers, residual blocks at every level, "
                     "self-attention)", VQGANEncoder, VQGANDecoder, VQGANOptions),
}


def build_encoder(config: AutoencoderConfig, in_channels: int, out_channels: int) -> nn.Module:
    return ARCHITECTURES[config.architecture].encoder(config, in_channels, out_channels)


def build_decoder(config: AutoencoderConfig, in_channels: int, out_channels: int) -> nn.Module:
    return ARCHITECTURES[config.architecture].decoder(config, in_channels, out_channels)
