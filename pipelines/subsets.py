"""A uniform random subset of a split read batch by batch, in one pass and bounded memory.

Bottom-k sampling: every image draws a uniform key and the k smallest keys win, which picks each
k-subset with equal probability, whatever the order of the split (an image folder sorted by class
gives every class its share, where "the first k" would give the first class only). Only the k kept
images are held, as uint8.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def random_subset(batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], k: int, seed: int) -> torch.Tensor:
    """`min(k, n)` of the `b c h w` float images in [0, 1] of `batches`, as uint8 `k c h w` in a random order."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    generator = torch.Generator().manual_seed(seed)
    keys = torch.empty(0)
    kept = None
    for images, _ in batches:
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        keys = torch.cat([keys, torch.rand(len(pixels), generator=generator)])
        kept = pixels if kept is None else torch.cat([kept, pixels])
        if len(keys) > k:
            keys, order = keys.topk(k, largest=False, sorted=False)
            kept = kept[order]
    if kept is None:
        raise ValueError("the split is empty")
    return kept[keys.argsort()]  # ascending keys: any prefix is itself a uniform random subset
