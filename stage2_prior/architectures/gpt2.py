"""GPT-2 as a prior: learned absolute positions, LayerNorm, GELU MLP; the default architecture."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import GPT2Config

if TYPE_CHECKING:
    from . import PriorSettings


def gpt2_config(settings: PriorSettings) -> GPT2Config:
    dropout = settings.dropout
    return GPT2Config(n_positions=settings.sequence_length, n_embd=settings.hidden_size, n_layer=settings.num_layers,
                      n_head=settings.num_heads, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                      **settings.config_fields())
