"""Images -> code sequences, once: stage 2 trains on a cached `datasets` dataset of codes.

The cache lives in `CACHE/<key>/` where the key hashes the tokenizer's weights and config, the
dataset spec, the split and the sample limit: the same pair reuses it, another tokenizer never
sees a stale cache. It is written to a scratch folder and renamed, so a half-written cache is
never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from vqgen.atomic_io import atomic_directory
from vqgen.data import images_to_tensor, load_image_dataset

DEFAULT_CACHE_DIR = Path(os.environ.get("VQGEN_CACHE", Path.home() / ".cache" / "vqgen" / "codes"))


def tokenizer_fingerprint(tokenizer: torch.nn.Module) -> str:
    """Hash of the tokenizer's weights and config: changes whenever its codes could change."""
    state = {k: v.detach().cpu().contiguous() for k, v in sorted(tokenizer.state_dict().items())}
    digest = hashlib.sha256(safetensors_bytes(state))
    digest.update(json.dumps(getattr(tokenizer.config, "__dict__", {}), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def cache_key(tokenizer: torch.nn.Module, dataset: str, split: str, max_samples: int | None) -> str:
    source = str(Path(dataset).resolve()) if Path(dataset).exists() else dataset
    payload = json.dumps([tokenizer_fingerprint(tokenizer), source, split, max_samples])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@torch.no_grad()
def encode_dataset(
    tokenizer: Any,
    dataset: str,
    split: str,
    *,
    state: PartialState | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    batch_size: int = 256,
    max_samples: int | None = None,
) -> datasets.Dataset:
    """Code sequences of `dataset`'s `split` as a dataset with `codes` (h*w ints, raster order) and `label`.

    Under several processes (`state`: the accelerate state; an `Accelerator` works too) each
    encodes its share and rank 0 writes the cache; every process returns the same dataset.
    `cache_dir=None` encodes without caching.
    """
    accelerator = state or PartialState()
    folder = Path(cache_dir) / cache_key(tokenizer, dataset, split, max_samples) if cache_dir is not None else None
    # Rank 0 decides and every rank follows: all of them must reach the collectives below, or none.
    cached = [folder is not None and (folder / "dataset_info.json").is_file()]
    if accelerator.num_processes > 1:
        broadcast_object_list(cached)
    if cached[0]:
        return datasets.load_from_disk(str(folder))

    config = tokenizer.config
    images = load_image_dataset(dataset, split, image_size=config.image_size, channels=config.image_channels,
                                max_samples=max_samples)
    has_labels = "label" in images.features
    tokenizer = tokenizer.to(accelerator.device).eval()
    with accelerator.split_between_processes(list(range(len(images)))) as indices:
        shard = images.select(indices).with_format("torch")
        codes = []
        for start in tqdm(range(0, len(shard), batch_size), desc=f"encode {split}",
                          disable=not accelerator.is_local_main_process):
            batch = images_to_tensor(shard[start : start + batch_size]["image"]).to(accelerator.device)
            codes.append(tokenizer.tokenize(batch).flatten(1).to(torch.int32).cpu())
        local = torch.cat(codes) if codes else torch.empty(0, config.latent_size**2, dtype=torch.int32)
    # split_between_processes gives contiguous, ordered shards, so gathering objects keeps the order.
    all_codes = np.concatenate(gather_object([local.numpy()])) if accelerator.num_processes > 1 else local.numpy()
    columns: dict[str, Any] = {"codes": all_codes}
    features = {"codes": datasets.Sequence(datasets.Value("int32"), length=all_codes.shape[1])}
    if has_labels:
        columns["label"] = np.asarray(images["label"], dtype=np.int64)
        features["label"] = images.features["label"]
    result = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    if folder is not None:
        if accelerator.is_main_process:
            with atomic_directory(folder) as tmp:
                result.save_to_disk(str(tmp))
        accelerator.wait_for_everyone()
        result = datasets.load_from_disk(str(folder))
    return result
