"""The loss contract of stage-1 training.

A loss is an `nn.Module` chosen by name (the registry in `__init__.py`) that turns a model's
`AutoencoderOutput`, the input images and the step into named terms. `forward` returns the terms the
model's optimizer minimises. A loss may own parameters (a discriminator will): then it also
implements `auxiliary_loss`, which the trainer minimises with an optimizer of its own built over
the loss's parameters at `learning_rate` (None: the run's), once per optimizer step on the last
micro-batch, and checkpoints with everything else. `auxiliary_loss` must judge detached model
outputs (`output.reconstruction.detach()`): the model's graph is freed by then.
Its options are the fields of its `config_class` dataclass; they become command-line flags.

A loss that weighs itself against the rest of the objective (the adversarial loss's adaptive weight
compares gradients at the decoder's last layer) sets `weighs_against_others`: `LossSum` then calls it
after every other part, with their summed loss as a fourth argument, `others`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..outputs import AutoencoderOutput


@dataclass
class LossTerms:
    loss: torch.Tensor  # what the optimizer minimises
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # named scalar parts and diagnostics, for logs

    def floats(self) -> dict[str, float]:
        return {"loss": self.loss.item(), **{k: v.item() for k, v in self.terms.items()}}


class LossConfigurationError(ValueError):
    """A loss cannot be built for this run (weights it needs are missing, options that do not fit): the
    training script prints the message alone and exits."""


@dataclass
class NoOptions:
    """A loss with nothing to set."""


class TrainingLoss(nn.Module):
    name: ClassVar[str]
    models: ClassVar[tuple[str, ...]] = ("vqvae", "vae", "cvae")  # the model types whose output it understands
    config_class: ClassVar[type] = NoOptions
    learning_rate: float | None = None
    weighs_against_others: ClassVar[bool] = False

    @classmethod
    def from_model(cls, model: nn.Module, config: Any) -> TrainingLoss:
        """Build for `model` (read its config, never keep the model) with this loss's options."""
        return cls()

    def forward(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> LossTerms:
        raise NotImplementedError

    def auxiliary_loss(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> torch.Tensor | None:
        """The loss of this module's own parameters; None when it has none."""
        return None


class LossSum(nn.Module):
    """Several losses as one: terms are merged, `loss` is the sum, auxiliary losses are summed too."""

    def __init__(self, losses: list[TrainingLoss]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(losses)

    def forward(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> LossTerms:
        total, terms = None, {}
        for part in self.parts:
            if not part.weighs_against_others:
                out = part(output, images, step)
                total = out.loss if total is None else total + out.loss
                terms.update(out.terms)
        # `others` is the same sum for every weighing part: none of them weighs against another
        others = total
        for part in self.parts:
            if part.weighs_against_others:
                out = part(output, images, step, others)
                total = total + out.loss
                terms.update(out.terms)
        return LossTerms(total, terms)

    def auxiliary_loss(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> torch.Tensor | None:
        losses = [a for part in self.parts if (a := part.auxiliary_loss(output, images, step)) is not None]
        return sum(losses) if losses else None

    def optimizer_groups(self) -> list[tuple[nn.Module, float | None]]:
        """The parts that own parameters, each with the learning rate its own optimizer should use."""
        return [(part, part.learning_rate) for part in self.parts if any(p.requires_grad for p in part.parameters())]
