"""Sampling code grids from a prior: temperature, top-k, top-p, classifier-free guidance, KV cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

from .prior import prior_spec

Generators = torch.Generator | Sequence[torch.Generator] | None


def check_sampling_args(
    num_samples: int, vocabulary_codes: int, *, temperature: float, top_k: int | None, top_p: float | None,
    guidance_scale: float, conditional: bool,
) -> None:
    """Refuse bad settings before any work is done."""
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= vocabulary_codes:
        raise ValueError(f"top_k must lie in [1, {vocabulary_codes}] (the codebook size), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if guidance_scale != 1.0 and not conditional:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs a class-conditional prior; this one is unconditional. "
            "Use guidance_scale=1.0."
        )


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """`b v` logits -> temperature-scaled logits with everything outside top-k / the top-p nucleus at -inf."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (so the first is always kept)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(logits: torch.Tensor, generators: Generators = None) -> torch.Tensor:
    """One token per row of `b v` logits by inverse-CDF sampling.

    With one generator per row, row i's draw depends only on its own generator, so a sample is the
    same whatever batch it is drawn in.
    """
    probs = logits.float().softmax(-1)
    if generators is None or isinstance(generators, torch.Generator):
        u = torch.rand(probs.shape[0], 1, generator=generators, device="cpu")
    else:
        if len(generators) != probs.shape[0]:
            raise ValueError(f"{len(generators)} generators for {probs.shape[0]} rows")
        u = torch.stack([torch.rand(1, generator=g, device="cpu") for g in generators])
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u.to(probs.device) * cdf[:, -1:]).contiguous(), right=True)
    return idx.clamp_max(probs.shape[-1] - 1).squeeze(1)


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
) -> torch.Tensor:
    """Sample `num_samples` code grids `b h w` (long, in [0, K)) from `prior`.

    `class_labels` (`b`, or -1 entries for the null class) selects the class prefix; None gives
    unconditional samples (the null class of a conditional prior). With `guidance_scale` s != 1
    the conditional and unconditional sequences run as one batch and the logits are combined as
    uncond + s * (cond - uncond). `use_cache=False` recomputes the whole prefix at every step (only
    for measuring what the key/value cache saves). `prompt_codes` (`b t` long, the first t codes
    in raster order) are kept and only the rest of each grid is sampled (image completion).
    """
    spec = prior_spec(prior)
    vocab = spec.vocabulary
    k, (h, w) = vocab.codebook_size, spec.tokenizer.grid_shape
    check_sampling_args(num_samples, k, temperature=temperature, top_k=top_k, top_p=top_p,
                        guidance_scale=guidance_scale, conditional=vocab.num_classes > 0)
    device = next(prior.parameters()).device
    labels = None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels, dtype=torch.long)
        if labels.shape != (num_samples,):
            raise ValueError(f"class_labels must have shape [{num_samples}], got {tuple(labels.shape)}")
    prompt = torch.empty(num_samples, 0, dtype=torch.long, device=device)
    if prompt_codes is not None:
        prompt = torch.as_tensor(prompt_codes, device=device)
        if prompt.ndim != 2 or prompt.shape[0] != num_samples or prompt.shape[1] >= h * w:
            raise ValueError(f"prompt_codes must have shape [{num_samples}, t] with t < {h * w}, got {tuple(prompt.shape)}")
        if prompt.is_floating_point() or (prompt.numel() and (prompt.min() < 0 or prompt.max() >= k)):
            raise ValueError(f"prompt_codes must be integer codes in [0, {k - 1}]")
    tokens = vocab.sequences(prompt, labels)
    guided = guidance_scale != 1.0
    if guided:  # the unconditional twins run as the second half of the batch
        tokens = torch.cat([tokens, vocab.sequences(prompt, None)])

    # One cache object, filled in place by every forward call (transformers' Cache API).
    cache = DynamicCache(config=prior.config) if use_cache else None
    for _ in range(h * w - prompt.shape[1]):
        if cache is not None:
            new_tokens = tokens[:, cache.get_seq_length():]  # the whole prefix first, then one token per step
            logits = prior(input_ids=new_tokens, cache=cache, use_cache=True).logits
        else:
            logits = prior(input_ids=tokens, use_cache=False).logits
        logits = logits[:, -1, :k].float()  # special tokens are never sampled
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + guidance_scale * (cond - uncond)
        nxt = draw(filter_logits(logits, temperature, top_k, top_p), generator)
        tokens = torch.cat([tokens, (torch.cat([nxt, nxt]) if guided else nxt)[:, None]], dim=1)
    return tokens[:num_samples, 1:].reshape(num_samples, h, w)
