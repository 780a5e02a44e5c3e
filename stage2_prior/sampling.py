"""Sampling code grids from a prior: temperature, top-k, top-p, classifier-free guidance, counter-based
randomness, and a preallocated, dynamic or static KV cache (`decoding.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from transformers import PreTrainedModel

from vqgen.validation import is_finite_number, is_integer

from .decoding import Decoder
from .prior import prior_spec
from .randomness import Generators, sample_keys
from .token_choice import TokenChoice


def check_sampling_args(
    num_samples: int, vocabulary_codes: int, *, temperature: float, top_k: int | None, top_p: float | None,
    guidance_scale: float, conditional: bool,
) -> None:
    """Refuse bad settings before any work is done: wrong types, non-integral counts, NaN and infinity too."""
    if not is_integer(num_samples) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not is_finite_number(temperature) or not temperature > 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not is_integer(top_k) or not 1 <= top_k <= vocabulary_codes):
        raise ValueError(f"top_k must be an integer in [1, {vocabulary_codes}] (the codebook size), got {top_k!r}")
    if top_p is not None and (not is_finite_number(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if not is_finite_number(guidance_scale):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    if guidance_scale != 1.0 and not conditional:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs a class-conditional prior; this one is unconditional. "
            "Use guidance_scale=1.0."
        )


@torch.no_grad()
def sample_codes(
    prior: PreTrainedModel,
    num_samples: int,
    *,
    class_labels: torch.Tensor | Sequence[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
    generator: Generators = None,
    use_cache: bool = True,
    prompt_codes: torch.Tensor | None = None,
    cache_implementation: Literal["preallocated", "static", "dynamic"] | None = None,
    compile: bool | None = None,
) -> torch.Tensor:
    """Sample `num_samples` code grids `b h w` (long, in [0, K)) from `prior`.

    `class_labels` (`b`, or -1 entries for the null class) selects the class prefix; None gives
    unconditional samples (the null class of a conditional prior). With `guidance_scale` s != 1
    the conditional and unconditional sequences run as one batch and the logits are combined as
    uncond + s * (cond - uncond); at s = 1 the unconditional rows are not computed. `prompt_codes`
    (`b t` long, the first t codes in raster order) are kept and only the rest of each grid is
    sampled (image completion).

    Randomness: `generator` is one `torch.Generator`, one per sample (then sample i depends on
    `generator[i]` alone, whatever the batch), or None (the global RNG). Each sample draws one key
    from it; token j of sample i then uses the counter-based uniform hash(key_i, j), computed on
    the prior's device (`stage2_prior.randomness`).

    Decoding: `cache_implementation="preallocated"` (transformers' cache API over buffers sized for
    the sequence, no per-step concatenation), "dynamic" (transformers' DynamicCache, the reference) or
    "static" (a StaticCache; `compile=True` compiles its one-token step together with the token choice,
    as CUDA graphs on a GPU; on a CPU with oneDNN matrix products on packed weights, attending over the
    filled positions only). All paths give the same codes in float32 up to rounding: their logits agree
    to ~1e-6, so a code can differ only where a draw falls within rounding of a top-k/top-p cut-off or a
    CDF boundary (the tests and the MNIST-size benchmark gave equal codes). The default (both None) is the
    compiled static path when the prior is on CUDA (8-10x `generate` on an H200; the first call for a batch
    size compiles, ~15-25 s) and the eager preallocated path elsewhere: on a 2-core CPU the compiled path
    makes 1.8-2.2x `generate`'s tokens/s with the MNIST prior and 2.9x at the 256-pixel size (1.6-1.9x the
    eager path's), after 5-70 s of compilation, so it pays over long runs (`pipelines.sample` compiles for
    those). On CUDA in bfloat16 the compiled path did not repeat its codes from call to call (float32 does;
    cause not found): pass compile=False there.
    `use_cache=False` recomputes the whole prefix every step (only for measuring what the cache saves).
    """
    spec = prior_spec(prior)
    vocab = spec.vocabulary
    k, (h, w) = vocab.codebook_size, spec.tokenizer.grid_shape
    check_sampling_args(num_samples, k, temperature=temperature, top_k=top_k, top_p=top_p,
                        guidance_scale=guidance_scale, conditional=vocab.num_classes > 0)
    if not isinstance(use_cache, bool) or not (compile is None or isinstance(compile, bool)):
        raise TypeError(f"use_cache must be True or False and compile True, False or None, got {use_cache!r}, {compile!r}")
    if cache_implementation not in (None, "preallocated", "static", "dynamic"):
        raise ValueError(f"cache_implementation must be 'preallocated', 'static' or 'dynamic', got {cache_implementation!r}")
    device = next(prior.parameters()).device
    if compile is None:
        compile = device.type == "cuda" and use_cache and cache_implementation is None
    cache_implementation = cache_implementation or ("static" if compile else "preallocated")
    if compile and (cache_implementation != "static" or not use_cache):
        raise ValueError("compile=True needs cache_implementation='static' (only fixed shapes compile to one graph) "
                         "and use_cache=True")
    labels = None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"class_labels must be integers, got dtype {labels.dtype}")
        if labels.shape != (num_samples,):
            raise ValueError(f"class_labels must have shape [{num_samples}], got {tuple(labels.shape)}")
        labels = labels.long().to(device)
    prompt = torch.empty(num_samples, 0, dtype=torch.long, device=device)
    if prompt_codes is not None:
        prompt = torch.as_tensor(prompt_codes, device=device)
        if prompt.ndim != 2 or prompt.shape[0] != num_samples or prompt.shape[1] >= h * w:
            raise ValueError(f"prompt_codes must have shape [{num_samples}, t] with t < {h * w}, got {tuple(prompt.shape)}")
        if prompt.is_floating_point() or (prompt.numel() and (prompt.min() < 0 or prompt.max() >= k)):
            raise ValueError(f"prompt_codes must be integer codes in [0, {k - 1}]")
        prompt = prompt.long()
    keys = sample_keys(num_samples, generator, device)

    tokens = vocab.sequences(prompt, labels)
    guided = guidance_scale != 1.0
    if guided:  # the unconditional twins run as the second half of the batch
        tokens = torch.cat([tokens, vocab.sequences(prompt, None)])
    choose = TokenChoice(k, temperature, top_k, top_p, guidance_scale)
    # the prefix and every code but the last, which is drawn and never fed back
    decoder = Decoder(prior, max_length=h * w, cache=cache_implementation if use_cache else "uncached",
                      compile=compile)
    codes = torch.empty(num_samples, h * w, dtype=torch.long, device=device)
    codes[:, : prompt.shape[1]] = prompt
    with decoder:
        nxt = decoder.first(tokens, choose, keys)
        for position in range(prompt.shape[1], h * w):
            codes[:, position] = nxt
            if position + 1 < h * w:
                nxt = decoder.step(torch.cat([nxt, nxt]) if guided else nxt, choose, keys)
    return codes.reshape(num_samples, h, w)
