"""Pixel arrays -> the `image` column every source shares: losslessly PNG-encoded, decoded per item."""

from __future__ import annotations

import io

import datasets
import numpy as np
from PIL import Image


def png_dataset(images: np.ndarray, labels: np.ndarray | None, names: list[str] | None) -> datasets.Dataset:
    """`n c h w` uint8 (c = 1 or 3) and labels -> a dataset with `image` (PNG bytes) and `label` columns."""

    def encode(image: np.ndarray) -> dict:
        buffer = io.BytesIO()
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(buffer, "PNG", compress_level=1)
        return {"bytes": buffer.getvalue(), "path": None}

    columns: dict = {"image": [encode(image) for image in images]}
    features: dict = {"image": datasets.Image(decode=False)}
    if labels is not None:
        columns["label"] = labels.astype(np.int64)
        features["label"] = datasets.ClassLabel(names=names)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))
