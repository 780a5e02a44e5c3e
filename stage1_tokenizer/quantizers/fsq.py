"""`fsq`: finite scalar quantisation (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

Each of `len(levels)` channels is bounded and rounded to one of `levels[i]` values; the code is the
mixed-radix number of those digits, so the implicit codebook has prod(levels) entries and nothing to
learn, initialise, restart or collapse. A 1x1 projection maps the encoder's `dim` channels to
`len(levels)` and back, so FSQ drops in behind any encoder width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from einops import rearrange
from torch import nn

from vqgen.fields import option
from vqgen.distributed import all_reduce_sum_

from .base import Quantizer, QuantizerOutput, check_codes


@dataclass
class FSQConfig:
    """`--quantizer fsq`: the paper recommends [8,5,5,5] for 1,000 codes and [8,8,8,5,5,5] for 64,000."""

    type: Literal["fsq"] = "fsq"
    levels: list[int] = option(default_factory=lambda: [8, 5, 5, 5], flag="fsq_levels",
                               help="FSQ levels per channel; the codebook has their product of codes")

    def __post_init__(self) -> None:
        if not self.levels or any(not isinstance(n, int) or n < 2 for n in self.levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {self.levels}; e.g. --fsq_levels 8 5 5 5")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)


def round_straight_through(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


# How far inside (-L/2, L/2) the bound stays, so that rounding never reaches a level outside the L given.
BOUND_EPSILON = 1e-3


class FiniteScalarQuantizer(Quantizer):
    """`b dim h w` -> codes `b h w` in [0, prod(levels)); no loss terms, no state but the projections.

    >>> quantizer = FiniteScalarQuantizer(FSQConfig(levels=[8, 5, 5, 5]), dim=64)
    """

    config_class: ClassVar[type] = FSQConfig

    def __init__(self, config: FSQConfig, dim: int) -> None:
        super().__init__()
        self.config = config
        levels, n = config.levels, len(config.levels)
        self.project_in = nn.Conv2d(dim, n, 1) if dim != n else nn.Identity()
        self.project_out = nn.Conv2d(n, dim, 1) if dim != n else nn.Identity()
        levels_t = torch.tensor(levels, dtype=torch.float32)
        # Not persistent: they follow from the config, and a model saved without them must load.
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.tensor([1, *levels[:-1]]), 0), persistent=False)
        self.register_buffer("half_width", (levels_t // 2), persistent=False)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        """`... n` -> values in (-L/2, L/2) per channel, shifted for even L so rounding gives exactly L values."""
        half = (self.levels - 1) * (1 + BOUND_EPSILON) / 2
        offset = (self.levels % 2 == 0).float() * 0.5
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _digits(self, z: torch.Tensor) -> torch.Tensor:
        """`b dim h w` -> `b h w n` rounded, normalised to [-1, 1] (straight-through)."""
        z = rearrange(self.project_in(z), "b n h w -> b h w n")
        return round_straight_through(self._bound(z.float())) / self.half_width

    def _to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        levels = (digits * self.half_width + self.half_width).round().long()
        return (levels * self.basis).sum(-1)

    def _from_digits(self, digits: torch.Tensor) -> torch.Tensor:
        return self.project_out(rearrange(digits, "b h w n -> b n h w"))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            digits = self._digits(z.float())
            codes = self._to_codes(digits.detach())
            counts = torch.bincount(codes.flatten(), minlength=self.codebook_size).float()
            # Summed over processes in training only: evaluation loops may run unequal numbers of batches
            # per process (and sum their code counts once at the end), so a collective here would hang them.
            counts = all_reduce_sum_(counts) if self.training else counts
            return QuantizerOutput(quantized=self._from_digits(digits), codes=codes, counts=counts)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        return self._to_codes(self._digits(z.float()))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        codes = check_codes(codes, self.codebook_size).to(self.levels.device)
        levels = (codes[..., None] // self.basis) % self.levels.long()
        return self._from_digits((levels - self.half_width) / self.half_width)
