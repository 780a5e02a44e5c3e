"""Folders of Parquet or WebDataset (.tar) shards, read as a memory-mapped dataset or streamed.

A shard's split comes from a folder or file-name prefix (`train/000.parquet`, `test-00001-of-00004.tar`,
the Hub's `data/train-*.parquet`); shards naming no split are all training data. A WebDataset's
integer labels are named by a `classes.txt` beside the shards (one class per line).
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from .columns import image_and_label_columns
from .source import SPLIT_NAMES, DatasetSpecError, Source, carve_split, pick_split

SHARD_SUFFIXES = {".parquet": "parquet", ".tar": "webdataset"}


class ShardFolder(Source):
    name = "shards"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return path.is_dir() and any(p.suffix in SHARD_SUFFIXES for p in path.rglob("*") if p.is_file())

    @staticmethod
    def load(spec: str, path: Path, split: str) -> datasets.Dataset:
        builder, by_split = _shards(path)
        own = pick_split(list(by_split), split)
        name = own or pick_split(list(by_split), "train")
        if name is None:
            raise DatasetSpecError(f"{path} has shards for {sorted(by_split)} but none for {split!r} or train.")
        dataset = datasets.load_dataset(builder, data_files={name: by_split[name]}, split=name)
        dataset = image_and_label_columns(dataset, str(path), _class_names(path))
        return dataset if own else carve_split(dataset, split)

    @staticmethod
    def stream(spec: str, path: Path, split: str) -> datasets.IterableDataset:
        builder, by_split = _shards(path)
        own = pick_split(list(by_split), split)
        if own is None:
            raise DatasetSpecError(f"{path} has no {split} shards ({sorted(by_split)}); a stream cannot be split "
                                   f"reproducibly: name shards by split (e.g. {split}-00000.parquet).")
        dataset = datasets.load_dataset(builder, data_files={own: by_split[own]}, split=own, streaming=True)
        return image_and_label_columns(dataset, str(path), _class_names(path))


def _shards(path: Path) -> tuple[str, dict[str, list[str]]]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SHARD_SUFFIXES)
    kinds = {SHARD_SUFFIXES[p.suffix] for p in files}
    if len(kinds) > 1:
        raise DatasetSpecError(f"{path} mixes Parquet and WebDataset shards; keep one kind per dataset folder.")
    names = {n for group in SPLIT_NAMES.values() for n in group}
    by_split: dict[str, list[str]] = {}
    for p in files:
        words = [w.lower() for part in p.relative_to(path).parts for w in re.split(r"[-_./]", part)]
        split = next((w for w in words if w in names), "train")
        by_split.setdefault(split, []).append(str(p))
    return kinds.pop(), by_split


def _class_names(path: Path) -> list[str] | None:
    listing = path / "classes.txt"
    return [line.strip() for line in listing.read_text().splitlines() if line.strip()] if listing.is_file() else None
