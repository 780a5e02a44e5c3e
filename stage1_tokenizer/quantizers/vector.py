"""`vq`: nearest-neighbour vector quantisation with the remedies against codebook collapse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqgen.cli import option
from vqgen.distributed import all_reduce_sum_, broadcast_

from .base import Quantizer, QuantizerOutput, check_codes

CodebookInit = Literal["kmeans", "data", "random"]


@dataclass
class VectorQuantizerConfig:
    """`--quantizer vq`: nearest-neighbour codebook (van den Oord et al. 2017) with the collapse remedies."""

    type: Literal["vq"] = "vq"
    codebook_size: int = option(512, "number of codes K")
    beta: float = option(0.25, "commitment weight")
    ema_decay: float | None = option(0.99, "EMA codebook decay; 0 = learn the codebook by gradient")
    dead_code_threshold: float = option(1.0, "restart codes whose EMA count per step falls below this; 0 disables")
    codebook_init: Literal["kmeans", "data", "random"] = option("kmeans", "codebook initialisation")
    l2_normalize: bool = option(False, "l2-normalised (cosine) codes")

    def __post_init__(self) -> None:
        if self.ema_decay == 0:  # the command line's spelling of "learn the codebook by gradient"
            self.ema_decay = None


def squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """`n d, k d -> n k` as ||x||^2 - 2 x.e + ||e||^2: one matmul, never an `n k d` tensor."""
    return torch.addmm(
        codebook.pow(2).sum(1)[None, :] + x.pow(2).sum(1, keepdim=True), x, codebook.t(), alpha=-2.0
    )


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding on `n d` vectors; returns (`k d` centroids, `k` cluster sizes)."""
    # k-means++: each new seed is drawn with probability proportional to its squared distance to the
    # nearest seed so far, which keeps two seeds from starting in one cluster.
    first = torch.randint(0, x.shape[0], (1,), generator=generator).item()
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[first]
    nearest = squared_distances(x, centroids[:1]).squeeze(1).clamp_min(0)
    for j in range(1, k):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        idx = torch.multinomial(weights.cpu(), 1, generator=generator).item()
        centroids[j] = x[idx]
        nearest = torch.minimum(nearest, squared_distances(x, centroids[j : j + 1]).squeeze(1).clamp_min(0))
    sizes = torch.zeros(k, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        assign = squared_distances(x, centroids).argmin(1)
        sizes = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        # An empty cluster keeps its centroid rather than collapsing to zero.
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled, None]
    return centroids, sizes


