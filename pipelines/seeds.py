"""Per-sample seeds: sample i of a run seeded with `seed` is drawn from its own generator, seeded from (seed, i).

So the same seed gives the same images whatever the batch size or the number of processes that
share the work. A caller's own `torch.Generator`s give each sample its generator too (`call_generators`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch

from vqgen.validation import is_integer

SEED_LIMIT = 2**63 - 1


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a run seeded with `seed` (independent streams, no collisions)."""
    return int.from_bytes(hashlib.sha256(f"vqgen:{seed}:{index}".encode()).digest()[:8], "big") >> 1


def sample_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded with `sample_seed(seed, index)`."""
    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


def random_seed() -> int:
    """A fresh run seed, for a caller that passed none (drawn from torch's global generator)."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


def check_generator(generator: torch.Generator | Sequence[torch.Generator] | None, seed: int | None) -> None:
    """Refuse `seed` and `generator` together, and a generator argument of the wrong type."""
    if generator is None:
        return
    if seed is not None:
        raise ValueError("pass seed or generator, not both: both decide the random draws")
    many = generator if isinstance(generator, Sequence) else [generator]
    if not many or not all(isinstance(g, torch.Generator) for g in many):
        raise TypeError(f"generator must be a torch.Generator or a non-empty list of them, got {generator!r}")


def call_generators(num_samples: int, seed: int | None,
                    generator: torch.Generator | Sequence[torch.Generator] | None) -> tuple[list[torch.Generator], int | None]:
    """One CPU generator per sample of a call, and the run seed (None with `generator`).

    `seed` (None: a random one): sample i from (seed, i). One `generator`: sample i from the i-th of `num_samples`
    seeds drawn in order from it. A list: sample i from a seed drawn from `generator[i]`. Either way no generator
    depends on the batch size, and a generator on any device works.
    """
    check_generator(generator, seed)
    if generator is None:
        seed = random_seed() if seed is None else seed
        if not is_integer(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        return sample_generators(seed, range(num_samples)), seed
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, SEED_LIMIT, (num_samples,), generator=generator, device=generator.device).tolist()
    else:
        if len(generator) != num_samples:
            raise ValueError(f"got {len(generator)} generators for num_samples={num_samples}: pass one generator, "
                             "or one per sample")
        seeds = [int(torch.randint(0, SEED_LIMIT, (1,), generator=g, device=g.device)) for g in generator]
    return [torch.Generator().manual_seed(s) for s in seeds], None
