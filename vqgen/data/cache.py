"""Datasets built once and memory-mapped afterwards: `~/.cache/vqgen/datasets/<kind>-<key>/`.

The key hashes whatever the built dataset depends on (file names, sizes and modification times), so
an edited folder is rebuilt and an unchanged one is opened in a fraction of a second. The folder is
written under a scratch name and renamed, so a half-written cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from ..atomic_io import atomic_directory


def data_cache_dir() -> Path:
    return Path(os.environ.get("VQGEN_DATA_CACHE", Path.home() / ".cache" / "vqgen" / "datasets"))


def cached_dataset(kind: str, key: Any, build: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """`build()` saved under a folder named by `kind` and a hash of `key`, then opened memory-mapped."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = data_cache_dir() / f"{kind}-{digest}"
    if not (folder / "dataset_info.json").is_file():
        dataset = build()
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(folder) as tmp:
            dataset.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(folder))
