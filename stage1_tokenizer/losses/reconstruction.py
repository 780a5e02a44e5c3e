"""`vq`: the VQ-VAE objective, squared error of the reconstruction plus the quantiser's own weighted terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..outputs import AutoencoderOutput
from .base import LossTerms, TrainingLoss


class QuantizedReconstructionLoss(TrainingLoss):
    name = "vq"
    models = ("vqvae",)

    def forward(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> LossTerms:
        reconstruction_loss = F.mse_loss(output.decoded, images)
        loss = reconstruction_loss + sum(output.quantizer_losses.values())
        return LossTerms(loss, {"reconstruction_loss": reconstruction_loss, **output.quantizer_losses})
