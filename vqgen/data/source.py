"""The contract of a data source, and what every source shares.

A source claims the dataset specs it understands (`claims`) and turns one split of them into a
`datasets.Dataset` with an `image` column of `{"bytes", "path"}` cells (the layout of
`datasets.Image(decode=False)`: encoded bytes or a file path; nothing is decoded until a batch needs it) and, where the source has labels, a `label`
`ClassLabel` column carrying the class names. Memory-mapped Arrow: a process holds the index of the
images, never their pixels. A source that can stream also implements `stream`. The registry in
`__init__.py` asks the sources in order; adding one is a module with a `Source` subclass plus one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import datasets
import numpy as np

DIGITS = [str(i) for i in range(10)]
LOCAL_FORMS = (
    "'embedded' (5,000 MNIST digits shipped with vqgen), a folder with the four MNIST IDX files "
    "(e.g. ../shared/data/mnist), an imagefolder tree (class subfolders of images, optionally under "
    "train/ test/ validation/), or a folder of Parquet / WebDataset .tar shards"
)
SPLITS = ("train", "validation", "test")
# Folder and Hub split names that mean each split; "test" falls back to "validation" where a source has
# no test split (ImageNet ships train/ and val/), and both to a fixed stratified part of train.
SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval"),
}


class DatasetSpecError(ValueError):
    """A dataset spec that cannot be turned into images; the message says why and what works."""


class Source:
    name: ClassVar[str]

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        """True when this source reads `spec` (`path` is the spec as an expanded path)."""
        raise NotImplementedError

    @staticmethod
    def load(spec: str, path: Path, split: str) -> datasets.Dataset:
        """One split as a `datasets.Dataset` (`image`: `datasets.Image()`, optional `label`: ClassLabel)."""
        raise NotImplementedError

    @classmethod
    def stream(cls, spec: str, path: Path, split: str) -> datasets.IterableDataset:
        """One split as a `datasets.IterableDataset` with the same columns (for `--streaming`)."""
        raise DatasetSpecError(f"{spec!r} is a {cls.name} dataset, which cannot be streamed; drop --streaming "
                               "(it is read lazily from disk anyway), or convert it to Parquet shards.")


def pick_split(available: list[str] | tuple[str, ...], split: str) -> str | None:
    """The name among `available` that serves `split` (see SPLIT_NAMES), or None: carve it from train."""
    lowered = {name.lower(): name for name in available}
    wanted = [*SPLIT_NAMES[split], *(SPLIT_NAMES["validation"] if split == "test" else ())]
    return next((lowered[n] for n in wanted if n in lowered), None)


def stratified_split(labels: np.ndarray, split: str, test_fraction: float = 0.1) -> np.ndarray:
    """Indices of `split`: a fixed ~10 % of every class is test, the rest train, never overlapping."""
    rng = np.random.default_rng(0)  # fixed: train and test must stay disjoint across runs and seeds
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test[rng.permutation(members)[: max(1, round(len(members) * test_fraction))]] = True
    # shuffled once (fixed), so the first N of a split cover every class even if the source is sorted
    return rng.permutation(np.flatnonzero(~test if split == "train" else test))


def carve_split(dataset: datasets.Dataset, split: str) -> datasets.Dataset:
    """`split` of a source that has only one: a fixed stratified 10 % is test (and validation), the rest train.

    Files an index marks unusable (a `problem` column) go into every split, so that whichever split is
    loaded first refuses them (or, with `skip_bad_images`, leaves them out and says so).
    """
    labels = np.asarray(dataset.data.column("label")) if "label" in dataset.column_names else np.zeros(len(dataset), np.int64)
    indices = stratified_split(labels, split)
    if "problem" in dataset.column_names:
        bad = np.flatnonzero(np.asarray(dataset.data.column("problem").is_valid()))
        indices = np.concatenate([indices[~np.isin(indices, bad)], bad])
    return dataset.select(indices)
