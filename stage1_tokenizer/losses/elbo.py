"""`elbo`: the (beta-)VAE objective per image in nats, -log p(x|z) + kl_weight * KL(q(z|x) || N(0, I))."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..likelihood import pixel_log_likelihood
from ..outputs import AutoencoderOutput
from .base import LossTerms, TrainingLoss


class ELBOLoss(TrainingLoss):
    name = "elbo"
    models = ("vae", "cvae")

    def __init__(self, kl_weight: float, likelihood: str, gaussian_std: float) -> None:
        super().__init__()
        self.kl_weight, self.likelihood, self.gaussian_std = kl_weight, likelihood, gaussian_std

    @classmethod
    def from_model(cls, model: nn.Module, config: Any) -> ELBOLoss:
        c = model.config
        return cls(kl_weight=c.kl_weight, likelihood=c.likelihood, gaussian_std=c.gaussian_std)

    def forward(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> LossTerms:
        reconstruction_loss = -pixel_log_likelihood(output.decoded, images, self.likelihood, self.gaussian_std).mean()
        kl = output.posterior.kl().mean()
        return LossTerms(
            reconstruction_loss + self.kl_weight * kl,
            {"reconstruction_loss": reconstruction_loss, "kl": kl, "negative_elbo": reconstruction_loss + kl},
        )
