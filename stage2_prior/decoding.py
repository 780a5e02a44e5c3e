"""The decoding loop's step: a prior fed its prefix once, then one token per step.

Two paths a user chooses between (`sample_codes(compile=...)`), and two references:
- "preallocated" (eager): attention over the filled positions, written into buffers sized for the whole
  sequence instead of concatenated each step;
- "static" + compile: a `StaticCache` sized for the whole sequence gives every step the same shapes, so
  `torch.compile` traces the step, with the token choice, once (as CUDA graphs on a GPU);
- "dynamic" (transformers' `DynamicCache`, the reference the others are tested against) and "uncached"
  (the prefix recomputed every step, to measure what a cache saves).
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer

from .token_choice import TokenChoice

CacheImplementation = Literal["preallocated", "static", "dynamic", "uncached"]
CACHE_IMPLEMENTATIONS = ("preallocated", "static", "dynamic", "uncached")


def next_tokens(model, token: torch.Tensor, positions: torch.Tensor, cache, choose: TokenChoice, keys: torch.Tensor,
                counter: int | torch.Tensor) -> torch.Tensor:
    """One step: `b'` tokens fed at `positions` (`1 1`) -> the `b` tokens `choose` draws with `counter`. `model` is
    the prior or a compiled copy of it."""
    logits = model(input_ids=token[:, None], cache=cache, use_cache=True, position_ids=positions).logits
    return choose(logits[:, -1], keys, counter)


class CompiledStep:
    """The one-token step compiled: `(b' tokens, 1 1 position, cache, choose, b keys) -> b` next tokens.

    The forward pass and the token choice compile into one graph, so the sampling ops do not run as small eager
    kernels between two graph replays. Should that graph fail to compile for a batch size, that size falls back to
    the compiled forward pass with the choice made eagerly, with a warning. The draw's counter is the position
    tensor, so no step recompiles. Each prior compiles in isolation: dynamo's limit of recompiles (past which it
    runs eagerly, silently) then counts per prior, not across every prior sampled in the process.
    """

    def __init__(self, prior: PreTrainedModel, mode: str | None) -> None:
        compiled = functools.partial(torch.compile, dynamic=False, mode=mode, isolate_recompiles=True)
        self.forward = compiled(prior)
        self.fused = compiled(functools.partial(next_tokens, prior))
        self.unfusable: set[int] = set()  # batch sizes whose fused graph failed to compile

    def __call__(self, token: torch.Tensor, positions: torch.Tensor, cache: StaticCache, choose: TokenChoice,
                 keys: torch.Tensor) -> torch.Tensor:
        if token.shape[0] not in self.unfusable:
            try:
                return self.fused(token, positions, cache, choose, keys, positions[0, 0])
            except Exception as error:  # noqa: BLE001 - the compiler's own errors have no common class to name
                self.unfusable.add(token.shape[0])
                warnings.warn(f"compiling the sampling ops into the decoding step failed at batch {token.shape[0]} "
                              f"({type(error).__name__}: {str(error)[:200]}); compiling the prior's forward pass "
                              "alone for this batch size", RuntimeWarning, stacklevel=3)
        return next_tokens(self.forward, token, positions, cache, choose, keys, positions[0, 0])


def compiled_step(prior: PreTrainedModel, mode: str | None = None) -> CompiledStep:
    """One `CompiledStep` per prior (and mode), so repeated calls reuse the graphs. Kept in a plain dict on the
    prior itself (not a submodule: it must not enter the state dict), so it lives and dies with the prior."""
    per_prior = prior.__dict__.setdefault("_vqgen_compiled_step", {})
    if mode not in per_prior:
        per_prior[mode] = CompiledStep(prior, mode)
    return per_prior[mode]


def reusable_static_cache(prior: PreTrainedModel, batch: int, max_length: int) -> StaticCache:
    """The prior's static cache for this shape, emptied for reuse: a compiled step (and its CUDA graph) is recorded
    against the cache's tensors, so a fresh cache per call would mean fresh recordings. One is kept at a time."""
    parameter = next(prior.parameters())
    key = (batch, max_length, parameter.dtype, parameter.device)
    kept = prior.__dict__.get("_vqgen_static_cache")
    if kept is not None and kept[0] == key:
        kept[1].reset()
        return kept[1]
    cache = StaticCache(config=prior.config, max_cache_len=max_length)
    prior.__dict__["_vqgen_static_cache"] = (key, cache)
    return cache


class PreallocatedLayer(DynamicLayer):
    """A dynamic layer that writes into a buffer sized for the whole sequence and hands attention a view of the
    filled part: a dynamic cache's shapes and attention work, without the concatenation that copies every key and
    value at every step."""

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
    """`first(b t tokens, choose, keys) -> b` tokens chosen after the prefix, then `step(b tokens, choose, keys) -> b`
    next tokens."""

    def __init__(self, prior: PreTrainedModel, max_length: int, cache: CacheImplementation = "dynamic",
                 compile: bool = False) -> None:
        if cache not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache must be one of {CACHE_IMPLEMENTATIONS}, got {cache!r}")
        if compile and cache != "static":
            raise ValueError("compile=True needs cache='static': only fixed shapes compile to one graph")
        self.prior, self.max_length, self.length = prior, max_length, 0
        self.on_cuda = next(prior.parameters()).device.type == "cuda"
        # CUDA graphs ("reduce-overhead") replay the whole step as one launch: at batch 1 the step is launch-bound
        self.compiled = compiled_step(prior, "reduce-overhead" if self.on_cuda else None) if compile else None
        self.uncached = cache == "uncached"
        self.cache = (None if self.uncached or compile
                      else StaticCache(config=prior.config, max_cache_len=max_length) if cache == "static"
                      else DynamicCache(config=prior.config) if cache == "dynamic"
                      else PreallocatedCache(prior.config, max_length))
        self.tokens: torch.Tensor | None = None

    def first(self, tokens: torch.Tensor, choose: TokenChoice, keys: torch.Tensor) -> torch.Tensor:
        """`b' t` tokens (the prefix, then any prompt codes) -> the `b` tokens chosen for the position after them."""
        return choose(self.prefill(tokens), keys, tokens.shape[1] - 1)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        self.length = tokens.shape[1]
        if self.uncached:
            self.tokens = tokens
            return self.prior(input_ids=tokens, use_cache=False).logits[:, -1]
        if self.compiled is not None:
            self.cache = reusable_static_cache(self.prior, tokens.shape[0], self.max_length)
        positions = torch.arange(self.length, device=tokens.device)[None]
        return self.prior(input_ids=tokens, cache=self.cache, use_cache=True, position_ids=positions).logits[:, -1]

    def step(self, token: torch.Tensor, choose: TokenChoice, keys: torch.Tensor) -> torch.Tensor:
        """`b'` tokens at the next position -> `b` tokens chosen for the position after them (the fed token's
        position is the counter of the draw: code j sits at position j + 1, after the class token)."""
        position = self.length
        self.length += 1
        if self.uncached:
            self.tokens = torch.cat([self.tokens, token[:, None]], dim=1)
            return choose(self.prior(input_ids=self.tokens, use_cache=False).logits[:, -1], keys, position)
        positions = torch.full((1, 1), position, dtype=torch.long, device=token.device)
        if self.compiled is None:
            return next_tokens(self.prior, token, positions, self.cache, choose, keys, position)
        if self.on_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        # cloned: a CUDA graph's output is overwritten by its next replay, and this one is the next step's input
        return self.compiled(token, positions, self.cache, choose, keys).clone()
