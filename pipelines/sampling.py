"""Draw images from any `ImageSampler` (a two-stage pipeline, a VAE, a CVAE): batched, seeded, converted.

`sample` is what `TwoStagePipeline.__call__` and `pipelines.generate` run; `sample_images` draws one
batch of a run, which the multi-process sampling script calls shard by shard. Sample i comes from
its own generator seeded from (seed, i), so batching never changes an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Unpack

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vqgen.sampling_settings import SamplingKwargs, SamplingSettings
from vqgen.validation import is_integer

from .labels import Labels, batch_labels, label_count
from .outputs import ImageGenerationOutput, Images
from .protocols import ImageSampler
from .seeds import call_generators, check_generator, sample_generators

OutputType = Literal["pil", "pt", "np", "latent"]
Generator = torch.Generator | Sequence[torch.Generator] | None
StepCallback = Callable[[Any, int, int, dict[str, torch.Tensor]], Any]


def check_request(num_samples: int | None, batch_size: int, output_type: OutputType, seed: int | None = None,
                  device: str | torch.device | None = None, generator: Generator = None) -> None:
    """Refuse a malformed request before anything is loaded or drawn."""
    if output_type not in ("pil", "pt", "np", "latent"):
        raise ValueError(f"output_type must be 'pil', 'pt', 'np' or 'latent', got {output_type!r}")
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if (value is not None or name == "batch_size") and (not is_integer(value) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if seed is not None and (not is_integer(seed) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    check_generator(generator, seed)
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


def full_prompt(prompt_codes: torch.Tensor | None, num_samples: int) -> torch.Tensor | None:
    """Prompt codes as `num_samples t`: `t` codes (or `1 t`) are for every sample."""
    if prompt_codes is None:
        return None
    prompt = torch.as_tensor(prompt_codes)
    prompt = prompt[None] if prompt.ndim == 1 else prompt
    if prompt.ndim != 2 or prompt.shape[0] not in (1, num_samples):
        raise ValueError(f"prompt_codes must be `t` codes for every sample or `b t` with b = num_samples "
                         f"({num_samples}), got shape {tuple(prompt.shape)}")
    return prompt.expand(num_samples, -1)


def step_options(model: ImageSampler, prompt: torch.Tensor | None, callback_on_step_end: StepCallback | None,
                 progress: bool) -> dict[str, Any]:
    """What a model that draws code by code (a two-stage pipeline) takes besides labels, generators and prompt;
    refused for the others (the VAE family draws each sample in one step)."""
    if model.autoencoder.is_discrete:
        return {"callback_on_step_end": callback_on_step_end, "progress": progress}
    if prompt is not None or callback_on_step_end is not None:
        raise ValueError(f"prompt_codes and callback_on_step_end apply to a two-stage pipeline, which draws code by "
                         f"code; this {model.model_type} draws each sample in one step")
    return {}


@torch.no_grad()
def sample(
    model: ImageSampler,
    num_samples: int | None = None,
    class_labels: Labels = None,
    *,
    sampling: SamplingSettings | None = None,
    seed: int | None = None,
    generator: Generator = None,
    batch_size: int = 64,
    output_type: OutputType = "pil",
    device: str | torch.device | None = None,
    progress: bool = True,
    prompt_codes: torch.Tensor | None = None,
    callback_on_step_end: StepCallback | None = None,
    **kwargs: Unpack[SamplingKwargs],
) -> ImageGenerationOutput:
    """Images from `model` as an `ImageGenerationOutput`; every argument is refused before any work if it does not
    apply. See `pipelines.generate` for the arguments. `device` None samples where the model is."""
    check_request(num_samples, batch_size, output_type, seed, device, generator)
    if num_samples is None and (class_labels is None or label_count(class_labels) == 1):  # one label is for all
        num_samples = batch_from(prompt_codes, generator)
    num_samples, labels = batch_labels(model, class_labels, num_samples)
    settings = model.sampling_settings(sampling, conditional=labels is not None, **kwargs)
    prompt = full_prompt(prompt_codes, num_samples)
    options = step_options(model, prompt, callback_on_step_end, progress)
    generators, seed = call_generators(num_samples, seed, generator)
    if device is not None:  # None: where the model is, so `pipe.to(...)` holds
        model.to(device)

    latents, images = [], []
    starts = range(0, num_samples, batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) == 1):
        end = min(start + batch_size, num_samples)
        labels_ = None if labels is None else labels[start:end].to(model.device)
        prompt_ = {} if prompt is None else {"prompt_codes": prompt[start:end]}
        z = model.sample_latents(labels_, generators[start:end], settings, **options, **prompt_)
        latents.append(z.cpu())
        if output_type != "latent":
            images.append(model.decode_latent(z, labels_).cpu())
    latents = torch.cat(latents)
    return ImageGenerationOutput(
        images=latents if output_type == "latent" else to_output(torch.cat(images), output_type),
        codes=latents if model.autoencoder.is_discrete else None,
        class_labels=None if labels is None else labels.cpu(), seed=seed)


def batch_from(prompt_codes: torch.Tensor | None, generator: Generator) -> int | None:
    """The batch size that `b t` prompt codes or a list of generators imply; None when neither does."""
    if prompt_codes is not None and torch.as_tensor(prompt_codes).ndim == 2:
        return len(prompt_codes)
    return len(generator) if isinstance(generator, Sequence) else None
