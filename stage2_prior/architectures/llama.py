"""Llama as a prior: rotary positions, RMSNorm, SwiGLU MLP (4x wide), dropout on attention only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import LlamaConfig

if TYPE_CHECKING:
    from . import PriorSettings


def llama_config(settings: PriorSettings) -> LlamaConfig:
    return LlamaConfig(hidden_size=settings.hidden_size, intermediate_size=4 * settings.hidden_size,
                       num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
                       num_key_value_heads=settings.num_heads, max_position_embeddings=settings.sequence_length,
                       attention_dropout=settings.dropout, **settings.config_fields())
