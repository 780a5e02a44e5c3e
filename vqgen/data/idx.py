"""MNIST-format folders: the four IDX files (gzipped or not) of MNIST or Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import datasets
import numpy as np

from .cache import cached_dataset
from .encoded import png_dataset
from .source import DIGITS, DatasetSpecError, Source

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IDXFolder(Source):
    name = "idx"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return path.is_dir() and bool(_find_idx(path, IDX_FILES["train"][0]) or _find_idx(path, IDX_FILES["test"][0]))

    @staticmethod
    def load(spec: str, path: Path, split: str) -> datasets.Dataset:
        """Parsed and PNG-encoded once, then memory-mapped from the cache (keyed by the files' sizes and times)."""
        split = "train" if split == "train" else "test"  # MNIST's test set serves validation too
        files = [_find_idx(path, stem) for stem in IDX_FILES[split]]
        key = [str(path.resolve()), split, [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f]]
        names = FASHION if "fashion" in path.resolve().name.lower() else DIGITS
        return cached_dataset("idx", key, lambda: png_dataset(*_read_idx_split(path, split), names))


def _find_idx(folder: Path, stem: str) -> Path | None:
    # Both the usual names and the original distribution's (train-images.idx3-ubyte).
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not), checking magic number, shape and length."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetSpecError(f"{path} cannot be read ({e}); the download is corrupt or truncated: fetch it again.") from e
    ndim = 3 if magic == 2051 else 1
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DatasetSpecError(f"{path} is truncated ({len(raw)} bytes, shorter than its header): fetch it again.")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "image" if magic == 2051 else "label"
        raise DatasetSpecError(
            f"{path} has magic number {found}, not {magic}: it is not an IDX {kind} file "
            "(swapped image/label files, or another format?)."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetSpecError(
            f"{path} holds {len(raw)} bytes but its header promises {expected} ({shape}): "
            "the file is truncated or corrupt; fetch it again."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _read_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = IDX_FILES[split]
    image_file, label_file = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
    if image_file is None or label_file is None:
        missing = [s for s, f in ((image_stem, image_file), (label_stem, label_file)) if f is None]
        raise DatasetSpecError(
            f"{folder} lacks {missing} (.gz or raw) for the {split} split; an MNIST-format folder holds "
            f"all four files {[s for pair in IDX_FILES.values() for s in pair]}."
        )
    images, labels = _read_idx(image_file, 2051), _read_idx(label_file, 2049)
    if len(images) != len(labels):
        raise DatasetSpecError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels.")
    return images[:, None], labels.astype(np.int64)
