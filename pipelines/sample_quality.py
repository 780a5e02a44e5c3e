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


class FrechetStatistics:
    """Running float64 sums of a feature set, `n d` rows at a time: enough for its mean and covariance.

    Holding sum(x) and sum(x x^T) instead of the rows lets a split of any size be scored batch by batch.
    """

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        """Add `b d` rows."""
        if features.ndim != 2 or features.shape[1] != len(self.total):
            raise ValueError(f"expected `b {len(self.total)}` features, got {tuple(features.shape)}")
        x = features.detach().to("cpu", torch.float64)
        self.count += len(x)
        self.total += x.sum(0)
        self.outer += x.T @ x

    def mean_and_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`d` mean and `d d` unbiased covariance (as torch.cov)."""
        if self.count < 2:
            raise ValueError(f"need at least 2 rows per set, got {self.count}")
        mean = self.total / self.count
        return mean, (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)

    @classmethod
    def of(cls, features: torch.Tensor) -> FrechetStatistics:
        stats = cls(features.shape[1])
        stats.update(features)
        return stats


def frechet_distance_of_statistics(real: FrechetStatistics, fake: FrechetStatistics) -> float:
    """||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of the two sets' Gaussians."""
    if len(real.total) != len(fake.total):
        raise ValueError(f"the two feature sets differ in width: {len(real.total)} and {len(fake.total)}")
    mu_r, cov_r = real.mean_and_covariance()
    mu_f, cov_f = fake.mean_and_covariance()
    # tr((S_r S_f)^(1/2)) = sum of the square roots of the eigenvalues of S_r S_f, which are real and
    # non-negative (S_r S_f is similar to a PSD matrix); tiny negative or imaginary parts are round-off.
    eigenvalues = torch.linalg.eigvals(cov_r @ cov_f).real.clamp_min(0)
    distance = (mu_r - mu_f).pow(2).sum() + cov_r.trace() + cov_f.trace() - 2 * eigenvalues.sqrt().sum()
    if not torch.isfinite(distance):
        raise ValueError("the features contain NaN or inf: did sampling diverge?")
    return max(distance.item(), 0.0)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Fréchet distance of two `n d` feature sets held in memory (see `frechet_distance_of_statistics`)."""
    _check_features(real, fake, min_rows=2)
    return frechet_distance_of_statistics(FrechetStatistics.of(real), FrechetStatistics.of(fake))


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
