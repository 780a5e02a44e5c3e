"""The loss registry: a name on the command line (or a model's `default_loss`) -> its class.

Adding a loss is one file (a `TrainingLoss` subclass) plus one line here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .adversarial import AdversarialLoss
from .base import LossConfigurationError, LossSum, LossTerms, NoOptions, TrainingLoss
from .elbo import ELBOLoss
from .perceptual import LPIPSLoss
from .reconstruction import QuantizedReconstructionLoss

LOSSES: dict[str, type[TrainingLoss]] = {
    "vq": QuantizedReconstructionLoss,
    "elbo": ELBOLoss,
    "lpips": LPIPSLoss,
    "adversarial": AdversarialLoss,
}


def build_loss(model: nn.Module, extra: list[str] = (), options: dict[str, Any] | None = None) -> LossSum:
    """The model's own objective (`model.default_loss`) plus the `extra` losses, by name.

    `options` maps a loss name to its config dataclass instance (defaults where absent).
    """
    names = [model.default_loss, *[n for n in extra if n != model.default_loss]]
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss(es) {unknown}; vqgen knows {sorted(LOSSES)}")
    misfits = [n for n in names if model.model_type not in LOSSES[n].models]
    if misfits:
        raise ValueError(f"loss(es) {misfits} do not apply to a {model.model_type} model")
    options = options or {}
    return LossSum([LOSSES[n].from_model(model, options.get(n) or LOSSES[n].config_class()) for n in names])


__all__ = ["LOSSES", "AdversarialLoss", "ELBOLoss", "LPIPSLoss", "LossConfigurationError", "LossSum", "LossTerms",
           "NoOptions", "QuantizedReconstructionLoss", "TrainingLoss", "build_loss"]
