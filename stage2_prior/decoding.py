"""The decoding step of sampling: a prior fed its prefix once, then one token per step.

Four paths give the same logits (and so, with the counter-based draws, the same codes):
- "dynamic": transformers' `DynamicCache`, grown by concatenation each step (the reference);
- "preallocated": the same attention over the filled positions only, written into buffers sized for
  the whole sequence instead of concatenated (the fastest eager path);
- "static": a `StaticCache` sized for the whole sequence, so every step has the same shapes, which
  is what lets `torch.compile` (and CUDA graphs, under mode="reduce-overhead") trace it once;
- "uncached": the whole sequence recomputed each step, only to measure what a cache saves.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer

CacheImplementation = Literal["preallocated", "static", "dynamic", "uncached"]
CACHE_IMPLEMENTATIONS = ("preallocated", "static", "dynamic", "uncached")

def compiled_forward(prior: PreTrainedModel, mode: str | None = None):
    """One compiled step per prior (and mode), so repeated calls reuse the graph. It is kept in a plain
    dict on the prior itself (not a submodule: it must not enter the state dict), so it lives and dies
    with the prior."""
    per_prior = prior.__dict__.setdefault("_vqgen_compiled_forward", {})
    if mode not in per_prior:
        per_prior[mode] = torch.compile(prior, dynamic=False, fullgraph=False, mode=mode)
    return per_prior[mode]


class PreallocatedLayer(DynamicLayer):
    """A dynamic layer that writes into a buffer sized for the whole sequence and hands attention a view
    of the filled part: the shapes (and the attention work) of a dynamic cache, without the
    concatenation that copies every key and value at every step (30 % of a CPU sampling run)."""

    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.max_length, self.length = max_length, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.key_buffer = key_states.new_empty(b, h, self.max_length, d)
        self.value_buffer = value_states.new_empty(b, value_states.shape[1], self.max_length, value_states.shape[-1])
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} positions; position {end - 1} was written")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


class PreallocatedCache(DynamicCache):
    """`DynamicCache` semantics over `PreallocatedLayer`s (full-attention models only)."""

    def __init__(self, config, max_length: int) -> None:
        super().__init__(config=config)
        if any(type(layer) is not DynamicLayer for layer in self.layers):
            raise ValueError("a preallocated cache needs a model whose every layer attends to the full sequence")
        self.layers = [PreallocatedLayer(max_length) for _ in self.layers]


class Decoder:
    """`prefill(b t tokens) -> b v` logits of the next token, then `step(b tokens) -> b v` per token."""

    def __init__(self, prior: PreTrainedModel, max_length: int, cache: CacheImplementation = "dynamic",
                 compile: bool = False) -> None:
        if cache not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache must be one of {CACHE_IMPLEMENTATIONS}, got {cache!r}")
        if compile and cache != "static":
            raise ValueError("compile=True needs cache='static': only fixed shapes compile to one graph")
        self.prior = prior
        self.forward = compiled_forward(prior, "reduce-overhead" if _on_cuda(prior) else None) if compile else prior
        self.cache = (StaticCache(config=prior.config, max_cache_len=max_length) if cache == "static"
                      else DynamicCache(config=prior.config) if cache == "dynamic"
                      else PreallocatedCache(prior.config, max_length) if cache == "preallocated" else None)
        self.length = 0
        self.tokens: torch.Tensor | None = None

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        self.length = tokens.shape[1]
        if self.cache is None:
            self.tokens = tokens
            return self.prior(input_ids=tokens, use_cache=False).logits[:, -1]
        positions = torch.arange(self.length, device=tokens.device)[None]
        return self.prior(input_ids=tokens, cache=self.cache, use_cache=True, position_ids=positions).logits[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """`b` next tokens -> `b v` logits of the token after them."""
        position = self.length
        self.length += 1
        if self.cache is None:
            self.tokens = torch.cat([self.tokens, token[:, None]], dim=1)
            return self.prior(input_ids=self.tokens, use_cache=False).logits[:, -1]
        positions = torch.full((1, 1), position, dtype=torch.long, device=token.device)
        return self.forward(input_ids=token[:, None], cache=self.cache, use_cache=True, position_ids=positions).logits[:, -1]


def _on_cuda(prior: PreTrainedModel) -> bool:
    return next(prior.parameters()).device.type == "cuda"
