"""Image-folder trees: class subfolders of images, optionally under train/ and test/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .source import LOCAL_FORMS, DatasetSpecError, RawSplit, Source, stratified_split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageFolder(Source):
    name = "imagefolder"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return path.is_dir()

    @staticmethod
    def read(spec: str, path: Path, split: str) -> RawSplit:
        return RawSplit(*_read_imagefolder(path, split))


def _read_imagefolder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Class subfolders of images (optionally under train/ and test/); images must share one size."""
    has_splits = (folder / "train").is_dir()
    root = folder / split if has_splits else folder
    if not root.is_dir():
        raise DatasetSpecError(f"{folder} has a train/ folder but no {split}/ folder.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetSpecError(f"{root} holds no images ({sorted(IMAGE_SUFFIXES)}); expected {LOCAL_FORMS}.")
    names = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."}) or None
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if im.mode in ("1", "L", "I;16", "I", "F") else "RGB")
                arrays.append(np.asarray(im))
        except OSError as e:
            raise DatasetSpecError(f"{p} is not a readable image ({e}); remove or replace it.") from e
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetSpecError(f"{root} mixes image sizes/modes {sorted(shapes)[:4]}; pass image_size= and channels= to unify them.")
    images = np.stack([a[:, :, None] if a.ndim == 2 else a for a in arrays]).transpose(0, 3, 1, 2)
    labels = None
    if names:
        index = {n: i for i, n in enumerate(names)}
        labels = np.array([index[p.parent.relative_to(root).as_posix()] for p in files], dtype=np.int64)
    if not has_splits:
        idx = stratified_split(labels if labels is not None else np.zeros(len(files), np.int64), split)
        images, labels = images[idx], None if labels is None else labels[idx]
    return images, labels, names
