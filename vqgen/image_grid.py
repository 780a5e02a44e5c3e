"""Image grids as PNG: the pictures a person looks at to judge a model."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from .atomic_io import atomic_path


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """`b c h w` floats in [0, 1] -> one `H W c` uint8 array, `nrow` images per row."""
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    pad = torch.zeros(rows * nrow - b, c, h, w, dtype=torch.uint8)
    tiles = torch.nn.functional.pad(torch.cat([pixels, pad]), (padding, 0, padding, 0))
    grid = rearrange(tiles, "(r n) c h w -> (r h) (n w) c", n=nrow)
    return torch.nn.functional.pad(grid, (0, 0, 0, padding, 0, padding)).numpy()


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Write `images` (`b c h w` in [0, 1]) as one PNG grid, atomically."""
    grid = make_grid(images, nrow)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> Path:
    """Rows alternate: `nrow` originals, then their reconstructions below them."""
    n = (originals.shape[0] // nrow) * nrow or originals.shape[0]
    nrow = min(nrow, n)
    pairs = rearrange(
        torch.stack([originals[:n].cpu(), reconstructions[:n].cpu()]), "two (r n) c h w -> (r two n) c h w", n=nrow
    )
    return save_image_grid(pairs, path, nrow=nrow)


def class_grid_labels(num_classes: int, per_class: int = 8) -> torch.Tensor | None:
    """Labels of a sample grid with one row per class: `num_classes * per_class` long, `0 0 .. 1 1 ..`.

    Pass `nrow=per_class` to `save_image_grid`. None when the model has no classes (`num_classes` 0).
    """
    if num_classes <= 0:
        return None
    return torch.arange(num_classes).repeat_interleave(per_class)
