"""Distances between a set of generated images and real ones, in some feature space `n d`.

Fréchet distance compares the Gaussians fitted to the two sets (Heusel et al. 2017; FID when the
features are Inception's). Precision and recall (Kynkäänniemi et al. 2019) ask how much of one set
lies inside the other's k-nearest-neighbour balls: precision = share of generated samples that look
real, recall = share of real samples the generator covers.
"""

from __future__ import annotations

import torch


def _check_features(a: torch.Tensor, b: torch.Tensor, min_rows: int) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two `n d` feature sets of one width, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(len(a), len(b)) < min_rows:
        raise ValueError(f"need at least {min_rows} rows per set, got {len(a)} and {len(b)}")


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of the two sets' Gaussians."""
    _check_features(real, fake, min_rows=2)
    real, fake = real.double(), fake.double()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T), torch.cov(fake.T)
    # tr((S_r S_f)^(1/2)) = sum of the square roots of the eigenvalues of S_r S_f, which are real and
    # non-negative (S_r S_f is similar to a PSD matrix); tiny negative or imaginary parts are round-off.
    eigenvalues = torch.linalg.eigvals(cov_r @ cov_f).real.clamp_min(0)
    distance = (mu_r - mu_f).pow(2).sum() + cov_r.trace() + cov_f.trace() - 2 * eigenvalues.sqrt().sum()
    if not torch.isfinite(distance):
        raise ValueError("the features contain NaN or inf: did sampling diverge?")
    return max(distance.item(), 0.0)


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row: `n`."""
    radii = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the row itself is at distance 0
    return torch.cat(radii)


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    inside = []
    for start in range(0, len(points), chunk):
        inside.append((torch.cdist(points[start : start + chunk], centres) <= radii[None]).any(1))
    return torch.cat(inside)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall with k-nearest-neighbour balls (k = 3 as in the paper)."""
    _check_features(real, fake, min_rows=k + 1)
    real, fake = real.double(), fake.double()
    precision = _inside_any_ball(fake, real, _kth_neighbour_radii(real, k, chunk), chunk).double().mean().item()
    recall = _inside_any_ball(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk).double().mean().item()
    return precision, recall
