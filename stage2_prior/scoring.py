"""How well a prior predicts a token sequence: the one place its negative log-likelihood is computed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .vocabulary import PriorVocabulary


def sequence_nll(prior: PreTrainedModel, input_ids: torch.Tensor, num_logits: int | None = None) -> torch.Tensor:
    """-log p(tokens 1.. | token 0) in nats for `b L` input ids: `b`.

    `num_logits` K normalises over the first K logits only (the codes, as the sampler draws them);
    None normalises over the whole vocabulary, special tokens included, as training does.
    """
    logits = prior(input_ids=input_ids).logits[:, :-1, :num_logits].float()
    return F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none").sum(1)


@torch.no_grad()
def held_out_nll(accelerator, prior: PreTrainedModel, loader, vocab: PriorVocabulary, conditional: bool,
                 pixels_per_image: int) -> dict[str, float]:
    """Held-out negative log-likelihood of the codes over every process's batches (an `accelerate` loader): nats and
    bits per token, bits per pixel-dimension."""
    prior.eval()
    total_nll, total_tokens, total_images = 0.0, 0, 0
    for batch in loader:
        ids = vocab.sequences(batch["codes"], batch.get("label") if conditional else None)
        nll = accelerator.gather_for_metrics(sequence_nll(prior, ids))
        total_nll += nll.sum().item()
        total_images += nll.shape[0]
        total_tokens += nll.shape[0] * (ids.shape[1] - 1)
    prior.train()
    nats = total_nll / total_tokens
    return {
        "test/nats_per_token": nats,
        "test/bits_per_token": nats / math.log(2),
        "test/bits_per_pixel_dim": total_nll / total_images / math.log(2) / pixels_per_image,
    }
