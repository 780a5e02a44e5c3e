"""Counter-based random numbers for sampling: u = hash(sample key, position), computed on the device.

Each sample gets one 64-bit key, drawn once from its own `torch.Generator` (or from a shared one);
the uniform for token `position` is a hash of (key, position). A token step therefore makes no
random-number call at all, whatever the batch size: one vectorised hash of `b` keys, on the device
the logits live on, so nothing crosses from the CPU. Sample i depends only on its key, so it is the
same in any batch, on any number of processes, and on CPU or GPU.

The hash is Wellons' `lowbias32` (an avalanche mixer with near-ideal bias), chained over the key's
two halves and the position. 32-bit products are split into 16-bit halves so every intermediate
fits in int64 without overflow, on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MASK32 = 0xFFFFFFFF
KEY_LIMIT = 2**62

Generators = torch.Generator | Sequence[torch.Generator] | None


def _mul32(x, m: int):
    """(x * m) mod 2**32 for x < 2**32 (an int64 tensor or a Python int), no intermediate above 2**49."""
    return ((x & 0xFFFF) * m + ((((x >> 16) * m) & 0xFFFF) << 16)) & MASK32


def hash32(x):
    """lowbias32 of 32-bit values, held in an int64 tensor or a Python int (same arithmetic, same result)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_keys(num_samples: int, generator: Generators = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """`num_samples` int64 keys: one per generator when given a list (sample i keyed by its own
    generator alone), else drawn together from one generator (or the global RNG)."""
    if generator is None or isinstance(generator, torch.Generator):
        keys = torch.randint(0, KEY_LIMIT, (num_samples,), generator=generator)
    else:
        if len(generator) != num_samples:
            raise ValueError(f"{len(generator)} generators for {num_samples} samples: pass one per sample")
        keys = torch.cat([torch.randint(0, KEY_LIMIT, (1,), generator=g) for g in generator])
    return keys.to(device)


def uniforms(keys: torch.Tensor, position: int) -> torch.Tensor:
    """`b` int64 keys -> `b` float32 uniforms in [0, 1) for token `position` (24 bits: exact in float32)."""
    counter = hash32(position + 0x9E3779B9)  # a Python int: mixed on the host, nothing copied to the device
    mixed = hash32((keys & MASK32) ^ hash32(((keys >> 32) & MASK32) ^ counter))
    return (mixed >> 8).to(torch.float32) / float(2**24)
