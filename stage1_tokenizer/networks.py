"""The conv encoder and decoder (architecture "conv", vqgen 0.1's network) of VQVAE, VAE and CVAE.

Their module names and initialisation order are what every saved conv model's weights were written
against: change neither. The models differ only in what sits between encoder and decoder (a quantiser,
a Gaussian posterior, label conditioning); `architectures.py` picks this network or another by name.
Its options are the config's shared ones (channels, num_downsamples, num_res_blocks): none of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .configs import AutoencoderConfig


def group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: statistics must not depend on the batch split across processes.
    return nn.GroupNorm(num_groups=min(32, channels // 4) or 1, num_channels=channels)


class ResBlock(nn.Module):
    """Pre-activation residual block, `b c h w -> b c h w`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    """`b in_channels H W -> b out_channels (H / 2**num_downsamples) (W / 2**num_downsamples)`."""

    def __init__(self, config: AutoencoderConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        channels = config.channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        for _ in range(config.num_downsamples):
            layers += [nn.SiLU(), nn.Conv2d(channels, channels, 4, stride=2, padding=1)]
        layers += [ResBlock(channels) for _ in range(config.num_res_blocks)]
        layers += [group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """`b in_channels h w -> b out_channels (h * 2**num_downsamples) (w * 2**num_downsamples)`."""

    def __init__(self, config: AutoencoderConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        channels = config.channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        layers += [ResBlock(channels) for _ in range(config.num_res_blocks)]
        for _ in range(config.num_downsamples):
            layers += [nn.SiLU(), nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)]
        layers += [group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """The final conv's weight `out_channels channels 3 3`: where a GAN loss compares gradient norms."""
        return self.net[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
