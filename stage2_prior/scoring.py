"""How well a prior predicts a token sequence: the one place its negative log-likelihood is computed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


def sequence_nll(prior: PreTrainedModel, input_ids: torch.Tensor, num_logits: int | None = None) -> torch.Tensor:
    """-log p(tokens 1.. | token 0) in nats for `b L` input ids: `b`.

    `num_logits` K normalises over the first K logits only (the codes, as the sampler draws them);
    None normalises over the whole vocabulary, special tokens included, as training does.
    """
    logits = prior(input_ids=input_ids).logits[:, :-1, :num_logits].float()
    return F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none").sum(1)
