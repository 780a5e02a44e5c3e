"""What every quantiser is: the contract, its one output type, and codebook statistics.

A quantiser maps encoder latents `z: b d h w` to a grid of integer codes and back. It returns one
`QuantizerOutput`; its loss terms are already weighted, so a training loss only adds them up. Outside
its own file nothing reaches into a quantiser's attributes: stage 1 uses `forward`, `nearest`,
`lookup` and `codebook_size`, and everything else goes through the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # b d h w: forward = quantised values, backward reaches z (straight-through or rotated)
    codes: torch.Tensor  # b h w, long, in [0, codebook_size)
    counts: torch.Tensor  # K, float: how often each code was chosen in this batch (summed over processes in training)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # already weighted; the training loss adds them


class Quantizer(nn.Module):
    """Base of every quantiser. A subclass sets `config_class` (a dataclass with a `type` field naming it
    in the registry, whose fields state every option and its default once), is built as
    `cls(config, dim)` for `dim` latent channels, and implements the four members below.
    """

    config_class: ClassVar[type]

    @property
    def codebook_size(self) -> int:
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """`b d h w` latents -> quantised latents, codes, weighted loss terms, code counts."""
        raise NotImplementedError

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """`b d h w -> b h w` codes, with no side effects (no codebook update)."""
        raise NotImplementedError

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """`b h w` integer codes -> `b d h w` quantised latents, as the decoder receives them."""
        raise NotImplementedError


def check_codes(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Integer codes in [0, codebook_size), as long; a clear error otherwise."""
    if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size - 1}] for this codebook, got values in "
            f"[{codes.min().item()}, {codes.max().item()}]: were they made by a tokenizer with another codebook size?"
        )
    return codes.long()


def codebook_usage(counts: torch.Tensor) -> tuple[float, float]:
    """Share of codes used at least once, and perplexity exp(H(p)) of the code distribution.

    Pass counts accumulated over a whole evaluation set: the perplexity of a single batch depends
    on the batch size.
    """
    counts = counts.double()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (counts > 0).double().mean().item(), entropy.exp().item()
