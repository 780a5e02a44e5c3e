"""Sampling code grids from a prior: temperature, top-k, top-p, classifier-free guidance, counter-based
randomness, and a preallocated, dynamic or static KV cache (`decoding.py`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Unpack

import torch
from transformers import PreTrainedModel

from vqgen.sampling_settings import SamplingKwargs, SamplingSettings
from vqgen.validation import check_class_labels, is_integer

from .decoding import Decoder
from .prior import prior_spec
from .randomness import Generators, sample_keys
from .token_choice import TokenChoice


@torch.no_grad()
def sample_codes(
    prior: PreTrainedModel,
    num_samples: int,
    sampling: SamplingSettings | None = None,
    *,
    class_labels: torch.Tensor | Sequence[int | str] | int | str | None = None,
    generator: Generators = None,
    use_cache: bool = True,
    prompt_codes: torch.Tensor | None = None,
    cache_implementation: Literal["preallocated", "static", "dynamic"] | None = None,
    compile: bool | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    **kwargs: Unpack[SamplingKwargs],
) -> torch.Tensor:
    """Sample `num_samples` code grids `b h w` (long, in [0, K)) from `prior`.

    `sampling` holds temperature, top-k, top-p and guidance (`SamplingSettings`; None: the neutral ones); the same
    four as keywords (`temperature=0.8, top_k=50`) take the place of its fields. `class_labels` (ints or the prior's
    class names, one for all or one per sample; -1 is the null class) selects the class prefix; None gives
    unconditional samples (the null class of a conditional prior). With guidance_scale s != 1 the conditional and
    unconditional sequences run as one batch and the logits are combined as uncond + s * (cond - uncond); at s = 1
    the unconditional rows are not computed. `prompt_codes` (`b t` long, the first t codes in raster order) are
    kept and only the rest of each grid is sampled (image completion).

    Randomness: `generator` is one `torch.Generator`, one per sample (then sample i depends on
    `generator[i]` alone, whatever the batch), or None (the global RNG). Each sample draws one key
    from it; token j of sample i then uses the counter-based uniform hash(key_i, j), computed on
    the prior's device (`stage2_prior.randomness`).

    Decoding: `cache_implementation="preallocated"` (transformers' cache API over buffers sized for
    the sequence, no per-step concatenation), "dynamic" (transformers' DynamicCache, the reference) or
    "static" (a StaticCache; `compile=True` compiles its one-token step together with the token choice,
    as CUDA graphs on a GPU). All paths give the same codes in float32 up to rounding: a code can differ
    only where a draw falls within rounding of a top-k/top-p cut-off or a CDF boundary. The default (both
    None) is the compiled static path when the prior is on CUDA and the eager preallocated path elsewhere;
    compiling costs time at the first call for each batch size, so on a CPU it pays over long runs only
    (`pipelines.sample` compiles for those; docs/ has the measurements). On CUDA in bfloat16 the compiled
    path did not repeat its codes from call to call (float32 does; cause not found): pass compile=False there.
    `callback(position, codes)` runs after each code is drawn, outside the compiled step: `position` is the
    code's index in raster order, `codes` the `b position+1` codes so far (a view: copy what you keep).
    `use_cache=False` recomputes the whole prefix every step (only for measuring what the cache saves).
    """
    spec = prior_spec(prior)
    vocab = spec.vocabulary
    k, (h, w) = vocab.codebook_size, spec.tokenizer.grid_shape
    if not is_integer(num_samples) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    settings = SamplingSettings.resolve(sampling, **kwargs).check_for(codebook_size=k,
                                                                      conditional=vocab.num_classes > 0)
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
        labels = check_class_labels(class_labels, num_samples, vocab.num_classes, spec.class_names, null_class=True,
                                    model="prior").to(device)
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
    guided = settings.guidance_scale != 1.0
    if guided:  # the unconditional twins run as the second half of the batch
        tokens = torch.cat([tokens, vocab.sequences(prompt, None)])
    choose = TokenChoice(k, settings)
    # the prefix and every code but the last, which is drawn and never fed back
    decoder = Decoder(prior, max_length=h * w, cache=cache_implementation if use_cache else "uncached",
                      compile=compile)
    codes = torch.empty(num_samples, h * w, dtype=torch.long, device=device)
    codes[:, : prompt.shape[1]] = prompt
    nxt = decoder.first(tokens, choose, keys)
    for position in range(prompt.shape[1], h * w):
        codes[:, position] = nxt
        if callback is not None:
            callback(position, codes[:, : position + 1])
        if position + 1 < h * w:
            nxt = decoder.step(torch.cat([nxt, nxt]) if guided else nxt, choose, keys)
    return codes.reshape(num_samples, h, w)
