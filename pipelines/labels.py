"""Class labels as users write them (ints, class names, digits typed on a command line) -> a label tensor.

The one parser of labels: the Python API, the sampling CLI and the latent-tools CLI all hand what
they got to `resolve_labels`, so "7", 7 and a class named "7" mean the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .protocols import Labelled

Labels = int | str | Sequence[int | str] | torch.Tensor | None


def class_index(value: int | str, names: list[str]) -> int:
    """A class name, or an int (or a string of one), as an index into `names`; names win over digits."""
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        raise ValueError(f"unknown class name {value!r}; this model's classes are {names}")
    index = int(value)
    if not 0 <= index < len(names):
        raise ValueError(f"class label {value!r} is out of range: this model has {len(names)} classes, "
                         f"0..{len(names) - 1} ({names})")
    return index


def resolve_labels(model: Labelled, class_labels: Labels, num_samples: int) -> torch.Tensor | None:
    """Class labels as a `num_samples` long tensor: ints or class names, one for all or one per sample.

    None on a model that requires labels (a CVAE) cycles through its classes; on a class-conditional
    prior it samples the null class, i.e. unconditionally.
    """
    names = model.class_names
    if class_labels is None:
        return torch.arange(num_samples) % len(names) if model.requires_labels else None
    if names is None:
        raise ValueError(f"class_labels were given, but this {type(model).__name__} is unconditional: "
                         "pass class_labels=None, or use a class-conditional model.")
    if isinstance(class_labels, torch.Tensor):
        values: list = class_labels.flatten().tolist() if class_labels.ndim else [class_labels.item()]
    elif isinstance(class_labels, (int, str)):
        values = [class_labels]
    else:
        values = list(class_labels)
    if len(values) == 1:
        values = values * num_samples
    if len(values) != num_samples:
        raise ValueError(f"got {len(values)} class labels for num_samples={num_samples}: pass one label or one per sample")
    return torch.tensor([class_index(v, names) for v in values], dtype=torch.long)