class VectorQuantizer(Quantizer):
    """Maps each `dim`-vector of `z: b d h w` to its nearest of `codebook_size` codes.

    Args:
        codebook_size: number of codes K.
        dim: code dimension d (the encoder's output channels).
        beta: weight of the commitment term.
        ema_decay: update the codebook as an exponential moving average of the vectors assigned to
            each code (with Laplace smoothing) instead of by gradient; `None` uses the gradient of the
            codebook term.
        dead_code_threshold: a code whose moving-average count per step falls below this is restarted
            from a random current encoder output; 0 disables restarts.
        init: "kmeans" (k-means on the first batch), "data" (random first-batch vectors) or "random".
        l2_normalize: compare and decode l2-normalised vectors (cosine-similarity codebook).
        epsilon: Laplace smoothing of EMA cluster sizes.

    Under several processes the counts and sums are all-reduced and initialisation/restarts are
    decided on rank 0 and broadcast, so every process holds the same codebook. The quantiser always
    runs in float32, whatever the autocast context.
    """

    type: ClassVar[str] = "vq"
    config_class: ClassVar[type] = VectorQuantizerConfig

    @classmethod
    def from_config(cls, config: VectorQuantizerConfig, dim: int) -> VectorQuantizer:
        return cls(config.codebook_size, dim, beta=config.beta, ema_decay=config.ema_decay,
                   dead_code_threshold=config.dead_code_threshold, init=config.codebook_init,
                   l2_normalize=config.l2_normalize)

    def __init__(
        self,
        codebook_size: int = 512,
        dim: int = 64,
        *,
        beta: float = 0.25,
        ema_decay: float | None = 0.99,
        dead_code_threshold: float = 1.0,
        init: CodebookInit = "kmeans",
        l2_normalize: bool = False,
        kmeans_iters: int = 10,
        epsilon: float = 1e-5,
    ) -> None:
        super().__init__()
        if init not in ("kmeans", "data", "random"):
            raise ValueError(f"init must be 'kmeans', 'data' or 'random', got {init!r}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
        self._codebook_size, self.dim, self.beta = codebook_size, dim, beta
        self.ema_decay, self.dead_code_threshold, self.init = ema_decay, dead_code_threshold, init
        self.l2_normalize, self.kmeans_iters, self.epsilon = l2_normalize, kmeans_iters, epsilon

        codebook = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.codebook = nn.Parameter(codebook, requires_grad=ema_decay is None)
        # Persistent, so save -> load reproduces training exactly and a resumed run does not re-initialise.
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        if ema_decay is not None:
            self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))

    @property
    def codebook_size(self) -> int:
        return self._codebook_size

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    @property
    def codes(self) -> torch.Tensor:
        """The `K d` vectors the decoder actually receives."""
        return self._normalize(self.codebook)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """`b h w` long -> `b d h w` codebook vectors."""
        codes = check_codes(codes, self.codebook_size).to(self.codebook.device)
        return rearrange(F.embedding(codes, self.codes), "b h w d -> b d h w")

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """`b d h w -> b h w` indices of the nearest codes, with no side effects on the codebook."""
        b, _, h, w = z.shape
        flat = self._normalize(rearrange(z.float(), "b d h w -> (b h w) d"))
        codes = squared_distances(flat, self.codes).argmin(1)
        return rearrange(codes, "(b h w) -> b h w", b=b, h=h, w=w)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        flat = self._normalize(rearrange(z, "b d h w -> (b h w) d"))
        if self.training and not bool(self.initialized):
            self._initialize(flat.detach())

        codes = squared_distances(flat.detach(), self.codes.detach()).argmin(1)
        quantized = F.embedding(codes, self.codes)
        codebook_loss = F.mse_loss(quantized, flat.detach())
        commitment_loss = self.beta * F.mse_loss(flat, quantized.detach())

        counts = all_reduce_sum_(torch.bincount(codes, minlength=self.codebook_size).float())
        if self.training:
            self._update(flat.detach(), codes, counts)

        straight_through = flat + (quantized - flat).detach()
        # Under EMA the codebook moves by averaging, so its term would only add a constant to the loss.
        losses = {"commitment_loss": commitment_loss}
        if self.ema_decay is None:
            losses["codebook_loss"] = codebook_loss
        return QuantizerOutput(
            quantized=rearrange(straight_through, "(b h w) d -> b d h w", b=b, h=h, w=w),
            codes=rearrange(codes, "(b h w) -> b h w", b=b, h=h, w=w),
            counts=counts,
            losses=losses,
        )

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        # Decided on rank 0 and broadcast: k-means on different shards would give different codebooks.
        if self.init == "kmeans":
            codebook, sizes = kmeans(flat, self.codebook_size, self.kmeans_iters)
        else:
            idx = torch.randint(0, flat.shape[0], (self.codebook_size,)).to(flat.device)
            codebook = flat[idx]
            sizes = torch.full((self.codebook_size,), flat.shape[0] / self.codebook_size, device=flat.device)
        self.codebook.data.copy_(broadcast_(codebook.contiguous()))
        self.cluster_size.copy_(broadcast_(sizes.float().contiguous()))
        if self.ema_decay is not None:
            self.embed_sum.copy_(self.codebook.data * self.cluster_size[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        decay = self.ema_decay if self.ema_decay is not None else 0.99
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        if self.ema_decay is not None:
            sums = all_reduce_sum_(torch.zeros_like(self.embed_sum).index_add_(0, codes, flat))
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
            self.codebook.data.copy_(self.embed_sum / smoothed[:, None])
        self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        if self.dead_code_threshold <= 0:
            return
        # cluster_size is identical on every rank (built from all-reduced counts), so every rank takes
        # this branch together and the broadcast below is reached by all of them.
        dead = self.cluster_size < self.dead_code_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        idx = torch.randint(0, flat.shape[0], (num_dead,)).to(flat.device)
        replacement = broadcast_(flat[idx].contiguous())
        self.codebook.data[dead] = replacement
        self.cluster_size[dead] = self.dead_code_threshold
        if self.ema_decay is not None:
            self.embed_sum[dead] = replacement * self.dead_code_threshold
