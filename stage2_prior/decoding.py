"""The decoding step of sampling: a prior fed its prefix once, then one token per step.

Four paths give the same logits (and so, with the counter-based draws, the same codes):
- "dynamic": transformers' `DynamicCache`, grown by concatenation each step (the reference);
- "preallocated": the same attention over the filled positions only, written into buffers sized for
  the whole sequence instead of concatenated (the fastest eager path);
- "static": a `StaticCache` sized for the whole sequence, so every step has the same shapes, which
  is what lets `torch.compile` (and CUDA graphs, under mode="reduce-overhead") trace it once; the compiled
  CPU step uses a `WindowedStaticCache`, whose attention reads the filled positions only, through one
  graph whose window length is symbolic;
- "uncached": the whole sequence recomputed each step, only to measure what a cache saves.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Literal

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

from . import kth_largest, onednn_matmuls
from .token_choice import TokenChoice

CacheImplementation = Literal["preallocated", "static", "dynamic", "uncached"]
CACHE_IMPLEMENTATIONS = ("preallocated", "static", "dynamic", "uncached")


def next_tokens(model, token: torch.Tensor, positions: torch.Tensor, cache, choose: TokenChoice, keys: torch.Tensor,
                counter: int | torch.Tensor) -> torch.Tensor:
    """One step: `b'` tokens fed at `positions` (`1 1`) -> the `b` tokens `choose` draws with `counter`. `model` is
    the prior or a compiled copy of it."""
    logits = model(input_ids=token[:, None], cache=cache, use_cache=True, position_ids=positions).logits
    return choose(logits[:, -1], keys, counter)


# guards on the state of autograd and autocast, on tensors' dtypes, devices and shapes
STATE_GUARDS = {"GLOBAL_STATE", "GRAD_MODE", "DETERMINISTIC_ALGORITHMS", "SHAPE_ENV", "DEFAULT_DEVICE",
                "TORCH_FUNCTION_STATE", "AUTOGRAD_SAVED_TENSORS_HOOKS", "DUPLICATE_INPUT", "TENSOR_MATCH"}


def step_guards(entries: list) -> list[bool]:
    """Which of dynamo's guards the compiled step checks at every call: those on what can change between two
    sampling runs of one prior.

    Dynamo guards the step with ~1,650 checks: ~1,200 on the prior's modules (hook dicts, attribute dicts,
    config constants) and ~250 on the globals of the code it traced (transformers' functions and constants).
    Checking them all cost 4-7 % of a step at batch 64 on a 2-core CPU; dropping those not kept here gains
    2-3 %. Kept: every guard on the step's inputs (tokens, positions, cache, token choice), on global state
    and on tensors, parameters included (a prior moved or converted recompiles), and the modules' `training`
    flags and attention setting, the attributes that sampling code switches. Not seen once a prior has compiled
    its step: hooks registered on it, its config or module attributes edited in place, transformers' functions
    patched (`torch._dynamo.reset()` starts afresh). Nor is anything left to tell two priors of the same shapes
    apart: each prior's step is compiled in isolation (`isolate_recompiles`), and dynamo serves an isolated
    compilation only to the `torch.compile` call that made it."""
    return [entry.guard_type in STATE_GUARDS
            or not (entry.is_global or entry.orig_guard.source.is_unspecialized_nn_module())
            or entry.name.endswith(".training") or "_attn_implementation" in entry.name for entry in entries]


class GraphPasses(CustomGraphPass):
    """Inductor takes one custom post-grad pass: these, in order."""

    def __init__(self, passes: list[CustomGraphPass]) -> None:
        self.passes = passes

    def __call__(self, graph: torch.fx.Graph) -> None:
        for graph_pass in self.passes:
            graph_pass(graph)

    def uuid(self) -> bytes:
        return b"".join(graph_pass.uuid() for graph_pass in self.passes)


class CompiledStep:
    """The one-token step compiled: `(b' tokens, 1 1 position, cache, choose, b keys) -> b` next tokens.

    The prior's forward pass and the choice of the next tokens are compiled as one graph when inductor can: the
    sampling ops (guidance, top-k, the counter-based draw) are ~35 small kernels per token that would otherwise
    run eagerly between two graph replays (on an H200 at batch 1, 2.2x faster than compiling the forward pass
    alone). Where that graph fails to compile for a batch size (torch 2.11's CUDA inductor did at batch 64 until
    the CDF was summed in blocks), that batch size falls back to the compiled forward pass with the choice made
    eagerly, with a warning. The counter of the draw is the position tensor, so no step recompiles. On a CPU the
    matrix products run on oneDNN with packed weights (`onednn_matmuls`), the top-k cut-off is found without
    branching on the logits (`kth_largest`), attention reads the filled positions only (`WindowedStaticCache`, one
    graph for every position), and the step checks only the guards of `step_guards`.
    """

    def __init__(self, prior: PreTrainedModel, mode: str | None) -> None:
        on_cpu = next(prior.parameters()).device.type == "cpu"

        def compiled(function):
            options = None  # mode is None on a CPU; torch.compile takes a mode or options, not both
            if on_cpu:  # a dict per call: torch.compile takes the guard filter out of the one it is given
                passes = [kth_largest.KthLargest()]
                if onednn_matmuls.available():
                    passes.append(onednn_matmuls.OneDNNMatmuls())
                options = {"guard_filter_fn": step_guards, "post_grad_custom_post_pass": GraphPasses(passes)}
            # isolated: what keeps another prior from being served this one's step under `step_guards`, and
            # dynamo's limit of 8 recompiles (then eager, silently) counts per prior, not across every prior
            # sampled in the process (its cap of 256 compilations of one function in a process still holds)
            return torch.compile(function, dynamic=False, fullgraph=False, mode=mode, options=options,
                                 isolate_recompiles=True)

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


def reusable_static_cache(prior: PreTrainedModel, batch: int, max_length: int, windowed: bool) -> StaticCache:
    """The prior's static cache for this shape (a `WindowedStaticCache` if `windowed`), emptied for reuse: a compiled
    step (and its CUDA graph) is recorded against the cache's tensors, so a fresh cache per call would mean fresh
    recordings. One is kept at a time: each holds every layer's keys and values for the whole batch."""
    parameter = next(prior.parameters())
    key = (batch, max_length, parameter.dtype, parameter.device, windowed)
    kept = prior.__dict__.get("_vqgen_static_cache")
    if kept is not None and kept[0] == key:
        kept[1].reset()
        return kept[1]
    cache = (WindowedStaticCache if windowed else StaticCache)(config=prior.config, max_cache_len=max_length)
    prior.__dict__["_vqgen_static_cache"] = (key, cache)
    return cache


class WindowedLayer(StaticLayer):
    """A static layer that hands attention the first `len(window)` positions of its buffers, not all of them.

    With the whole buffer, every step of a compiled static cache reads every position's keys and values, filled or
    not. Where the cache is most of what a step reads, that is most of the step: on a 2-core CPU, attending over the
    filled positions made the 256-pixel prior's compiled step 1.2x faster at batch 64 (256 codes, 12 layers x 768;
    no change at the MNIST prior's 49 codes). The window is the length of a tensor marked dynamic, so one graph serves
    every position. The buffers hold one spare position: a window as long as the buffer would be the buffer itself,
    which the compiler traces as another layout (another graph). Eager decoding keeps `PreallocatedLayer`: run
    eagerly, this layer's write at a tensor position made an MNIST sampling run ~9 % slower (1,121 against
    1,029 ms, median of 15 alternating rounds)."""

    def __init__(self, max_cache_len: int, **kwargs) -> None:
        super().__init__(max_cache_len + 1, **kwargs)
        self.window = torch.empty(max_cache_len, dtype=torch.uint8)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        length = self.window.shape[0]
        return keys[:, :, :length], values[:, :, :length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.window.shape[0], 0

    def reset(self) -> None:
        # the window never reaches past what this run has written, so a kept cache need not be zeroed for the next
        # run (as `StaticLayer.reset` does: 1.2 GB at the 256-pixel size at batch 64, 41 ms a run)
        self.cumulative_length.zero_()


class WindowedStaticCache(StaticCache):
    """`StaticCache` semantics over `WindowedLayer`s (full-attention models only): `attend_to(n)` before a forward
    pass whose last position is n - 1."""

    def __init__(self, config, max_cache_len: int) -> None:
        super().__init__(config=config, max_cache_len=max_cache_len)
        if any(type(layer) is not StaticLayer for layer in self.layers):
            raise ValueError("a windowed cache needs a model whose every layer attends to the full sequence")
        self.layers = [WindowedLayer(max_cache_len) for _ in self.layers]
        self.max_length = max_cache_len
        # the keys' and values' shape per layer, as the attention writes them
        self.heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def prepare_first_step(self, batch: int, like: torch.Tensor) -> None:
        """Ready the cache for a run whose prefix is one token, fed by the compiled step itself at position 0: the
        layers allocated ahead (the compiled step must not allocate them), and position 1 zeroed. That step attends
        over a window of 2 with position 1 masked out, since a window of 1 would be another graph (dynamo
        specialises sizes 0 and 1); zeros there keep the masked scores finite, so its weight is exactly 0. The
        buffers take `like`'s dtype and device (the prior's parameters')."""
        self.early_initialization(batch, self.heads, self.head_dim, like.dtype, like.device)
        for layer in self.layers:
            layer.keys[:, :, 1].zero_()
            layer.values[:, :, 1].zero_()

    def attend_to(self, length: int) -> None:
        window = torch.empty(length, dtype=torch.uint8)
        if 2 <= length <= self.max_length and self.max_length > 2:  # the steps' windows: 2 to the whole sequence
            torch._dynamo.mark_dynamic(window, 0, min=2, max=self.max_length)
        for layer in self.layers:
            layer.window = window


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
    """`first(b t tokens, choose, keys) -> b` tokens chosen after the prefix, then `step(b tokens, choose, keys) -> b`
    next tokens, inside `with decoder:`."""

    def __init__(self, prior: PreTrainedModel, max_length: int, cache: CacheImplementation = "dynamic",
                 compile: bool = False) -> None:
        if cache not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache must be one of {CACHE_IMPLEMENTATIONS}, got {cache!r}")
        if compile and cache != "static":
            raise ValueError("compile=True needs cache='static': only fixed shapes compile to one graph")
        self.prior = prior
        self.on_cuda = next(prior.parameters()).device.type == "cuda"
        # CUDA graphs ("reduce-overhead") replay the whole step as one launch: at batch 1 the step is launch-bound
        self.compiled = compiled_step(prior, "reduce-overhead" if self.on_cuda else None) if compile else None
        # On a CPU the compiled steps attend with the plain matmul-softmax-matmul form, which inductor fuses into
        # the step's other kernels: 1.1-1.3x the step with SDPA's CPU flash kernel, at one query per row. The
        # prefill keeps SDPA (the plain form would hold every score of the prompt). On CUDA SDPA stays (cuDNN's
        # kernel; the alternative is unmeasured there).
        self.attention = "eager" if compile and not self.on_cuda else None
        self.restore = prior.config._attn_implementation  # what `with decoder:` gives back
        self.max_length = max_length
        self.cache = (None if cache == "uncached" or compile
                      else StaticCache(config=prior.config, max_cache_len=max_length) if cache == "static"
                      else DynamicCache(config=prior.config) if cache == "dynamic"
                      else PreallocatedCache(prior.config, max_length))
        self.uncached = cache == "uncached"
        self.length = 0
        self.tokens: torch.Tensor | None = None

    def __enter__(self) -> Decoder:
        """Decode inside `with decoder:`: the attention the compiled CPU steps switch to is the prior's own again
        after the run, however it ends; their packed weights are checked against the prior's once a run. The
        switch is on the prior's config, so one prior must not decode in two threads at once with compile=True
        on a CPU."""
        self.exits = contextlib.ExitStack()
        self.exits.callback(self.restore_attention)  # runs last, whatever the packing scope does on its way out
        if self.compiled is not None and not self.on_cuda:
            self.exits.enter_context(onednn_matmuls.packing_scope(self.prior))
        return self

    def __exit__(self, *exc) -> None:
        self.exits.__exit__(*exc)

    def restore_attention(self) -> None:
        if self.prior.config._attn_implementation != self.restore:
            self.prior.set_attn_implementation(self.restore)

    def compiled_cache(self, batch: int) -> StaticCache:
        """The kept cache the compiled step is traced against: windowed on a CPU, where the step reads the filled
        positions only; whole on CUDA, where a CUDA graph needs fixed shapes."""
        return reusable_static_cache(self.prior, batch, self.max_length, windowed=not self.on_cuda)

    def first(self, tokens: torch.Tensor, choose: TokenChoice, keys: torch.Tensor) -> torch.Tensor:
        """`b' t` tokens (the prefix, then any prompt codes) -> the `b` tokens chosen for the position after them.

        A one-token prefix on the compiled CPU path is the compiled step at position 0 (~10 ms less a run with the
        MNIST prior at batch 64 than the eager forward pass and choice); anything else is prefilled eagerly."""
        if self.compiled is not None and not self.on_cuda and tokens.shape[1] == 1 and self.max_length > 2:
            self.cache = self.compiled_cache(tokens.shape[0])
            self.cache.prepare_first_step(tokens.shape[0], next(self.prior.parameters()))
            self.length = 0
            return self.step(tokens[:, 0], choose, keys)
        return choose(self.prefill(tokens), keys, tokens.shape[1] - 1)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        self.length = tokens.shape[1]
        if self.uncached:
            self.tokens = tokens
            return self.prior(input_ids=tokens, use_cache=False).logits[:, -1]
        if self.compiled is not None:
            self.cache = self.compiled_cache(tokens.shape[0])
        if isinstance(self.cache, WindowedStaticCache):
            self.cache.attend_to(self.length)
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
        if isinstance(self.cache, WindowedStaticCache):
            self.cache.attend_to(max(position + 1, 2))  # position 0: see `prepare_first_step`
        if self.compiled is not None:
            if self.on_cuda:
                torch.compiler.cudagraph_mark_step_begin()
            if self.attention is not None:  # after the prefill, which keeps SDPA's memory use; once a run
                self.prior.set_attn_implementation(self.attention)
                self.attention = None
            # cloned: a CUDA graph's output is overwritten by its next replay, and this one is the next step's input
            return self.compiled(token, positions, self.cache, choose, keys).clone()
        return next_tokens(self.prior, token, positions, self.cache, choose, keys, position)
