"""Draw images from any `ImageSampler` (a two-stage pipeline, a VAE, a CVAE): batched, seeded, converted.

`sample` is what `TwoStagePipeline.__call__` and `pipelines.generate` run; `sample_images` draws one
batch of a run, which the multi-process sampling script calls shard by shard. Sample i comes from
its own generator seeded from (seed, i), so batching never changes an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Unpack

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vqgen.sampling_settings import SamplingKwargs, SamplingSettings
from vqgen.validation import is_integer

from .labels import Labels, resolve_labels
from .protocols import ImageSampler
from .seeds import random_seed, sample_generators

OutputType = Literal["pil", "pt", "np"]
Images = list[Image.Image] | torch.Tensor | np.ndarray


def check_request(num_samples: int, batch_size: int, output_type: OutputType, seed: int | None = None,
                  device: str | torch.device | None = None) -> None:
    """Refuse a malformed request before anything is loaded or drawn."""
    if output_type not in ("pil", "pt", "np"):
        raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not is_integer(value) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if seed is not None and (not is_integer(seed) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None


@torch.no_grad()
def sample_images(model: ImageSampler, indices: Sequence[int], labels: torch.Tensor | None,
                  settings: SamplingSettings, seed: int) -> torch.Tensor:
    """Samples number `indices` of a run: `b c h w` float in [0, 1] on the model's device.

    `labels` holds one label per index (or is None).
    """
    return model.sample_batch(labels, sample_generators(seed, indices), settings)


def to_output(images: torch.Tensor, output_type: OutputType) -> Images:
    """`b c h w` in [0, 1] -> a `b c h w` tensor ("pt"), a `b h w c` float32 array ("np") or PIL images ("pil")."""
    images = images.detach().float().clamp(0, 1).cpu()
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy()  # b h w c
    if output_type == "np":
        return array
    pixels = (array * 255).round().astype(np.uint8)
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def sample(
    model: ImageSampler,
    num_samples: int = 1,
    class_labels: Labels = None,
    *,
    sampling: SamplingSettings | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    output_type: OutputType = "pil",
    device: str | torch.device | None = None,
    progress: bool = True,
    **kwargs: Unpack[SamplingKwargs],
) -> Images:
    """`num_samples` images from `model`; every argument is refused before any work if it does not apply.

    See `pipelines.generate` for the arguments. `model` is moved to `device` (None: CUDA when available).
    """
    check_request(num_samples, batch_size, output_type, seed, device)
    labels = resolve_labels(model, class_labels, num_samples)
    settings = model.sampling_settings(sampling, conditional=labels is not None, **kwargs)
    seed = random_seed() if seed is None else seed
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    batches = []
    starts = range(0, num_samples, batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) == 1):
        indices = range(start, min(start + batch_size, num_samples))
        batch_labels = None if labels is None else labels[indices.start : indices.stop]
        batches.append(sample_images(model, indices, batch_labels, settings, seed).cpu())
    return to_output(torch.cat(batches), output_type)
