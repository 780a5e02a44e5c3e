"""A test plugin (`--plugins tests.toy_critic_plugin`): a one-parameter critic registered as the loss
`toy_critic`. The model is pushed by a term that depends on the critic, and the critic is trained on a
loss of its own by its own optimizer, as a discriminator would be."""

import torch
from torch import nn

from stage1_tokenizer import LOSSES, LossTerms, TrainingLoss


class ToyCritic(TrainingLoss):
    name = "toy_critic"
    learning_rate = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, output, images, step):
        term = 0.1 * (self.scale * output.decoded.mean()).pow(2).sum()
        return LossTerms(term, {"toy_term": term})

    def auxiliary_loss(self, output, images, step):
        return (self.scale * output.decoded.detach().mean() - 2 * images.mean()).pow(2).sum()


LOSSES[ToyCritic.name] = ToyCritic
