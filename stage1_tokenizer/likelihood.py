"""p(x|z) of the VAE family over pixels in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pixel_log_likelihood(decoded: torch.Tensor, images: torch.Tensor, likelihood: str, gaussian_std: float) -> torch.Tensor:
    """log p(x|z) summed over pixels, in nats: `b c H W, b c H W -> b`.

    `decoded` holds Bernoulli logits or Gaussian means (with fixed std `gaussian_std`).
    """
    if likelihood == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(decoded, images, reduction="none")
    else:
        s = gaussian_std
        ll = -0.5 * ((images - decoded) / s).pow(2) - math.log(s * math.sqrt(2 * math.pi))
    return ll.flatten(1).sum(1)
