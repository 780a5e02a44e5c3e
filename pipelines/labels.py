"""Class labels as users write them (ints, class names, digits typed on a command line) -> a label tensor.

The pipelines' tools (the Python API, the sampling CLI, the latent-tools CLI) hand what they got to
`resolve_labels`, which adds the model's defaults to the core's one check of labels
(`vqgen.validation.check_class_labels`, which `sample_codes` runs too), so "7", 7 and a class named "7"
mean the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vqgen.validation import check_class_labels

from .protocols import Labelled

Labels = int | str | Sequence[int | str] | torch.Tensor | None


def resolve_labels(model: Labelled, class_labels: Labels, num_samples: int) -> torch.Tensor | None:
    """Class labels as a `num_samples` long tensor: ints or class names, one for all or one per sample.

    None on a model that requires labels (a CVAE) cycles through its classes; on a class-conditional
    prior it samples the null class, i.e. unconditionally.
    """
    names = model.class_names
    if class_labels is None:
        return torch.arange(num_samples) % len(names) if model.requires_labels else None
    return check_class_labels(class_labels, num_samples, len(names or []), names, model=type(model).__name__)
