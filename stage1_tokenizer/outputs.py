"""The one output type every stage-1 model's forward returns: what the model computed, no losses.

A training loss (`stage1_tokenizer.losses`) turns it into named terms, in training and evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .posterior import GaussianPosterior


@dataclass
class AutoencoderOutput:
    reconstruction: torch.Tensor  # b c h w in [0, 1], no gradient guarantees (clamped / squashed)
    decoded: torch.Tensor  # b c h w, the decoder's raw output: pixel means (VQ), Bernoulli logits or Gaussian means (VAE)
    posterior: GaussianPosterior | None = None  # q(z|x) (VAE/CVAE)
    quantizer_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # weighted quantiser terms (VQ)
    codes: torch.Tensor | None = None  # b h w (VQ-VAE)
    # The decoder's final conv weight (the parameter itself, not a copy): a GAN loss balances its terms by
    # the ratio of their gradient norms with respect to it (taming's adaptive weight).
    last_layer: torch.Tensor | None = None
