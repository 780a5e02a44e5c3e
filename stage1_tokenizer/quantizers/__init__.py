"""The quantiser registry: `type` in a tokenizer's config -> the class that builds it.

Adding a quantiser is one file (a `Quantizer` subclass with its config dataclass) plus one line here.
"""

from __future__ import annotations

from typing import Any

from .base import Quantizer, QuantizerOutput, codebook_usage
from .fsq import FiniteScalarQuantizer, FSQConfig
from .vector import VectorQuantizer, VectorQuantizerConfig

QUANTIZERS: dict[str, type[Quantizer]] = {
    "vq": VectorQuantizer,
    "fsq": FiniteScalarQuantizer,
}


def quantizer_config(data: Any) -> Any:
    """A quantiser config dataclass from itself or from its dict (as read from config.json)."""
    if not isinstance(data, dict):
        return data
    kind = data.get("type", "vq")
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantizer type {kind!r}; vqgen knows {sorted(QUANTIZERS)}")
    return QUANTIZERS[kind].config_class(**data)


def build_quantizer(config: Any, dim: int) -> Quantizer:
    """The quantiser a config names (by its `type`), for `dim` latent channels."""
    return QUANTIZERS[config.type](config, dim)


__all__ = ["FSQConfig", "FiniteScalarQuantizer", "QUANTIZERS", "Quantizer", "QuantizerOutput", "VectorQuantizer",
           "VectorQuantizerConfig", "build_quantizer", "codebook_usage", "quantizer_config"]
