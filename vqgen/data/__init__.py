"""Datasets of images for every stage: a spec -> a split whose images are decoded only when a batch needs them.

    train = load_image_dataset("../shared/data/cifar10", "train", augmentation=DataAugmentation(horizontal_flip=True))
    for images, labels in image_batches("embedded", "test", batch_size=256): ...

A source (the registry below) turns a spec into a memory-mapped `datasets.Dataset` of undecoded images
(`image`) and labels (`label`, a ClassLabel with the class names); `ImageDataset` decodes, crops,
resizes and converts each item in the DataLoader (in its workers when there are any).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import torch

from .embedded import EmbeddedDigits
from .hub import HubDataset
from .idx import IDXFolder
from .image_files import GREY_MODES, DecodeError
from .imagefolder import ImageFolder
from .images import ImageDataset, StreamingImageDataset, decode
from .shards import ShardFolder
from .source import LOCAL_FORMS, SPLITS, DatasetSpecError, Source
from .transforms import DataAugmentation

logger = logging.getLogger(__name__)
DEFAULT_DATASET = "embedded"
# What a dataset the user named can go wrong with; command lines report these in one line (vqgen.cli.exit_on).
DATA_ERRORS = (DatasetSpecError, DecodeError, FileNotFoundError, ConnectionError)

# Asked in order; the first source that claims a spec reads it. A new source is one module and one line here.
SOURCES: list[type[Source]] = [
    EmbeddedDigits,
    IDXFolder,
    ShardFolder,
    ImageFolder,
    HubDataset,
]


def images_to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """`b c h w` uint8 -> float32 in [0, 1]."""
    return images_uint8.float().div_(255.0)


def class_names(dataset: ImageDataset | StreamingImageDataset | datasets.Dataset) -> list[str] | None:
    """The class names of a dataset's labels, or None for an unlabelled dataset."""
    if isinstance(dataset, (ImageDataset, StreamingImageDataset)):
        return dataset.class_names
    feature = dataset.features.get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _source(spec: str) -> tuple[type[Source], Path]:
    path = Path(os.path.expanduser(str(spec)))
    source = next((s for s in SOURCES if s.claims(str(spec), path)), None)
    if source is None:
        raise DatasetSpecError(f"{path} is a file; pass the folder that holds the dataset ({LOCAL_FORMS}).")
    return source, path


def _check_arguments(split: str, image_size: int | None, channels: int | None, max_samples: int | None) -> None:
    if split not in SPLITS:
        raise DatasetSpecError(f"split must be one of {SPLITS}, got {split!r}")
    if max_samples is not None and max_samples <= 0:
        raise DatasetSpecError(f"max_samples must be positive, got {max_samples}")
    if channels not in (None, 1, 3):
        raise DatasetSpecError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size <= 0:
        raise DatasetSpecError(f"image_size must be positive, got {image_size}")


def load_table(spec: str = DEFAULT_DATASET, split: str = "train", *, skip_bad_images: bool = False) -> datasets.Dataset:
    """The undecoded split: `image` (`datasets.Image(decode=False)` cells) and, where labelled, `label`.

    Files the source found unusable (empty, not an image, cut short) are an error that lists them, or,
    with `skip_bad_images`, left out with a warning that counts and names them.
    """
    try:
        source, path = _source(spec)
        table = source.load(str(spec), path, split)
    except OSError as e:  # the tree itself: a folder or file that cannot be read
        if isinstance(e, DATA_ERRORS):
            raise
        raise DatasetSpecError(f"cannot read {e.filename or spec} ({e.strerror or e}); make it readable, or move it "
                               "out of the dataset.") from None
    if len(table) == 0:
        raise DatasetSpecError(f"{spec!r} has no images in its {split} split.")
    if "problem" in table.column_names:
        problems = np.asarray(table.select_columns(["problem"]).with_format("numpy")["problem"], dtype=object)
        bad = np.flatnonzero(problems != None)  # noqa: E711 - an object array of str / None
        if len(bad):
            paths = table.select(bad[:10])["image"]
            listing = "; ".join(f"{r['path']}: {problems[i]}" for r, i in zip(paths, bad[:10]))
            if not skip_bad_images:
                raise DatasetSpecError(f"{len(bad)} of {len(table)} files in the {split} split of {spec!r} are not "
                                       f"usable images ({listing}{'; ...' if len(bad) > 10 else ''}). Remove or "
                                       "replace them, or pass --skip_bad_images to train without them.")
            logger.warning("skipping %d unusable file(s) of the %s split of %r: %s%s", len(bad), split, spec, listing,
                           "; ..." if len(bad) > 10 else "")
            table = table.select(np.flatnonzero(problems == None))  # noqa: E711
    return table


