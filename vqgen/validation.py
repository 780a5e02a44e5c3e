"""Input checks that name the problem and the fix, run before any work is done."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch


class ImageGeometry(Protocol):
    image_size: int
    image_channels: int


def is_integer(value: object) -> bool:
    """An int (or a traced size), never a bool: what counts and indices must be."""
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """An int or float that is neither NaN nor infinite, never a bool: what a sampling setting must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_images(images: torch.Tensor, config: ImageGeometry) -> None:
    """Images must be a float `b c h w` tensor in [0, 1] of the size and channels the model was built for."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape [b, c, h, w], got {type(images).__name__}")
    if images.ndim != 4:
        hint = " (add a batch dimension with images.unsqueeze(0))" if images.ndim == 3 else ""
        raise ValueError(f"images must have shape [b, c, h, w], got {tuple(images.shape)}{hint}")
    b, c, h, w = images.shape
    if c != config.image_channels:
        raise ValueError(
            f"this model takes {config.image_channels}-channel images, got {c} channels (shape {tuple(images.shape)}); "
            f"convert with load_image_dataset(..., channels={config.image_channels})."
        )
    if (h, w) != (config.image_size, config.image_size):
        raise ValueError(
            f"this model takes {config.image_size}x{config.image_size} images, got {h}x{w}; "
            f"resize with load_image_dataset(..., image_size={config.image_size})."
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0, 1], got dtype {images.dtype}; for uint8 use images.float() / 255.")
    if b and not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    if b and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(
            f"pixel values must lie in [0, 1], got [{images.min().item():.3g}, {images.max().item():.3g}]; "
            "for uint8 images divide by 255, for [-1, 1] images use (x + 1) / 2."
        )


def check_labels(labels: torch.Tensor | None, num_classes: int, batch_size: int) -> torch.Tensor:
    """The labels a class-conditional model's forward pass takes: required, checked by `check_class_labels`."""
    if labels is None:
        raise ValueError("this model is class-conditional: pass labels (a [b] tensor of class indices)")
    return check_class_labels(labels, batch_size, num_classes)


def check_class_labels(labels: Any, num_samples: int, num_classes: int, class_names: Sequence[str] | None = None,
                       *, null_class: bool = False, model: str = "model") -> torch.Tensor:
    """Class labels as users give them -> a `num_samples` long tensor of indices: the one check of labels.

    Ints or class names (a string of digits counts as an int where no class has that name, as typed on a command
    line), one for all samples or one per sample: a value, a sequence, or a 0-d / 1-d tensor or array. Whole
    floats count as ints. -1 (the null class) is taken where `null_class`. Refused, with the problem and the fix:
    bools, floats with a fractional part, other shapes and counts, ints out of range, unknown names, and any
    label for a model without classes (`model` names it). A tensor keeps its device.
    """
    if num_classes == 0:
        raise ValueError(f"class_labels were given, but this {model} is unconditional: pass class_labels=None, "
                         "or use a class-conditional model.")
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if isinstance(labels, torch.Tensor):
        values = _label_tensor(labels, num_samples)
    else:
        items = list(labels) if isinstance(labels, Sequence) and not isinstance(labels, str) else [labels]
        values = torch.tensor([_class_index(item, num_classes, class_names) for item in items], dtype=torch.long)
    if values.numel() == 1:
        values = values.repeat(num_samples)
    if values.shape[0] != num_samples:
        raise ValueError(f"got {values.shape[0]} class labels for num_samples={num_samples}: pass one label or one "
                         "per sample")
    low = -1 if null_class else 0
    if values.numel() and (values.min() < low or values.max() >= num_classes):
        bad = values[(values < low) | (values >= num_classes)][0].item()
        null = " or -1 (the null class)" if null_class else ""
        names = f" ({list(class_names)})" if class_names else ""
        raise ValueError(f"class label {bad} is out of range: this {num_classes}-class {model} takes "
                         f"0..{num_classes - 1}{null}{names}")
    return values


def _label_tensor(labels: torch.Tensor, num_samples: int) -> torch.Tensor:
    """A tensor of labels as a 1-d long tensor, checked as a whole (no per-element Python on a training batch)."""
    if labels.ndim > 1:
        raise ValueError(f"class_labels must be one label or a 1-d tensor of {num_samples} labels, got shape "
                         f"{tuple(labels.shape)}; flatten it, or pass one label per sample")
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"class_labels must be ints or class names, got a tensor of dtype {labels.dtype}; "
                        "convert with labels.long()")
    if labels.is_floating_point() and labels.numel() and not (labels == labels.round()).all():
        raise ValueError("class_labels must be whole numbers (ints or class names), got a float tensor with "
                         f"fractional values {labels[labels != labels.round()][:3].tolist()}")
    return labels.reshape(-1).long()


def _class_index(value: Any, num_classes: int, names: Sequence[str] | None) -> int:
    """One label: an int, a whole float, a class name, or a string of digits; names win over digits."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"class labels must be ints or class names, got {value!r} (a bool)")
    if isinstance(value, str):
        if names and value in names:
            return list(names).index(value)
        if value.lstrip("-").isdigit():
            return int(value)
        known = list(names) if names else f"0..{num_classes - 1}"
        raise ValueError(f"unknown class name {value!r}; this model's classes are {known}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, numbers.Real):
        raise ValueError(f"class label {value!r} is not a whole number: pass ints or class names")
    raise TypeError(f"class labels must be ints or class names, got {type(value).__name__} {value!r}")
