"""`adversarial`: a PatchGAN discriminator against the tokenizer's reconstructions (taming's VQGAN recipe).

The model's objective gains `adversarial_weight * λ * g_loss`, where g_loss is the generator's loss
on the discriminator's logits for the reconstruction and λ is taming-transformers' adaptive weight

    λ = ‖∇_W others‖ / (‖∇_W g_loss‖ + 1e-4), clamped to [0, 1e4] and detached,

with W the decoder's last convolution (`output.last_layer`) and `others` the sum of every other loss
part (`LossSum` hands it over: `weighs_against_others`). Of those parts only the reconstruction
terms (squared error or likelihood, LPIPS) reach W; the quantiser's and the KL terms stop at the
encoder and the codebook, so ‖∇_W others‖ is exactly taming's ‖∇_W (L_rec + perceptual)‖. λ puts the
adversarial gradient at the decoder's output on the scale of the reconstruction's, whatever units
the reconstruction loss has (a mean squared error or nats per image).

The discriminator (`patchgan.py`) is this loss's own parameters: the trainer steps it by its own
AdamW on `auxiliary_loss` (the discriminator's loss on real images and detached reconstructions),
checkpoints it beside the model and never saves it in `model.safetensors`.

Before `discriminator_start_step` the loss adds nothing and the discriminator is not updated
(`auxiliary_loss` returns None on every process alike, so they skip the same collectives).
Without a graph (evaluation under no_grad) there is no gradient to balance: the term is reported
but adds nothing to `loss`, and `adaptive_weight` reads 0, as in taming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.fields import option

from ..outputs import AutoencoderOutput
from .base import LossConfigurationError, LossTerms, TrainingLoss
from .patchgan import PatchDiscriminator

ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4


@dataclass
class AdversarialOptions:
    gan_loss: Literal["hinge", "non_saturating"] = option("hinge", "the GAN objective of --extra_losses adversarial")
    adversarial_weight: float = option(0.5, "weight of the generator's adversarial term, on top of the adaptive "
                                            "weight (LlamaGen's default 0.5; taming's ImageNet VQGAN used 0.8)")
    discriminator_start_step: int = option(0, "optimizer step (from 0) at which the discriminator starts training "
                                              "and the adversarial term enters the loss; start once reconstructions "
                                              "are good, or they may collapse (taming-transformers issue 44)")
    discriminator_learning_rate: float | None = option(None, "the discriminator's AdamW learning rate "
                                                             "(default: --learning_rate)")
    discriminator_channels: int = option(64, "width of the PatchGAN discriminator's first layer")
    discriminator_layers: int = option(3, "stride-2 layers of the PatchGAN discriminator (3: 70x70 patches)")


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, gan_loss: str) -> torch.Tensor:
    """What the discriminator minimises: the mean over real and fake of each one's loss."""
    if gan_loss == "hinge":
        return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())
    # -log sigmoid(real) - log(1 - sigmoid(fake)), in the overflow-free softplus form
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor, gan_loss: str) -> torch.Tensor:
    """What the generator minimises on the discriminator's logits for its images."""
    if gan_loss == "hinge":
        return -logits_fake.mean()
    # non-saturating: -log sigmoid(fake), strong gradients while the discriminator still wins
    return F.softplus(-logits_fake).mean()


def adaptive_weight(others: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """λ = ‖∇_W others‖ / (‖∇_W g_loss‖ + 1e-4), clamped to [0, 1e4], detached (W = `last_layer`).

    The graph is kept for the model's own backward.
    """
    (grad_others,) = torch.autograd.grad(others, last_layer, retain_graph=True)
    (grad_g,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = grad_others.norm() / (grad_g.norm() + ADAPTIVE_WEIGHT_EPS)
    return weight.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


class AdversarialLoss(TrainingLoss):
    name = "adversarial"
    config_class = AdversarialOptions
    weighs_against_others = True

    def __init__(self, discriminator: nn.Module, config: AdversarialOptions) -> None:
        super().__init__()
        self.discriminator, self.config = discriminator, config
        self.learning_rate = config.discriminator_learning_rate

    @classmethod
    def from_model(cls, model: nn.Module, config: Any) -> AdversarialLoss:
        if config.discriminator_start_step < 0 or config.adversarial_weight < 0:
            raise LossConfigurationError("--discriminator_start_step and --adversarial_weight must be >= 0")
        discriminator = PatchDiscriminator(model.config.image_channels, config.discriminator_channels,
                                           config.discriminator_layers)
        return cls(discriminator, config)

    def forward(self, output: AutoencoderOutput, images: torch.Tensor, step: int,
                others: torch.Tensor | None = None) -> LossTerms:
        if step < self.config.discriminator_start_step:
            return LossTerms(torch.zeros((), device=images.device), {})
        logits_fake = self.discriminator(output.reconstruction)
        g_loss = generator_loss(logits_fake, self.config.gan_loss)
        if torch.is_grad_enabled():
            if others is None or output.last_layer is None:
                raise ValueError("the adversarial loss needs the rest of the objective (build it with build_loss) "
                                 "and the decoder's last layer in the model's output (output.last_layer)")
            weight = adaptive_weight(others, g_loss, output.last_layer)
        else:
            weight = torch.zeros((), device=g_loss.device)
        with torch.no_grad():  # the discriminator's own view, for the logs; it is trained in auxiliary_loss
            logits_real = self.discriminator(images)
            d_loss = discriminator_loss(logits_real, logits_fake, self.config.gan_loss)
        return LossTerms(self.config.adversarial_weight * weight * g_loss, {
            "g_loss": g_loss.detach(), "adaptive_weight": weight, "d_loss": d_loss,
            "logits_real": logits_real.mean(), "logits_fake": logits_fake.detach().mean(),
        })

    def auxiliary_loss(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> torch.Tensor | None:
        if step < self.config.discriminator_start_step:
            return None
        logits_real = self.discriminator(images)
        logits_fake = self.discriminator(output.reconstruction.detach())
        return discriminator_loss(logits_real, logits_fake, self.config.gan_loss)
