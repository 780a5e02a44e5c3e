"""The diagonal Gaussian q(z|x) of the VAE family."""

from __future__ import annotations

import math
from collections.abc import Sequence

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

    @classmethod
    def standard_normal(cls, shape: tuple[int, ...], device: torch.device | str | None = None) -> GaussianPosterior:
        """N(0, I) over latents of `shape` (no batch dim), as one row `1 *shape`: the VAE family's prior."""
        zeros = torch.zeros((1, *shape), device=device)
        return cls(zeros, zeros)

    def sample_seeded(self, generators: Sequence[torch.Generator], temperature: float = 1.0) -> torch.Tensor:
        """One z per generator, `n ...`: z_i = mean + temperature * std * eps_i.

        eps_i is drawn on the CPU from `generators[i]` alone, so a row is the same whatever batch it
        is drawn in. The posterior holds one row (shared by every z) or one row per generator.
        """
        eps = torch.stack([torch.randn(self.mean.shape[1:], generator=g) for g in generators])
        return self.mean + temperature * self.std * eps.to(self.mean.device, self.mean.dtype)

    def sample_with_log_prob(
        self, num_samples: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_samples` draws for every row at once: z `n b ...` and log q(z|x) `n b`.

        log q comes from the noise itself, which is exact and avoids dividing by a tiny variance as
        `log_prob` would. `generator` must live on the posterior's device.
        """
        eps = torch.randn((num_samples, *self.mean.shape), generator=generator, device=self.mean.device,
                          dtype=self.mean.dtype)
        z = self.mean + self.std * eps
        log_q = (-0.5 * (eps.pow(2) + math.log(2 * math.pi)) - 0.5 * self.logvar).flatten(2).sum(2)
        return z, log_q


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over latent dims: `b`."""
    return (-0.5 * (z.pow(2) + math.log(2 * math.pi))).flatten(1).sum(1)
