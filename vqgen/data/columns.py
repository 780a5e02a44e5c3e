"""Any image dataset's columns -> the two every source hands on: `image` (undecoded) and `label`."""

from __future__ import annotations

import logging

import datasets

from .source import DatasetSpecError

logger = logging.getLogger(__name__)
IMAGE_KEYS = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_KEYS = ("label", "labels", "cls", "class", "fine_label")


def image_and_label_columns(dataset: datasets.Dataset | datasets.IterableDataset, what: str,
                            class_names: list[str] | None = None) -> datasets.Dataset | datasets.IterableDataset:
    """Keep the image column (as `image`, undecoded) and the class column (as `label` ClassLabel) only.

    A label column that is not a `ClassLabel` needs `class_names` (e.g. a WebDataset's classes.txt); without
    them the dataset is read unlabelled, and a warning says so.
    """
    features = dataset.features or {}
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((k for k in IMAGE_KEYS if k in features), None)
    if image is None:
        raise DatasetSpecError(f"{what} has no image column (columns: {list(features)}); vqgen reads an Image "
                               f"feature or a column named one of {IMAGE_KEYS}.")
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label is None and class_names is not None:
        label = next((k for k in LABEL_KEYS if k in features), None)
    elif label is None and any(k in features for k in LABEL_KEYS):
        logger.warning("%s has a label column that names no classes (not a ClassLabel, no classes.txt): read as "
                       "unlabelled.", what)
    keep = [image] + ([label] if label else [])
    dataset = dataset.remove_columns([k for k in features if k not in keep])
    if image != "image":
        dataset = dataset.rename_column(image, "image")
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    if label:
        if label != "label":
            dataset = dataset.rename_column(label, "label")
        if not isinstance(features[label], datasets.ClassLabel):
            dataset = dataset.cast_column("label", datasets.ClassLabel(names=class_names))
    return dataset