def _geometry(table: datasets.Dataset, spec: str, image_size: int | None, channels: int | None) -> tuple[int, int]:
    """The target side and channels: as asked, else the split's own (which must then be one square size)."""
    if {"width", "height", "mode"} <= set(table.column_names):  # an image folder's index has them: nothing decoded
        columns = table.select_columns(["width", "height", "mode"]).with_format("numpy")[:]
        sizes = set(zip(columns["width"].tolist(), columns["height"].tolist()))
        modes = set(columns["mode"].tolist())
    else:  # encoded sources hold one size; the first image tells it (a later misfit is named when decoded)
        first = decode(table[0]["image"])
        sizes, modes = {first.size}, {first.mode}
    colour = modes - GREY_MODES
    if channels is None:
        channels = 3 if colour else 1
        if colour and modes & GREY_MODES:
            logger.warning("%r mixes grey and colour images: the grey ones are converted to RGB (pass --channels_in 1 "
                           "for grey throughout).", spec)
    elif channels == 1 and colour:
        logger.warning("%r holds colour images (%s) and --channels_in 1 turns them grey: L = 0.299 R + 0.587 G + "
                       "0.114 B (ITU-R 601).", spec, ", ".join(sorted(colour)))
    if image_size is None:
        if len(sizes) > 1 or any(w != h for w, h in sizes):
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise DatasetSpecError(f"{spec!r} holds images of {len(sizes)} size(s) ({shown}{', ...' if len(sizes) > 4 else ''}"
                                   ") that are not one square size: pass --image_size N (image_size=N) to resize the "
                                   "shorter side to N and crop the centre square.")
        image_size = next(iter(sizes))[0]
    return image_size, channels


# What an image folder's index tells before decoding, and what decoding then does to such an image.
CONVERSIONS = [
    ("alpha", lambda c: c["alpha"], "have an alpha channel or a transparent colour: composited on white"),
    ("bits", lambda c: c["bits"] > 8, "have 16-bit, 32-bit or float samples: scaled by their type's full range "
                                      "to 8 bits (the nearest of 256 levels)"),
    ("frames", lambda c: c["frames"] > 1, "have several frames (animated GIF / WebP / PNG, multi-page TIFF): the "
                                          "first frame is used"),
    ("mode", lambda c: np.isin(c["mode"], ["CMYK", "LAB", "YCbCr"]), "are CMYK, LAB or YCbCr: converted to RGB "
                                                                      "by PIL's formulas (docs/data.md)"),
]


def _report_conversions(table: datasets.Dataset, spec: str) -> None:
    """One warning per kind of image that is not 8-bit L / RGB / palette as stored: how many, which, and what
    becomes of them (an image folder's index knows without decoding; other sources say it in docs/data.md)."""
    names = [name for name, _, _ in CONVERSIONS if name in table.column_names]
    if not names:
        return
    columns = table.select_columns(names).with_format("numpy")[:]
    for name, select, what in CONVERSIONS:
        if name in columns:
            hits = np.flatnonzero(select(columns))
            if len(hits):
                paths = [cell["path"] for cell in table.select(hits[:3])["image"]]
                logger.warning("%d image(s) of %r %s (e.g. %s).", len(hits), spec, what, ", ".join(paths))


