"""The PatchGAN discriminator of the adversarial loss: one logit per overlapping image patch.

The idea of pix2pix / taming-transformers' NLayerDiscriminator: 4x4 convolutions, the first
`num_layers` with stride 2, LeakyReLU(0.2), then two stride-1 convolutions down to one channel; each
output logit sees a receptive field of a few dozen pixels, so the discriminator judges local texture
and leaves global structure to the reconstruction loss.

GroupNorm, not BatchNorm: a discriminator's BatchNorm normalises with the statistics of whatever
images share its process's micro-batch, so its verdict on one image would change with the batch
size and the number of processes, and its running statistics (buffers, not gradients) would drift
apart between processes, because the auxiliary step averages gradients only. GroupNorm works per
image: the same logits on any split, no buffers to keep in step.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """`b c h w` images in [0, 1] -> `b 1 h' w'` patch logits (real > 0 > fake once trained)."""

    def __init__(self, in_channels: int, channels: int, num_layers: int) -> None:
        super().__init__()
        widths = [channels * min(2 ** n, 8) for n in range(num_layers + 1)]
        # The first layer has no normalisation (as in pix2pix): it would erase the input's own contrast.
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for n in range(1, num_layers + 1):
            stride = 2 if n < num_layers else 1
            # no bias where a normalisation follows: it would subtract it again
            layers += [nn.Conv2d(widths[n - 1], widths[n], 4, stride=stride, padding=1, bias=False),
                       _group_norm(widths[n]), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        # DCGAN's initialisation, which taming and LlamaGen keep: small convolutions, unit norm scales.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # centred inputs, as the published discriminators see ([-1, 1] images)
        return self.net(2 * images - 1)
