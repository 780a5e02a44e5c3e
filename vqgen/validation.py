"""Input checks that name the problem and the fix, run before any work is done."""

from __future__ import annotations

import math
from typing import Protocol

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
    """A `b` long tensor of labels in [0, num_classes)."""
    if labels is None:
        raise ValueError("this model is class-conditional: pass labels (a [b] tensor of class indices)")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(f"labels must have shape [{batch_size}], got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for this {num_classes}-class model, "
            f"got values in [{labels.min().item()}, {labels.max().item()}]"
        )
    return labels.long()
