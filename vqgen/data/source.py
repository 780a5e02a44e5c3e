"""The contract of a data source, and what every source shares.

A source claims the dataset specs it understands (`claims`) and reads one split of them (`read`) as
uint8 images `n c h w`, int64 labels `n` (or None) and class names. The registry in `__init__.py`
asks the sources in order; adding one is a module with a `Source` subclass plus one line there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

DIGITS = [str(i) for i in range(10)]
LOCAL_FORMS = (
    "'embedded' (5,000 MNIST digits shipped with vqgen), a folder with the four MNIST IDX files "
    "(e.g. ../shared/data/mnist), or an imagefolder tree (class subfolders of images)"
)


class DatasetSpecError(ValueError):
    """A dataset spec that cannot be turned into images; the message says why and what works."""


@dataclass
class RawSplit:
    images: np.ndarray  # n c h w uint8
    labels: np.ndarray | None  # n int64
    names: list[str] | None


class Source:
    name: ClassVar[str]

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        """True when this source reads `spec` (`path` is the spec as an expanded path)."""
        raise NotImplementedError

    @staticmethod
    def read(spec: str, path: Path, split: str) -> RawSplit:
        raise NotImplementedError


def stratified_split(labels: np.ndarray, split: str, test_fraction: float = 0.1) -> np.ndarray:
    """Indices of `split`: a fixed ~10 % of every class is test, the rest train, never overlapping."""
    rng = np.random.default_rng(0)  # fixed: train and test must stay disjoint across runs and seeds
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test[rng.permutation(members)[: max(1, round(len(members) * test_fraction))]] = True
    # shuffled once (fixed), so the first N of a split cover every class even if the source is sorted
    return rng.permutation(np.flatnonzero(test if split == "test" else ~test))
