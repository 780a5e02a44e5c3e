"""`vq`: nearest-neighbour vector quantisation with the remedies against codebook collapse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqgen.fields import option
from vqgen.distributed import all_reduce_sum_, broadcast_

from .base import Quantizer, QuantizerOutput, check_codes

# Laplace smoothing of the EMA cluster sizes; the decay of a gradient-learned codebook's code counts (kept for its
# dead-code restarts); the Lloyd iterations of the k-means initialisation.
EMA_EPSILON = 1e-5
LEARNED_COUNT_DECAY = 0.99
KMEANS_ITERS = 10

CodebookInit = Literal["kmeans", "data", "random"]


@dataclass
class VectorQuantizerConfig:
    """`--quantizer vq`: nearest-neighbour codebook (van den Oord et al. 2017) with the collapse remedies.

    `ema_decay` updates the codebook as an exponential moving average of the vectors assigned to each code
    (with Laplace smoothing) instead of by gradient; None (0 on the command line) uses the gradient of the
    codebook term. A code whose moving-average count per step falls below `dead_code_threshold` is
    restarted from a random current encoder output. `codebook_init` "kmeans" runs k-means on the first
    training batch, "data" takes random first-batch vectors. With `rotation_trick` the encoder's gradient
    comes through `rotate_onto` (a rotation and rescaling of each encoder output onto its code, treated as
    a constant) instead of being copied straight through; the forward value is the code either way.
    """

    type: Literal["vq"] = "vq"
    codebook_size: int = option(512, "number of codes K")
    beta: float = option(0.25, "commitment weight")
    ema_decay: float | None = option(0.99, "EMA codebook decay; 0 = learn the codebook by gradient")
    dead_code_threshold: float = option(1.0, "restart codes whose EMA count per step falls below this; 0 disables")
    codebook_init: CodebookInit = option("kmeans", "codebook initialisation")
    l2_normalize: bool = option(False, "l2-normalised (cosine) codes")
    rotation_trick: bool = option(False, "gradient to the encoder through a rotation + rescale of it onto its code "
                                         "(Fifty et al. 2024) instead of the straight-through copy")

    def __post_init__(self) -> None:
        if self.ema_decay == 0:  # the command line's spelling of "learn the codebook by gradient"
            self.ema_decay = None
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), or 0 / None to learn the codebook by gradient, "
                             f"got {self.ema_decay}")
        if self.codebook_init not in get_args(CodebookInit):
            raise ValueError(f"codebook_init must be one of {get_args(CodebookInit)}, got {self.codebook_init!r}")


def squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """`n d, k d -> n k` as ||x||^2 - 2 x.e + ||e||^2: one matmul, never an `n k d` tensor."""
    return torch.addmm(
        codebook.pow(2).sum(1)[None, :] + x.pow(2).sum(1, keepdim=True), x, codebook.t(), alpha=-2.0
    )


# The n x K distance block of the nearest-code search is bounded, or a large codebook would need the whole
# matrix at once. On a CPU, blocks that fit the L2/L3 cache are also the fastest (the argmin then reads the
# block from cache; docs/performance.md); on an accelerator, larger blocks keep the kernel launches few.
BLOCK_BYTES_CPU = 2 * 2**20
BLOCK_BYTES_ACCELERATOR = 64 * 2**20


def nearest_codes(x: torch.Tensor, codebook: torch.Tensor, max_block_bytes: int | None = None) -> torch.Tensor:
    """`n d, k d -> n`: the index of the codebook row nearest (squared Euclidean) to each row of x.

    argmin_k ||x - e_k||^2 = argmin_k (||e_k||^2 - 2 x.e_k): the ||x||^2 term does not change the
    argmin and is left out. Rows of x are taken in blocks so that the `rows k` distance block stays
    under `max_block_bytes` (default: `BLOCK_BYTES_CPU` on a CPU, `BLOCK_BYTES_ACCELERATOR` elsewhere),
    every block written into one reused buffer (a fresh allocation per block would, on a CPU, page-fault
    the whole n x K matrix in again on every call). Not differentiable: codes are integers.

    It is one custom operator (`vqgen::nearest_codes`), so torch.compile keeps it whole inside its
    graph and runs this same implementation: compiled, the unrolled block loop would be fused into one
    slow generated argmin kernel on a CPU.
    """
    if max_block_bytes is None:
        max_block_bytes = BLOCK_BYTES_CPU if x.device.type == "cpu" else BLOCK_BYTES_ACCELERATOR
    with torch.no_grad():
        return _nearest_codes(x, codebook, max_block_bytes)


@torch.library.custom_op("vqgen::nearest_codes", mutates_args=())
def _nearest_codes(x: torch.Tensor, codebook: torch.Tensor, max_block_bytes: int) -> torch.Tensor:
    n, k = x.shape[0], codebook.shape[0]
    rows = max(1, max_block_bytes // (k * x.element_size()))
    norms, codebook_t = codebook.pow(2).sum(1)[None, :], codebook.t()
    if n <= rows:
        return torch.addmm(norms, x, codebook_t, alpha=-2.0).argmin(1)
    scores = x.new_empty(rows, k)
    codes = torch.empty(n, dtype=torch.long, device=x.device)
    for start in range(0, n, rows):
        block = x[start : start + rows]
        out = scores[: block.shape[0]]
        torch.addmm(norms, block, codebook_t, alpha=-2.0, out=out)
        torch.argmin(out, dim=1, out=codes[start : start + block.shape[0]])
    return codes


@_nearest_codes.register_fake
def _(x: torch.Tensor, codebook: torch.Tensor, max_block_bytes: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], dtype=torch.long)


# Below these norms the rotation is undefined (no direction to rotate from or to), or (for e + q nearly
# zero: e and q antipodal) its Householder vector r cannot be normalised accurately in float32; see
# `rotate_onto`.
ROTATION_MIN_NORM = 1e-6
ROTATION_MIN_HALFWAY = 1e-4


def rotate_onto(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """`n d, n d -> n d`: the rotation trick (Fifty et al. 2024, arXiv 2410.06424), in its Householder form.

    Returns (||q|| / ||e||) R e, where R = I - 2 r r^T + 2 q^ e^T with r = (e^ + q^) / ||e^ + q^|| is the
    rotation taking the direction e^ of e onto that q^ of q (so the value is q, up to rounding). The
    scale and R are constants, so the gradient reaching e is (||q|| / ||e||) R^T g for the upstream
    gradient g: g turned by the rotation that takes q^ back onto e^, so the angle between the gradient
    at e and e is the angle between g and q. R is applied as two dot products per row, never as a
    `d d` matrix.

    Safe where the rotation is undefined, with finite coefficients everywhere (so that no inf or nan
    reaches the backward pass): a row with ||e|| or ||q|| below `ROTATION_MIN_NORM` passes the gradient
    straight through (R = I, scale 1); where e^ and q^ are antipodal (||e^ + q^|| below
    `ROTATION_MIN_HALFWAY`, where r is mostly rounding error) r is dropped, so that R = I + 2 q^ e^T,
    which is the reflection I - 2 e^ e^T taking e^ onto q^ = -e^.
    """
    # The coefficients come from detached copies (not a no_grad block), so that they are constants for
    # forward-mode differentiation (torch.func.jvp) too.
    e_const, q_const = e.detach(), q.detach()
    e_norm, q_norm = e_const.norm(dim=1, keepdim=True), q_const.norm(dim=1, keepdim=True)
    defined = (e_norm > ROTATION_MIN_NORM) & (q_norm > ROTATION_MIN_NORM)
    e_hat = torch.where(defined, e_const / e_norm.clamp_min(ROTATION_MIN_NORM), 0.0)
    q_hat = torch.where(defined, q_const / q_norm.clamp_min(ROTATION_MIN_NORM), 0.0)
    halfway = e_hat + q_hat
    halfway_norm = halfway.norm(dim=1, keepdim=True)
    r = torch.where(halfway_norm > ROTATION_MIN_HALFWAY, halfway / halfway_norm.clamp_min(ROTATION_MIN_HALFWAY), 0.0)
    scale = torch.where(defined, q_norm / e_norm.clamp_min(ROTATION_MIN_NORM), 1.0)
    # R e = e - 2 r (r.e) + 2 q^ (e^.e): linear in e, with every coefficient a constant
    rotated = e - 2 * r * (r * e).sum(1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(1, keepdim=True)
    return scale * rotated


def kmeans(x: torch.Tensor, k: int, iters: int = KMEANS_ITERS,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        assign = nearest_codes(x, centroids)  # in blocks: k-means at 16,384 codes stays memory-light too
        sizes = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        # An empty cluster keeps its centroid rather than collapsing to zero.
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled, None]
    return centroids, sizes


class VectorQuantizer(Quantizer):
    """Maps each `dim`-vector of `z: b d h w` to its nearest of `config.codebook_size` codes.

    >>> quantizer = VectorQuantizer(VectorQuantizerConfig(codebook_size=512), dim=64)

    Under several processes the counts and sums are all-reduced and initialisation/restarts are
    decided on rank 0 and broadcast, so every process holds the same codebook. The quantiser always
    runs in float32, whatever the autocast context.

    Compiling: after its one-off data-driven initialisation (`initialize_`, which the first training
    call runs eagerly), a training or evaluation forward is one graph with no host synchronisation,
    so `torch.compile(quantizer, fullgraph=True)` works once the quantiser is initialised (call
    `initialize_(z)` or run one training step first; without `fullgraph` the first call simply runs
    the initialisation eagerly). Dead-code restarts are branch-free: every training step draws one
    random batch row per code (`codebook_size` draws from the generator of the input's device,
    whether or not any code is dead) and every process broadcasts the candidates from rank 0; the
    codes below the threshold take theirs.
    """

    config_class: ClassVar[type] = VectorQuantizerConfig

    def __init__(self, config: VectorQuantizerConfig, dim: int) -> None:
        super().__init__()
        self.config, self.dim = config, dim
        k, learned = config.codebook_size, config.ema_decay is None
        self.codebook = nn.Parameter(torch.empty(k, dim).uniform_(-1.0 / k, 1.0 / k), requires_grad=learned)
        # Persistent, so save -> load reproduces training exactly and a resumed run does not re-initialise.
        self.register_buffer("initialized", torch.tensor(config.codebook_init == "random"))
        self.register_buffer("cluster_size", torch.zeros(k))
        if not learned:
            self.register_buffer("embed_sum", torch.zeros(k, dim))
        # A host-side copy of `initialized`, so that forward never reads a device tensor to decide
        # whether to initialise (a graph break under torch.compile, a device sync on a GPU). It
        # follows the buffer through `initialize_` and `load_state_dict`.
        self._initialized = config.codebook_init == "random"

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.config.l2_normalize else x

    @property
    def codes(self) -> torch.Tensor:
        """The `K d` vectors the decoder actually receives."""
        return self._normalize(self.codebook)

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        """`b d h w` -> the `(b h w) d` vectors the codes are compared with (l2-normalised if so configured)."""
        return self._normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))

    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """`n d` (already flattened/normalised) -> `n` codes: the one search `nearest` and forward share."""
        return nearest_codes(flat.detach(), self.codes.detach())

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """`b h w` long -> `b d h w` codebook vectors."""
        codes = check_codes(codes, self.codebook_size).to(self.codebook.device)
        return rearrange(F.embedding(codes, self.codes), "b h w d -> b d h w")

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """`b d h w -> b h w` indices of the nearest codes, with no side effects on the codebook."""
        b, _, h, w = z.shape
        return self._nearest(self._flatten(z.float())).reshape(b, h, w)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        if self.training and not self._initialized:
            self.initialize_(z)  # once, eagerly; a compiled forward sees `_initialized` as a constant
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float())

    @torch.compiler.disable
    @torch.no_grad()
    def initialize_(self, z: torch.Tensor) -> None:
        """Data-driven codebook initialisation from the latents `z: b d h w` (k-means or random rows).

        The first training forward calls it; call it yourself before compiling with `fullgraph=True`.
        Every process must call it together (it broadcasts rank 0's codebook).
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            self._initialize(self._flatten(z.float()))

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        flat = self._flatten(z)
        codebook = self.codes
        codes = self._nearest(flat)
        quantized = F.embedding(codes, codebook)
        commitment_loss = self.config.beta * F.mse_loss(flat, quantized.detach())

        # Counts by index_add_ rather than bincount: bincount's output shape depends on the data,
        # which torch.compile cannot put in a graph.
        ones = torch.ones(codes.shape[0], device=codes.device, dtype=torch.float32)
        counts = torch.zeros(self.codebook_size, device=codes.device, dtype=torch.float32)
        counts = counts.index_add_(0, codes, ones)
        if self.training:  # summed over processes in training only (see FiniteScalarQuantizer.forward)
            counts = all_reduce_sum_(counts)
            self._update(flat.detach(), codes, counts)

        if self.config.rotation_trick:
            # The value is the code itself (t - t.detach() is exactly 0), so rounding in the rotation never
            # reaches the decoder; only the gradient comes from `rotate_onto`.
            rotated = rotate_onto(flat, quantized.detach())
            passed = quantized.detach() + (rotated - rotated.detach())
        else:
            passed = flat + (quantized - flat).detach()  # straight-through
        # Under EMA the codebook moves by averaging, so its term would only add a constant to the loss.
        losses = {"commitment_loss": commitment_loss}
        if self.config.ema_decay is None:
            losses["codebook_loss"] = F.mse_loss(quantized, flat.detach())
        return QuantizerOutput(
            quantized=passed.reshape(b, h, w, -1).permute(0, 3, 1, 2),
            codes=codes.reshape(b, h, w),
            counts=counts,
            losses=losses,
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.initialized.is_meta:
            self._initialized = bool(self.initialized)

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        # Decided on rank 0 and broadcast: k-means on different shards would give different codebooks.
        if self.config.codebook_init == "kmeans":
            codebook, sizes = kmeans(flat, self.codebook_size)
        else:
            idx = torch.randint(0, flat.shape[0], (self.codebook_size,)).to(flat.device)
            codebook = flat[idx]
            sizes = torch.full((self.codebook_size,), flat.shape[0] / self.codebook_size, device=flat.device)
        self.codebook.data.copy_(broadcast_(codebook.contiguous()))
        self.cluster_size.copy_(broadcast_(sizes.float().contiguous()))
        if self.config.ema_decay is not None:
            self.embed_sum.copy_(self.codebook.data * self.cluster_size[:, None])
        self.initialized.fill_(True)
        self._initialized = True

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        ema_decay = self.config.ema_decay
        decay = ema_decay if ema_decay is not None else LEARNED_COUNT_DECAY
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        if ema_decay is not None:
            sums = all_reduce_sum_(torch.zeros_like(self.embed_sum).index_add_(0, codes, flat))
            self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + EMA_EPSILON) / (n + self.codebook_size * EMA_EPSILON) * n
            codebook = self.embed_sum / smoothed[:, None]
        else:
            codebook = None
        if self.config.dead_code_threshold > 0:
            codebook = self._restart_dead_codes(flat, self.codebook.data if codebook is None else codebook)
        if codebook is not None:
            # through .data: the version counter of a gradient-learned codebook is left alone
            self.codebook.data.copy_(codebook)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """`codebook` with every code whose EMA count fell below the threshold replaced by a random row of `flat`.

        Branch-free, so it compiles into the step's graph and never reads a device value on the host:
        one candidate row is drawn for every code (`codebook_size` draws, every step, whether or not a
        code is dead) and rank 0's candidates are broadcast; `torch.where` keeps the live codes. Every
        rank therefore reaches the same broadcast every step, and the random stream advances by the
        same amount every step (a resumed run draws the same indices).
        """
        threshold = self.config.dead_code_threshold
        dead = self.cluster_size < threshold  # identical on every rank: all-reduced counts
        idx = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        candidates = broadcast_(flat[idx])
        self.cluster_size.masked_fill_(dead, threshold)
        if self.config.ema_decay is not None:
            self.embed_sum.copy_(torch.where(dead[:, None], candidates * threshold, self.embed_sum))
        return torch.where(dead[:, None], candidates, codebook)
