"""Likelihood figures: the importance-weighted bound of a VAE, and a bound for the two-stage model.

VAE / CVAE (Burda et al. 2016): with z_1..z_k ~ q(z|x) and w_j = p(x|z_j) p(z_j) / q(z_j|x),
    L_k = log (1/k) sum_j w_j  <=  log p(x),
L_1 is the ELBO and L_k grows towards log p(x) as k grows. Reported as -L_k in nats per image.

Two-stage model: the VQ-VAE encoder picks one code grid c*(x), so for any decoder density p(x|c),
    p(x) = sum_c p(c) p(x|c) >= p(c*) p(x|c*),
and -log2 p(c*) - log2 p(x|c*) is an upper bound on -log2 p(x). The prior gives p(c*); the
tokenizer, trained with a squared error, gets a discretised Gaussian around its reconstruction
whose sigma is fitted on training images, giving a proper probability over the 256 pixel levels.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from stage1_tokenizer.posterior import standard_normal_log_prob
from stage2_prior.prior import prior_spec
from stage2_prior.scoring import sequence_nll

from .protocols import Autoencoder


@torch.no_grad()
def importance_weighted_bound(
    model: Autoencoder,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    k: int = 5000,
    *,
    batch_size: int = 16,
    chunk: int = 500,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-L_k and the k-sample estimate of the negative ELBO, in nats, for each of `b c h w` images: `b`, `b`.

    Both come from the same k draws, so -L_k <= -ELBO holds image by image (Jensen); k = 1 gives the
    one-sample ELBO twice. `model` has an ELBO (`has_elbo`: encode gives q(z|x), decode_logits,
    log_likelihood). `generator` must live on the model's device.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    model.eval()
    device = model.device
    bounds, elbos = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=f"IWAE bound, k={k}", disable=not progress):
        x = images[start : start + batch_size].to(device)
        y = None if labels is None else labels[start : start + batch_size].to(device)
        posterior = model.encode(x, y)
        log_w = []
        for done in range(0, k, chunk):
            c = min(chunk, k - done)
            # c samples for every image at once: `c b ...`, flattened to `(c b) ...` for the decoder.
            z, log_q = posterior.sample_with_log_prob(c, generator)
            log_p = standard_normal_log_prob(z.flatten(0, 1)).view(c, -1)
            xr = x.repeat(c, *[1] * (x.ndim - 1))
            log_px = model.log_likelihood(model.decode_logits(z.flatten(0, 1), None if y is None else y.repeat(c)), xr)
            log_w.append(log_px.view(c, -1) + log_p - log_q)
        log_w = torch.cat(log_w).double()
        bounds.append(-(torch.logsumexp(log_w, 0) - math.log(k)).cpu())
        elbos.append(-log_w.mean(0).cpu())
    return torch.cat(bounds), torch.cat(elbos)


def discretized_gaussian_nll(images: torch.Tensor, means: torch.Tensor, sigma: float, levels: int = 256) -> torch.Tensor:
    """-log P(x) in nats of `b c h w` images on `levels` evenly spaced values in [0, 1]: `b`.

    Each level owns the interval half a step either side; the end levels own the tails, so the
    probabilities of the levels sum to one. Pixels are rounded to their level first, so float32
    round-off cannot make neighbouring intervals overlap.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}: an exact reconstruction needs a floor such as 1 / 510")
    level, mu = torch.round(images.double() * (levels - 1)), means.double()
    upper = torch.where(level == levels - 1, math.inf, ((level + 0.5) / (levels - 1) - mu) / sigma)
    lower = torch.where(level == 0, -math.inf, ((level - 0.5) / (levels - 1) - mu) / sigma)
    # log(Phi(u) - Phi(l)) = log Phi(u) + log(1 - exp(log Phi(l) - log Phi(u))), stable in both tails
    # after reflecting intervals on the right of the mean to the left.
    flip = (lower + upper) > 0
    lo, hi = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    log_p = log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-15))
    return -log_p.flatten(1).sum(1)


@torch.no_grad()
def code_nll(prior: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor | None = None,
             batch_size: int = 256) -> torch.Tensor:
    """-log p(codes) in nats under the prior for `b h w` code grids: `b`.

    `labels` None scores with the null class (the unconditional prior a conditional prior learns
    through label dropout), so the figure is a bound on log p(x), not log p(x | y). Only the K code
    logits are normalised, as the sampler draws them (training's figure normalises over the whole
    vocabulary, special tokens included, and is slightly higher).
    """
    vocab = prior_spec(prior).vocabulary
    k = vocab.codebook_size
    device = next(prior.parameters()).device
    prior.eval()
    out = []
    for start in range(0, len(codes), batch_size):
        c = codes[start : start + batch_size].flatten(1).to(device)
        y = None if labels is None else labels[start : start + batch_size].to(device)
        ids = vocab.sequences(c, y)
        out.append(sequence_nll(prior, ids, num_logits=k).cpu())
    return torch.cat(out)


def fit_decoder_sigma(tokenizer: Autoencoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """Maximum-likelihood sigma of a (continuous) Gaussian around the reconstructions of `images`,
    floored at a quarter of a pixel level so an exact reconstruction still gives a proper density."""
    device = tokenizer.device
    sse = sum((tokenizer.reconstruct(b.to(device)).double() - b.to(device).double()).pow(2).sum().item()
              for b in images.split(batch_size))
    return max(math.sqrt(sse / images.numel()), 0.25 / 255)
