"""One function from a dataset spec to a `datasets.Dataset` of images (and labels).

Every source goes through the same conversion: uint8 `[c, h, w]` arrays in an `image` column and,
where the source has labels, a `label` `ClassLabel` column that carries the class names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from .embedded import EmbeddedDigits
from .hub import HubDataset
from .idx import IDXFolder
from .imagefolder import ImageFolder
from .source import LOCAL_FORMS, DatasetSpecError, Source

DEFAULT_DATASET = "embedded"
SPLITS = ("train", "test")


# Asked in order; the first source that claims a spec reads it. A new source is one module and one line here.
SOURCES: list[type[Source]] = [
    EmbeddedDigits,
    IDXFolder,
    ImageFolder,
    HubDataset,
]


def images_to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """`b c h w` uint8 -> float32 in [0, 1]."""
    return images_uint8.float().div_(255.0)


def class_names(dataset: datasets.Dataset) -> list[str] | None:
    """The class names of the `label` column, or None for an unlabelled dataset."""
    feature = dataset.features.get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def load_image_dataset(
    spec: str = DEFAULT_DATASET,
    split: str = "train",
    *,
    image_size: int | None = None,
    channels: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Images of `spec` as a `datasets.Dataset` with columns `image` (uint8 `[c, h, w]`) and `label`.

    Args:
        spec: "embedded" (the default; needs no network), a folder with MNIST-format IDX files, an
            imagefolder tree, or a Hub dataset id such as "ylecun/mnist".
        split: "train" or "test". Sources without a test split get a fixed, stratified 10 % one.
        image_size: resize to `image_size x image_size` (bilinear, antialiased).
        channels: convert to 1 (grey) or 3 (RGB) channels.
        max_samples: keep only the first N images of the split.
        seed: reserved for sources that shuffle; the embedded split is fixed regardless.
    """
    if split not in SPLITS:
        raise DatasetSpecError(f"split must be one of {SPLITS}, got {split!r}")
    if max_samples is not None and max_samples <= 0:
        raise DatasetSpecError(f"max_samples must be positive, got {max_samples}")
    if channels not in (None, 1, 3):
        raise DatasetSpecError(f"channels must be 1 or 3, got {channels}")

    path = Path(os.path.expanduser(str(spec)))
    source = next((s for s in SOURCES if s.claims(str(spec), path)), None)
    if source is None:
        raise DatasetSpecError(f"{path} is a file; pass the folder that holds the dataset ({LOCAL_FORMS}).")
    raw = source.read(str(spec), path, split)
    images, labels, names = raw.images, raw.labels, raw.names

    if max_samples is not None:
        images, labels = images[:max_samples], None if labels is None else labels[:max_samples]
    images = _convert(images, image_size, channels)
    if len(images) == 0:
        raise DatasetSpecError(f"{spec!r} has no images in its {split} split.")
    c, h, w = images.shape[1:]
    features = {"image": datasets.Array3D(shape=(c, h, w), dtype="uint8")}
    columns = {"image": images}
    if labels is not None:
        features["label"] = datasets.ClassLabel(names=names)
        columns["label"] = labels.astype(np.int64)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# -- conversion shared by every source ---------------------------------------------------------
def _convert(images: np.ndarray, image_size: int | None, channels: int | None) -> np.ndarray:
    """`n c h w` uint8 -> `n c' s s` uint8 with the requested channels and size."""
    n, c, h, w = images.shape
    if channels is not None and channels != c:
        if channels == 3:
            images = np.repeat(images, 3, axis=1)
        else:  # ITU-R 601 luma, as PIL's "L" conversion
            weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
            images = np.clip((images.astype(np.float32) * weights).sum(1, keepdims=True).round(), 0, 255).astype(np.uint8)
    if image_size is not None and (h, w) != (image_size, image_size):
        mode = "L" if images.shape[1] == 1 else "RGB"
        resized = [
            np.asarray(Image.fromarray(_hwc(img), mode).resize((image_size, image_size), Image.Resampling.BILINEAR))
            for img in images
        ]
        images = np.stack([r[None] if r.ndim == 2 else r.transpose(2, 0, 1) for r in resized])
    return np.ascontiguousarray(images, dtype=np.uint8)


def _hwc(image: np.ndarray) -> np.ndarray:
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def image_batches(
    spec: str,
    split: str,
    *,
    batch_size: int = 256,
    image_size: int | None = None,
    channels: int | None = None,
    max_samples: int | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """A split in order, batch by batch: float images `b c h w` in [0, 1] and labels `b` (None when
    unlabelled). Only one batch is decoded at a time; the split is never held whole in memory."""
    dataset = load_image_dataset(spec, split, image_size=image_size, channels=channels, max_samples=max_samples)
    dataset = dataset.with_format("torch")
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        yield images_to_tensor(batch["image"].to(torch.uint8)), batch.get("label")


def image_tensors(spec: str, split: str, max_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A whole split in memory: float images `n c h w` in [0, 1], and labels `n` (None when unlabelled)."""
    columns = load_image_dataset(spec, split, max_samples=max_samples).with_format("torch")[:]
    # the torch format returns the uint8 image column as int64
    return images_to_tensor(columns["image"]), columns["label"] if "label" in columns else None
