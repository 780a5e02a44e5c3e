"""Images -> code sequences, once: stage 2 trains on a cached `datasets` dataset of codes.

The cache lives in `CACHE/<key>/` where the key hashes the tokenizer's weights and config, the
dataset spec, the split, the sample limit and the views: the same pair reuses it, another tokenizer
never sees a stale cache. Each process writes its part as a shard into a scratch folder that is
renamed once all are written, so a half-written cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
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


VIEWS = ("center", "flip", "ten_crop")


def cache_key(tokenizer: torch.nn.Module, dataset: str, split: str, max_samples: int | None,
              views: str = "center") -> str:
    source = str(Path(dataset).resolve()) if Path(dataset).exists() else dataset
    payload = json.dumps([tokenizer_fingerprint(tokenizer), source, split, max_samples]
                         + ([views] if views != "center" else []))
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def augmented_views(images: torch.Tensor, views: str) -> torch.Tensor:
    """`b c s s` -> `(v b) c s s`: the images themselves ("center"), with their mirror images ("flip"), or
    LlamaGen's ten crops ("ten_crop": the four corners and the centre of the images enlarged by 1/8,
    each also mirrored)."""
    if views == "center":
        return images
    if views == "flip":
        return torch.cat([images, images.flip(-1)])
    s = images.shape[-1]
    big = torch.nn.functional.interpolate(images, size=round(s * 1.125), mode="bicubic", antialias=True).clamp(0, 1)
    e = big.shape[-1] - s
    crops = [big[..., y : y + s, x : x + s] for y, x in ((0, 0), (0, e), (e, 0), (e, e), (e // 2, e // 2))]
    return torch.cat([*crops, *(c.flip(-1) for c in crops)])


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
    num_workers: int = 0,
    views: str = "center",
) -> datasets.Dataset:
    """Code sequences of `dataset`'s `split` as a dataset with `codes` (h*w ints, raster order) and `label`.

    Under several processes (`state`: the accelerate state; an `Accelerator` works too) each encodes a
    contiguous part of the split and writes it as a shard of the cache; the shards are concatenated
    (memory-mapped) in split order, so no process ever holds, sends or receives the codes of the others.
    `views` other than "center" add augmented sequences per image (see `augmented_views`), view-major
    within each batch. `cache_dir=None` encodes into a temporary folder that is not reused.
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
    accelerator = state or PartialState()
    if cache_dir is None:
        scratch = tempfile.mkdtemp(prefix="vqgen-codes-") if accelerator.is_main_process else None
        holder = [scratch]
        if accelerator.num_processes > 1:
            broadcast_object_list(holder)
        cache_dir = holder[0]
    folder = Path(cache_dir) / cache_key(tokenizer, dataset, split, max_samples, views)
    # Rank 0 decides and every rank follows: all of them must reach the barriers below, or none.
    cached = [(folder / SHARDS_FILE).is_file()]
    if accelerator.num_processes > 1:
        broadcast_object_list(cached)
    if not cached[0]:
        _encode_shards(tokenizer, dataset, split, folder, accelerator, batch_size, max_samples, num_workers, views)
    names = json.loads((folder / SHARDS_FILE).read_text())
    return datasets.concatenate_datasets([datasets.load_from_disk(str(folder / name)) for name in names])


SHARDS_FILE = "shards.json"


def _encode_shards(tokenizer: Any, dataset: str, split: str, folder: Path, accelerator: PartialState, batch_size: int,
                   max_samples: int | None, num_workers: int, views: str) -> None:
    config = tokenizer.config
    with accelerator.main_process_first():  # rank 0 builds a folder's index; the others then open it
        images = load_image_dataset(dataset, split, image_size=config.image_size, channels=config.image_channels,
                                    max_samples=max_samples)
    scratch = folder.with_name(folder.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    accelerator.wait_for_everyone()
    part = images.shard(accelerator.num_processes, accelerator.process_index)
    # its own generator: creating a loader's iterator draws a seed, which must not come from the global RNG
    # (a prior initialised after a fresh encoding would differ from one initialised after a cache hit)
    loader = torch.utils.data.DataLoader(part, batch_size=batch_size, num_workers=num_workers,
                                         generator=torch.Generator(), collate_fn=part.collate)
    tokenizer = tokenizer.to(accelerator.device).eval()
    codes, labels = [], []
    for batch in tqdm(loader, desc=f"encode {split}", disable=not accelerator.is_local_main_process):
        pixels = augmented_views(images_to_tensor(batch["image"]).to(accelerator.device), views)
        codes.append(tokenizer.tokenize(pixels).flatten(1).to(torch.int32).cpu().numpy())
        if "label" in batch:
            labels.append(batch["label"].repeat(pixels.shape[0] // batch["label"].shape[0]).numpy())
    length = config.latent_size**2
    columns: dict[str, Any] = {"codes": np.concatenate(codes) if codes else np.empty((0, length), np.int32)}
    features = {"codes": datasets.Sequence(datasets.Value("int32"), length=length)}
    if images.has_labels:
        columns["label"] = np.concatenate(labels) if labels else np.empty(0, np.int64)
        features["label"] = datasets.ClassLabel(names=images.class_names)
    name = f"shard-{accelerator.process_index:05d}-of-{accelerator.num_processes:05d}"
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(str(scratch / name))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        names = [f"shard-{i:05d}-of-{accelerator.num_processes:05d}" for i in range(accelerator.num_processes)]
        (scratch / SHARDS_FILE).write_text(json.dumps(names))
        with atomic_directory(folder) as tmp:
            tmp.rmdir()
            scratch.rename(tmp)
    accelerator.wait_for_everyone()
