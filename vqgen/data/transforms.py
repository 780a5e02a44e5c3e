"""From a decoded image to the model's pixels: crop, resize, flip, channel conversion.

Evaluation and encoding take the centre square (the shorter side) resized to the target side, as
ADM and LlamaGen do. Training may take a random square instead and flip it; the random choices come
from a generator keyed by (seed, epoch, index), so an item's augmentation is the same whichever
DataLoader worker decodes it and however a run was interrupted and resumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from ..fields import option
from .image_files import HIGH_DEPTH

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass
class DataAugmentation:
    """Training-time augmentation; evaluation and encoding always take the centre crop, unflipped."""

    train_crop: Literal["center", "random", "random_resized"] = option(
        "center", "training crop: the centre square, a random square of the shorter side, or a random square of "
                  "--min_crop_scale..1 of the shorter side's area, each resized to --image_size")
    min_crop_scale: float = option(0.8, "smallest share of the shorter side's square a random_resized crop takes")
    horizontal_flip: bool = option(False, "flip training images left-right with probability 1/2 (off for digits)")

    def __post_init__(self) -> None:
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}")

    @property
    def is_random(self) -> bool:
        return self.train_crop != "center" or self.horizontal_flip


def center_box(width: int, height: int) -> Box:
    """The largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def random_box(width: int, height: int, rng: np.random.Generator, min_scale: float = 1.0) -> Box:
    """A square of `sqrt(U(min_scale, 1))` times the shorter side, at a uniformly random position."""
    side = min(width, height)
    if min_scale < 1:
        side = max(1, round(side * math.sqrt(rng.uniform(min_scale, 1.0))))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    return left, top, left + side, top + side


def eight_bit(samples: np.ndarray, top: float) -> np.ndarray:
    """16-bit, 32-bit or float samples -> the nearest of 256 levels, `top` -> 255 (never clipped: a value
    outside [0, top] is a ValueError, which the index finds before training)."""
    if samples.dtype.kind == "f":
        if not (np.isfinite(samples).all() and samples.min() >= 0 and samples.max() <= top):
            raise ValueError(f"float samples outside [0, {top}]")
        return np.floor(samples * (255 / top) + 0.5).astype(np.uint8)
    if samples.min() < 0 or samples.max() > top:
        raise ValueError(f"integer samples outside [0, {top}]")
    return ((samples.astype(np.uint32) * 255 + int(top) // 2) // int(top)).astype(np.uint8)


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` as 8-bit "L" or "RGB": deeper samples scaled by their type's full range, alpha (or a transparent
    palette entry / colour) composited on white, everything else by PIL's conversions (docs/data.md says which)."""
    if image.mode in HIGH_DEPTH:
        image = Image.fromarray(eight_bit(np.asarray(image), HIGH_DEPTH[image.mode]))
    elif image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), rgba)
    elif image.mode == "LAB" and mode == "L":  # PIL converts LAB to RGB only
        image = image.convert("RGB")
    return image if image.mode == mode else image.convert(mode)


def to_pixels(image: Image.Image, size: int, channels: int, box: Box, flip: bool = False) -> np.ndarray:
    """The `box` of `image`, resized (bicubic, antialiased) to `size x size`, as contiguous uint8 `size size c`
    (channels last: batches are stacked that way and viewed as `b c h w`, see `images.collate`)."""
    image = to_mode(image, "L" if channels == 1 else "RGB")
    if box != (0, 0, size, size) or image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy shares it
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def transform(image: Image.Image, size: int, channels: int, augmentation: DataAugmentation | None,
              rng: np.random.Generator | None) -> np.ndarray:
    """Evaluation (`augmentation` None): the centre crop. Training: the configured random crop and flip.
    Returns uint8 `size size c`."""
    width, height = image.size
    if augmentation is None or augmentation.train_crop == "center":
        box = center_box(width, height)
    else:
        box = random_box(width, height, rng, augmentation.min_crop_scale if augmentation.train_crop == "random_resized" else 1.0)
    flip = augmentation is not None and augmentation.horizontal_flip and bool(rng.integers(0, 2))
    return to_pixels(image, size, channels, box, flip)
