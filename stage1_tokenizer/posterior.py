"""The diagonal Gaussian q(z|x) of the VAE family."""

from __future__ import annotations

import math

import torch


class GaussianPosterior:
    """q(z|x) = N(mean, diag(exp(logvar))); `mean`, `logvar`: `b ...` (any latent shape)."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean
        # Clamped so exp() stays finite in float16/bfloat16 and early training cannot produce inf.
        self.logvar = logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised z = mean + std * eps, differentiable in mean and logvar."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) in closed form, summed over latent dims: `b`."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over latent dims: `b`."""
        lp = -0.5 * ((z - self.mean).pow(2) / self.logvar.exp() + self.logvar + math.log(2 * math.pi))
        return lp.flatten(1).sum(1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over latent dims: `b`."""
    return (-0.5 * (z.pow(2) + math.log(2 * math.pi))).flatten(1).sum(1)
