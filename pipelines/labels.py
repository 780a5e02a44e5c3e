"""Class labels as users write them (ints, class names, digits typed on a command line) -> a label tensor.

The pipelines' tools (the Python API, the sampling CLI, the latent-tools CLI) hand what they got to
`resolve_labels`, which adds the model's defaults to the core's one check of labels
(`vqgen.validation.check_class_labels`, which `sample_codes` runs too), so "7", 7 and a class named "7"
mean the same everywhere. `batch_labels` is the one rule by which `pipe(...)`, `generate` and
`python -m pipelines.sample` fill a batch from labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vqgen.validation import check_class_labels, is_integer

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


def label_count(class_labels: Labels) -> int:
    """How many labels were given: 1 for a single label (an int, a name, a 0-d tensor)."""
    if isinstance(class_labels, (torch.Tensor, np.ndarray)):
        return 1 if class_labels.ndim == 0 else class_labels.shape[0]
    if isinstance(class_labels, Sequence) and not isinstance(class_labels, str):
        return len(class_labels)
    return 1


def batch_labels(model: Labelled, class_labels: Labels, num_samples: int | None) -> tuple[int, torch.Tensor | None]:
    """The batch size and its labels, by one rule: `num_samples` None gives one sample per label (1 without labels);
    otherwise the labels are cycled over the samples (`[0, 1, 2]` for 7 samples: 0 1 2 0 1 2 0), and more labels
    than samples are refused. A single label applies to every sample."""
    count = None if class_labels is None else label_count(class_labels)
    if num_samples is None:
        num_samples = count or 1
    if not is_integer(num_samples) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if count is None or count == 1:
        return num_samples, resolve_labels(model, class_labels, num_samples)
    if count == 0 or count > num_samples:
        raise ValueError(f"got {count} class labels for num_samples={num_samples}: pass one label, one per sample, "
                         "or fewer to cycle over the samples")
    labels = resolve_labels(model, class_labels, count)
    return num_samples, labels[torch.arange(num_samples, device=labels.device) % count]
