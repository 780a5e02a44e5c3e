"""Per-sample seeds: sample i of a run seeded with `seed` is drawn from its own generator, seeded from (seed, i).

So the same seed gives the same images whatever the batch size or the number of processes that
share the work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a run seeded with `seed` (independent streams, no collisions)."""
    return int.from_bytes(hashlib.sha256(f"vqgen:{seed}:{index}".encode()).digest()[:8], "big") >> 1


def sample_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded with `sample_seed(seed, index)`."""
    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


def random_seed() -> int:
    """A fresh run seed, for a caller that passed none (drawn from torch's global generator)."""
    return int(torch.randint(0, 2**31 - 1, ()).item())