def load_image_dataset(
    spec: str = DEFAULT_DATASET,
    split: str = "train",
    *,
    image_size: int | None = None,
    channels: int | None = None,
    max_samples: int | None = None,
    augmentation: DataAugmentation | None = None,
    skip_bad_images: bool = False,
    seed: int = 0,
) -> ImageDataset:
    """One split of `spec` as a torch dataset whose items are decoded on access: `{"image": uint8 c s s, "label"}`.

    Args:
        spec: "embedded" (the default; needs no network), a folder with MNIST-format IDX files, an
            imagefolder tree, a folder of Parquet / WebDataset shards, or a Hub dataset id.
        split: "train", "validation" or "test". "test" falls back to a source's validation split;
            sources without either get a fixed, stratified 10 % of train.
        image_size: resize the shorter side to this and take the centre square (a random one in
            training, per `augmentation`). Needed when the images are not all one square size.
        channels: convert to 1 (grey) or 3 (RGB) channels; default: 3 if any image has colour.
        max_samples: keep only the first N images of the split (nothing else is read).
        augmentation: random crops / flips (training only).
        skip_bad_images: leave out unusable files (with a warning naming them) instead of refusing.
        seed: keys the augmentation's random draws (with epoch and index).
    """
    _check_arguments(split, image_size, channels, max_samples)
    table = load_table(spec, split, skip_bad_images=skip_bad_images)
    if max_samples is not None:
        table = table.select(range(min(max_samples, len(table))))
    image_size, channels = _geometry(table, str(spec), image_size, channels)
    _report_conversions(table, str(spec))
    return ImageDataset(table, image_size=image_size, channels=channels, augmentation=augmentation, seed=seed)


def load_image_stream(
    spec: str,
    split: str = "train",
    *,
    image_size: int | None,
    channels: int | None,
    max_samples: int | None = None,
    augmentation: DataAugmentation | None = None,
    seed: int = 0,
    shuffle_buffer: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> StreamingImageDataset:
    """One split streamed (a Hub dataset, or local Parquet / WebDataset shards), this process's part of it.

    With `world_size` > 1 the stream is split by node (`datasets.distributed.split_dataset_by_node`):
    whole shards per process when their number divides evenly, else every process reads all and keeps
    its share of the examples.
    """
    from datasets.distributed import split_dataset_by_node

    _check_arguments(split, image_size, channels, max_samples)
    if image_size is None or channels is None:
        raise DatasetSpecError("a stream is read one image at a time, so its image size and channels are not known "
                               "before training: pass --image_size N and --channels_in 1|3 with --streaming.")
    source, path = _source(spec)
    stream = source.stream(str(spec), path, split)
    names = class_names(stream) if stream.features is not None else None
    if max_samples is not None:
        stream = stream.take(max_samples)
    if shuffle_buffer:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    return StreamingImageDataset(stream, image_size=image_size, channels=channels, augmentation=augmentation,
                                 seed=seed, class_names=names)


def spread_indices(labels: np.ndarray | None, size: int, n: int) -> list[int]:
    """`n` indices of a split of `size` that mix its classes: the first of each class, then the second, ...
    (unlabelled: evenly spaced). A grid of a class-sorted folder's first images would show one class."""
    n = min(n, size)
    if labels is None:
        return np.linspace(0, size - 1, n).round().astype(int).tolist()
    ranks = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranks[members] = np.arange(len(members))
    return np.lexsort((labels, ranks))[:n].tolist()


def image_batches(
    spec: str | ImageDataset,
    split: str = "test",
    *,
    batch_size: int = 256,
    image_size: int | None = None,
    channels: int | None = None,
    max_samples: int | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """A split in order, batch by batch: float images `b c h w` in [0, 1] and labels `b` (None when
    unlabelled). Only the batches in flight are decoded; the split is never held whole in memory."""
    dataset = spec if isinstance(spec, ImageDataset) else load_image_dataset(
        spec, split, image_size=image_size, channels=channels, max_samples=max_samples)
    # its own generator: iterating must not draw from the global RNG (see stage2_prior.codes)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         generator=torch.Generator(), collate_fn=dataset.collate)
    for batch in loader:
        yield images_to_tensor(batch["image"]), batch.get("label")


def image_tensors(spec: str, split: str, max_samples: int | None = None, **options) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A whole split in memory: float images `n c h w` in [0, 1], and labels `n` (None when unlabelled).
    For small sets (a few thousand images); everything else should go through `image_batches`."""
    parts = list(image_batches(spec, split, max_samples=max_samples, **options))
    labels = None if parts[0][1] is None else torch.cat([y for _, y in parts])
    return torch.cat([x for x, _ in parts]), labels


__all__ = ["DATA_ERRORS", "DEFAULT_DATASET", "DataAugmentation", "DatasetSpecError", "DecodeError", "ImageDataset", "SOURCES",
           "StreamingImageDataset", "class_names", "image_batches", "image_tensors", "images_to_tensor",
           "load_image_dataset", "load_image_stream", "load_table", "spread_indices"]
