"""Torch datasets over an undecoded `datasets` table: each item is decoded and transformed when a batch needs it.

Items are `{"image": uint8 c s s, "label": int64}` (no `label` for unlabelled data); `images_to_tensor`
turns a collated batch into floats. The table stays memory-mapped, so a process (and each of its
DataLoader workers) holds the index, never the pixels of the split.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator, Sequence

import datasets
import numpy as np
import torch
from PIL import Image

from .image_files import ORIENTATION, SCRAMBLED_TIFF, DecodeError, orientation, scrambled_tiff
from .transforms import DataAugmentation, transform


def decode(record: dict, min_side: int | None = None) -> Image.Image:
    """An `Image(decode=False)` cell (`{"bytes", "path"}`) as a loaded PIL image, turned upright by its EXIF
    orientation (the first frame of an animated one); `DecodeError` names the file.

    `min_side`: a JPEG much larger than needed is decoded at a reduced scale (PIL's `draft`: 1/2, 1/4 or
    1/8 in the DCT itself, several times faster) that keeps both sides at least `min_side`.
    """
    where = record.get("path") or "an image stored in the dataset"
    try:
        image = Image.open(io.BytesIO(record["bytes"]) if record.get("bytes") else record["path"])
        if min_side is not None and image.format == "JPEG":
            image.draft(image.mode, (min_side, min_side))
        if scrambled_tiff(image):
            raise ValueError(SCRAMBLED_TIFF)
        # read before `load`, as the index reads it; PIL turns a TIFF upright itself as it loads it
        turn = None if image.format == "TIFF" else ORIENTATION.get(orientation(image))
        image.load()
        return image if turn is None else image.transpose(turn)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged file
        raise DecodeError(f"{where} could not be decoded ({type(e).__name__}: {e}); remove or replace it, or pass "
                          "--skip_bad_images (a file damaged inside, with intact header and end, is found only "
                          "here).") from e


def _item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _draft_side(size: int, augmentation: DataAugmentation | None) -> int:
    """The shorter side an image must keep so that its crop is never enlarged to `size`."""
    if augmentation is not None and augmentation.train_crop == "random_resized":
        return math.ceil(size / math.sqrt(augmentation.min_crop_scale))
    return size


def _item(record: dict, label: int | None, size: int, channels: int, augmentation: DataAugmentation | None,
          rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
    """One decoded, transformed item: the image as a `c h w` view of contiguous `h w c` pixels (channels-last
    strides; `collate` stacks the contiguous data) and the label, if any."""
    image = decode(record, _draft_side(size, augmentation))
    try:
        pixels = transform(image, size, channels, augmentation, rng)
    except ValueError as e:  # samples outside the range of their type (an index checks folders before training)
        raise DecodeError(f"{record.get('path') or 'an image stored in the dataset'}: {e}; rescale it into that range "
                          "(or save it as 8- or 16-bit PNG), or remove it.") from e
    item = {"image": torch.from_numpy(pixels).permute(2, 0, 1)}
    if label is not None:
        item["label"] = torch.tensor(label, dtype=torch.int64)
    return item


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Items -> a batch: images `b c h w` (a view of contiguous `b h w c`, i.e. channels-last memory, which
    convolutions take as is), labels `b`; stacking the `c h w` views element by element is much slower."""
    batch = {"image": torch.stack([item["image"].permute(1, 2, 0) for item in items]).permute(0, 3, 1, 2)}
    if "label" in items[0]:
        batch["label"] = torch.stack([item["label"] for item in items])
    return batch


class ImageDataset(torch.utils.data.Dataset):
    """A map-style split: `len`, `[i]`, batched fetches (`__getitems__`), `set_epoch` for augmentation.
    Loaders collate with `dataset.collate`."""

    collate = staticmethod(collate)

    def __init__(self, table: datasets.Dataset, *, image_size: int, channels: int,
                 augmentation: DataAugmentation | None = None, seed: int = 0) -> None:
        self.table = table
        self.image_size, self.channels = image_size, channels
        self.augmentation = augmentation if augmentation is not None and augmentation.is_random else None
        self.seed, self.epoch = seed, 0
        self.has_labels = "label" in table.column_names
        self._columns = ["image", "label"] if self.has_labels else ["image"]

    def __len__(self) -> int:
        return len(self.table)

    @property
    def class_names(self) -> list[str] | None:
        feature = self.table.features.get("label")
        return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(c, s, s)` of every item."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def labels(self) -> np.ndarray | None:
        """All labels (read from the Arrow column: no image is decoded)."""
        if not self.has_labels:
            return None
        return np.asarray(self.table.select_columns(["label"]).with_format("numpy")["label"], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Called by the (accelerate) DataLoader at each epoch: a fresh augmentation draw per epoch."""
        self.epoch = epoch

    def with_augmentation(self, augmentation: DataAugmentation | None) -> ImageDataset:
        return ImageDataset(self.table, image_size=self.image_size, channels=self.channels, augmentation=augmentation,
                            seed=self.seed)

    def select(self, indices: Sequence[int]) -> ImageDataset:
        return ImageDataset(self.table.select(indices), image_size=self.image_size, channels=self.channels,
                            augmentation=self.augmentation, seed=self.seed)

    def shard(self, num_shards: int, index: int) -> ImageDataset:
        """The `index`-th of `num_shards` contiguous, ordered parts (sizes differ by at most one)."""
        bounds = np.linspace(0, len(self), num_shards + 1).round().astype(int)
        return self.select(range(bounds[index], bounds[index + 1]))

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        rows = self.table.select_columns(self._columns)[list(indices)]
        labels = rows["label"] if self.has_labels else itertools.repeat(None)
        rng = (lambda i: _item_rng(self.seed, self.epoch, i)) if self.augmentation is not None else (lambda i: None)
        return [_item(record, label, self.image_size, self.channels, self.augmentation, rng(i))
                for record, label, i in zip(rows["image"], labels, indices)]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """An iterable split (a streamed Hub dataset or local shards, already split by node); DataLoader
    workers share out its shards (`datasets` does that). Augmentation is keyed by the item's position
    in this process's stream. Loaders collate with `dataset.collate`."""

    collate = staticmethod(collate)

    def __init__(self, stream: datasets.IterableDataset, *, image_size: int, channels: int,
                 augmentation: DataAugmentation | None = None, seed: int = 0,
                 class_names: list[str] | None = None) -> None:
        self.stream = stream
        self.image_size, self.channels = image_size, channels
        self.augmentation = augmentation if augmentation is not None and augmentation.is_random else None
        self.seed, self.epoch = seed, 0
        self.class_names = class_names

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)  # reshuffles the shard order and the shuffle buffer

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        for position, row in enumerate(self.stream):
            rng = _item_rng(self.seed, self.epoch, position * 1024 + worker) if self.augmentation is not None else None
            yield _item(row["image"], row.get("label"), self.image_size, self.channels, self.augmentation, rng)
