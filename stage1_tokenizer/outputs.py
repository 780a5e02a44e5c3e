"""The one output type every stage-1 model's forward returns."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class AutoencoderOutput:
    """`loss` is what training minimises; the other scalar fields are its named terms.

    VQ-VAE: loss = reconstruction_loss + codebook_loss (gradient codebook only) + commitment_loss.
    VAE/CVAE: loss = reconstruction_loss + kl_weight * kl, per image in nats; negative_elbo = rec + kl.
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor  # b c h w in [0, 1]
    reconstruction_loss: torch.Tensor
    codebook_loss: torch.Tensor | None = None
    commitment_loss: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    negative_elbo: torch.Tensor | None = None
    codes: torch.Tensor | None = None  # b h w (VQ-VAE)
    code_counts: torch.Tensor | None = None  # K, this batch, summed over processes (VQ-VAE)

    def terms(self) -> dict[str, float]:
        """The scalar terms as floats, for logging."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                out[f.name] = value.item()
        return out
