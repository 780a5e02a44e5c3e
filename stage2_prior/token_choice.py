"""Choosing the next token from a prior's logits: guidance, temperature, top-k, top-p, and an inverse-CDF draw
with the counter-based uniforms of `randomness`. Plain tensor functions, so the compiled decoding step can
take them into the same graph as the prior's forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vqgen.sampling_settings import SamplingSettings

from .randomness import uniforms


def blocked_cumsum(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Cumulative sum along the last dim of `b v`: sums within blocks of `block`, plus the running total of the
    blocks before (itself summed this way, so no scan is longer than `block`). Torch 2.11's CUDA inductor fails
    to generate the split scan it picks for one long row (16,384 codes at batch 64); a scan of 128 is not split.
    Sums may step down by rounding at a block boundary (a CPU cumsum adds in float64 before rounding); `draw`
    is exact regardless."""
    v = x.shape[-1]
    if v <= block:
        return x.cumsum(-1)
    blocks = torch.nn.functional.pad(x, (0, -v % block)).unflatten(-1, (-1, block))  # b n block
    within = blocks.cumsum(-1)
    before = torch.nn.functional.pad(blocked_cumsum(within[..., -1], block)[..., :-1], (1, 0))  # b n
    return (within + before[..., None]).flatten(-2)[..., :v]


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """`b v` logits -> temperature-scaled logits with everything outside top-k / the top-p nucleus at -inf."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        # the k-th largest is the least of the unsorted top k: the same value, without sorting
        kth = torch.topk(logits, top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p; the first is always kept, also where top_p
        # rounds to 0 in float32
        drop_sorted = (blocked_cumsum(sorted_probs) - sorted_probs) >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, keys: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
    """One token per row of `b v` logits by inverse-CDF sampling with the counter-based uniforms of
    `keys` (`b` int64) at `position`: no random-number call, nothing drawn on the CPU. A row with no finite
    logit, or with NaN or +inf (an overflowing temperature or guidance scale), draws token 0: checking would
    cost a device-to-host sync every step."""
    probs = logits.float().softmax(-1)
    cdf = blocked_cumsum(probs)
    threshold = uniforms(keys, position)[:, None] * cdf[:, -1:]
    # The first token whose CDF passes the threshold (`searchsorted(right=True)` where the CDF never decreases), as
    # fusable reductions, among tokens of positive probability: each token then owns the interval from the highest
    # CDF before it to its own, so rounding at a block boundary can neither draw a zero-probability token nor
    # skip one that has probability. If rounding puts the threshold at the total itself (u within 2**-24 of 1),
    # the draw is the last token of positive probability.
    possible = probs > 0
    passed = (cdf > threshold) & possible
    index = torch.arange(probs.shape[-1], device=probs.device)
    last_possible = torch.where(possible, index, 0).amax(-1)  # 0 where no token is possible (NaN logits)
    return torch.where(passed.any(-1), passed.int().argmax(-1), last_possible)


@dataclass(frozen=True)
class TokenChoice:
    """How `sample_codes` turns the logits of one step into tokens: `settings` applied to the first
    `codebook_size` logits. With guidance the logits' batch is `2b`: the conditional rows, then their
    unconditional twins."""

    codebook_size: int
    settings: SamplingSettings = SamplingSettings()

    def __call__(self, logits: torch.Tensor, keys: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """`b' v'` logits (special tokens included) -> `b` codes for code `position`."""
        s = self.settings
        step_logits = logits[:, : self.codebook_size].float()  # special tokens are never sampled
        if s.guidance_scale != 1.0:
            cond, uncond = step_logits.chunk(2)
            step_logits = uncond + s.guidance_scale * (cond - uncond)
        return draw(filter_logits(step_logits, s.temperature, s.top_k, s.top_p), keys, position)
