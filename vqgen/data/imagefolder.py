"""Image-folder trees: class subfolders of images, optionally under train/ test/ validation/ (or val/).

The tree is listed in one walk and each file's header checked once; the index (paths, labels, sizes,
modes, problems) is cached as memory-mapped Arrow keyed by the listing's names, sizes and times, so a
second run on an unchanged tree opens it in a fraction of a second. Pixels are decoded per item.

`datasets`' own `imagefolder` builder was measured first: on the 60,000-file CIFAR-10 tree it spends
46 s per load even when cached, resolving its 46 file patterns with 2.7 M `stat` calls (fsspec
walks the tree once per pattern); at ImageNet's 1.3 M files that is most of an hour per run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
from tqdm.auto import tqdm

from .cache import cached_dataset
from .image_files import IMAGE_SUFFIXES, inspect_image, iter_image_files, list_images
from .source import LOCAL_FORMS, SPLIT_NAMES, DatasetSpecError, Source, carve_split, pick_split

logger = logging.getLogger(__name__)
ALL_SPLIT_NAMES = {n for names in SPLIT_NAMES.values() for n in names}
INDEX_VERSION = 2  # the index's columns; a cache of another version is rebuilt


class ImageFolder(Source):
    name = "imagefolder"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return path.is_dir()

    @staticmethod
    def load(spec: str, path: Path, split: str) -> datasets.Dataset:
        folders = {d.name: d for d in path.iterdir() if d.is_dir() and d.name.lower() in ALL_SPLIT_NAMES}
        if not folders:
            return carve_split(index_folder(path, class_names(path)), split)
        train = pick_split(list(folders), "train")
        own = pick_split(list(folders), split)
        if own is None and train is None:
            raise DatasetSpecError(f"{path} has {sorted(folders)} folders but none for {split!r} and no train/ to "
                                   "carve it from.")
        # the classes of every split folder, so that a label means the same class in each
        names = class_names(*(folders[n] for n in sorted(folders)))
        if own is None or (split == "train") != (own == train):  # no folder of its own: a fixed part of train
            return carve_split(index_folder(folders[train], names), split)
        return index_folder(folders[own], names)


def class_names(*roots: Path) -> list[str] | None:
    """Subfolders holding images are classes (across `roots`, the split folders); a root with images directly
    in it is unlabelled."""
    names = sorted({d.name for root in roots for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")})
    loose = [p.name for root in roots for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.name.startswith(".")]
    if not names:
        return None
    if loose:
        raise DatasetSpecError(f"{roots[0].parent if len(roots) > 1 else roots[0]} mixes class subfolders {names[:3]} "
                               f"with loose images {loose[:3]}; move the images into a class folder (or all of them "
                               "into the root for an unlabelled dataset).")
    if len(names) == 1:
        logger.warning("%s has one class folder (%r): read as an unlabelled dataset, since one label says nothing "
                       "about an image.", roots[0], names[0])
        return None
    return names


def index_folder(root: Path, names: list[str] | None) -> datasets.Dataset:
    """The cached index of the images under `root`: `image` (path), `label`, `width`, `height`, `mode`, `problem`.

    Checking the cache costs one walk of the tree (a stat per file, nothing kept): a process opening an
    unchanged index of a million images holds no list of them.
    """
    listing = list_images(root)
    if listing.ignored:
        suffixes = sorted({Path(p).suffix.lower() or "(none)" for p in listing.ignored})
        logger.warning("%s: ignoring %d file(s) without an image suffix (%s; e.g. %s). vqgen reads %s.", root,
                       len(listing.ignored), ", ".join(suffixes[:8]), ", ".join(listing.ignored[:3]),
                       " ".join(sorted(IMAGE_SUFFIXES)))
    if not listing.count:
        raise DatasetSpecError(f"{root} holds no images ({' '.join(sorted(IMAGE_SUFFIXES))}); expected {LOCAL_FORMS}.")
    index = cached_dataset("imagefolder", [str(root.resolve()), listing.digest, names, INDEX_VERSION],
                           lambda: _build(root, list(iter_image_files(root)), names))
    _warn_empty_classes(index, names, root)
    return index


def _warn_empty_classes(index: datasets.Dataset, names: list[str] | None, root: Path) -> None:
    """A class without images here (an empty class folder, or one that only another split has) stays a class,
    so that labels mean the same in every split; say so."""
    if names is None:
        return
    counts = np.bincount(np.asarray(index.data.column("label")), minlength=len(names))
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
        logger.warning("%s: %d class(es) have no images here (%s): they stay classes, with no examples in this split.", root,
                       len(empty), ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""))


def _build(root: Path, files: list, names: list[str] | None) -> datasets.Dataset:
    columns: dict[str, list] = {"image": [], "width": [], "height": [], "mode": [], "problem": [], "alpha": [],
                                "bits": [], "frames": []}
    index = {n: i for i, n in enumerate(names or [])}
    labels, strays = [], []
    for f in tqdm(files, desc=f"index {root.name}", disable=len(files) < 2000, unit="img"):
        header = inspect_image(f.path, f.size)
        columns["image"].append({"path": f.path, "bytes": None})
        columns["width"].append(header.width)
        columns["height"].append(header.height)
        columns["mode"].append(header.mode)
        columns["problem"].append(header.problem)
        columns["alpha"].append(header.alpha)
        columns["bits"].append(header.bits)
        columns["frames"].append(header.frames)
        if names is not None:
            folder = Path(f.path).relative_to(root).parts[0]
            if folder not in index:
                strays.append(f.path)
            labels.append(index.get(folder, -1))
    if strays:
        raise DatasetSpecError(f"{root} has images outside its class folders ({len(strays)}, e.g. {strays[:3]}); "
                               f"the classes are {names}.")
    # The image cell has the layout of `datasets.Image(decode=False)` but not the feature: `save_to_disk` would
    # embed every file's bytes in the cache (a copy of the whole collection); the index keeps paths only.
    cell = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = {"image": cell, "width": datasets.Value("int32"),
                "height": datasets.Value("int32"), "mode": datasets.Value("string"), "problem": datasets.Value("string"),
                "alpha": datasets.Value("bool"), "bits": datasets.Value("int8"), "frames": datasets.Value("int8")}
    if names is not None:
        columns["label"] = labels
        features["label"] = datasets.ClassLabel(names=names)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))
