"""Choosing the next token from a prior's logits: guidance, temperature, top-k, top-p, and an inverse-CDF draw
with the counter-based uniforms of `randomness`. Plain tensor functions, so the compiled decoding step can
take them into the same graph as the prior's forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .randomness import uniforms


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """`b v` logits -> temperature-scaled logits with everything outside top-k / the top-p nucleus at -inf."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (so the first is always kept)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, keys: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
    """One token per row of `b v` logits by inverse-CDF sampling with the counter-based uniforms of
    `keys` (`b` int64) at `position`: no random-number call, nothing drawn on the CPU."""
    cdf = logits.float().softmax(-1).cumsum(-1)
    threshold = uniforms(keys, position)[:, None] * cdf[:, -1:]
    # The number of CDF entries at or below the threshold: `searchsorted(right=True)` of a non-decreasing CDF,
    # as one fusable reduction (inductor's CUDA lowering of searchsorted failed at batch 64 with torch 2.11).
    idx = (cdf <= threshold).sum(-1)
    return idx.clamp_max(cdf.shape[-1] - 1)


@dataclass(frozen=True)
class TokenChoice:
    """How `sample_codes` turns the logits of one step into tokens. With guidance the logits' batch is
    `2b`: the conditional rows, then their unconditional twins."""

    codebook_size: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0

    def __call__(self, logits: torch.Tensor, keys: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """`b' v'` logits (special tokens included) -> `b` codes for code `position`."""
        step_logits = logits[:, : self.codebook_size].float()  # special tokens are never sampled
        if self.guidance_scale != 1.0:
            cond, uncond = step_logits.chunk(2)
            step_logits = uncond + self.guidance_scale * (cond - uncond)
        return draw(filter_logits(step_logits, self.temperature, self.top_k, self.top_p), keys, position)
