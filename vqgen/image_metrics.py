"""Per-image reconstruction metrics: MSE, PSNR and SSIM of images in [0, 1]."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

# PSNR of an exact reconstruction is infinite; a cap keeps means finite and JSON valid.
MAX_PSNR_DB = 100.0


def _check_pair(originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
    if originals.shape != reconstructions.shape or originals.ndim != 4:
        raise ValueError(f"need two `b c h w` batches of one shape, got {tuple(originals.shape)} "
                         f"and {tuple(reconstructions.shape)}")


def mse(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: `b`."""
    _check_pair(originals, reconstructions)
    return (originals.double() - reconstructions.double()).pow(2).flatten(1).mean(1)


def psnr_from_mse(error: torch.Tensor, max_db: float = MAX_PSNR_DB) -> torch.Tensor:
    """PSNR in dB (peak 1) of per-image mean squared errors, capped at `max_db`."""
    return (10 * torch.log10(1.0 / error)).clamp(max=max_db)


def psnr(originals: torch.Tensor, reconstructions: torch.Tensor, max_db: float = MAX_PSNR_DB) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB (peak 1), capped at `max_db`: `b`."""
    return psnr_from_mse(mse(originals, reconstructions), max_db)


def ssim(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5): `b`."""
    _check_pair(originals, reconstructions)
    return structural_similarity_index_measure(reconstructions.double(), originals.double(), data_range=1.0,
                                               reduction="none")
