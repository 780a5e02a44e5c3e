"""`generate()`: one call that samples images from a two-stage pipeline, a VAE or a CVAE.

Sample i is drawn from its own random generator, seeded from (seed, i): the same seed gives the
same images whatever the batch size or the number of processes that share the work.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from stage1_tokenizer import CVAE, VAE
from stage2_prior import sample_codes
from stage2_prior.sampling import check_sampling_args

from .loading import GenerativeModel, load_model
from .pipeline import TwoStagePipeline

Labels = int | str | Sequence[int | str] | torch.Tensor | None
OutputType = Literal["pil", "pt", "np"]


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; the prior-only knobs are None/1.0 for the VAE family."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a run seeded with `seed` (independent streams, no collisions)."""
    return int.from_bytes(hashlib.sha256(f"vqgen:{seed}:{index}".encode()).digest()[:8], "big") >> 1


def class_names_of(model: GenerativeModel) -> list[str] | None:
    if isinstance(model, TwoStagePipeline):
        return model.class_names
    if isinstance(model, CVAE):
        return model.config.class_names or [str(i) for i in range(model.config.num_classes)]
    return None


def resolve_labels(model: GenerativeModel, class_labels: Labels, num_samples: int) -> torch.Tensor | None:
    """Class labels as a `num_samples` long tensor: ints or class names, one for all or one per sample.

    None on a CVAE cycles through the classes (a CVAE always needs a class); on a class-conditional
    prior it samples the null class, i.e. unconditionally.
    """
    names = class_names_of(model)
    if class_labels is None:
        return torch.arange(num_samples) % len(names) if isinstance(model, CVAE) else None
    if names is None:
        raise ValueError(f"class_labels were given, but this {type(model).__name__} is unconditional: "
                         "pass class_labels=None, or use a class-conditional model.")
    if isinstance(class_labels, torch.Tensor):
        values: list = class_labels.flatten().tolist() if class_labels.ndim else [class_labels.item()]
    elif isinstance(class_labels, (int, str)):
        values = [class_labels]
    else:
        values = list(class_labels)
    if len(values) == 1:
        values = values * num_samples
    if len(values) != num_samples:
        raise ValueError(f"got {len(values)} class labels for num_samples={num_samples}: pass one label or one per sample")
    out = []
    for v in values:
        if isinstance(v, str) and v not in names and not v.lstrip("-").isdigit():
            raise ValueError(f"unknown class name {v!r}; this model's classes are {names}")
        index = names.index(v) if isinstance(v, str) and v in names else int(v)
        if not 0 <= index < len(names):
            raise ValueError(f"class label {v!r} is out of range: this model has {len(names)} classes, "
                             f"0..{len(names) - 1} ({names})")
        out.append(index)
    return torch.tensor(out, dtype=torch.long)


def resolve_settings(model: GenerativeModel, *, temperature: float | None, top_k: int | None, top_p: float | None,
                     guidance_scale: float | None, conditional_samples: bool) -> SamplingSettings:
    """The pipeline's defaults where an argument is None; refused settings raise before any work."""
    if isinstance(model, TwoStagePipeline):
        cfg = model.config
        settings = SamplingSettings(
            temperature=cfg.temperature if temperature is None else temperature,
            top_k=cfg.top_k if top_k is None else top_k,
            top_p=cfg.top_p if top_p is None else top_p,
            # the default guidance applies only when there is a class to guide towards
            guidance_scale=guidance_scale if guidance_scale is not None
            else (cfg.guidance_scale if conditional_samples else 1.0),
        )
        if settings.guidance_scale != 1.0 and model.num_classes and not conditional_samples:
            raise ValueError("guidance_scale != 1 needs class_labels to guide towards; pass class_labels, "
                             "or guidance_scale=1.0 for unconditional samples.")
        check_sampling_args(1, model.spec.tokenizer.codebook_size, temperature=settings.temperature,
                            top_k=settings.top_k, top_p=settings.top_p, guidance_scale=settings.guidance_scale,
                            conditional=model.num_classes > 0)
        return settings
    prior_only = {"top_k": top_k, "top_p": top_p, "guidance_scale": guidance_scale}
    given = [k for k, v in prior_only.items() if v is not None]
    if given:
        raise ValueError(f"{given} apply to a two-stage pipeline's prior; a {type(model).__name__} samples "
                         "z ~ N(0, I) (use temperature to scale its standard deviation).")
    temperature = 1.0 if temperature is None else temperature
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return SamplingSettings(temperature=temperature)


@torch.no_grad()
def sample_images(model: GenerativeModel, indices: Sequence[int], labels: torch.Tensor | None,
                  settings: SamplingSettings, seed: int) -> torch.Tensor:
    """Samples number `indices` of a run: `b c h w` float in [0, 1] on the model's device.

    `labels` holds one label per index (or is None). Each sample uses its own generator.
    """
    generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
    if isinstance(model, TwoStagePipeline):
        codes = sample_codes(model.prior, len(indices), class_labels=labels, temperature=settings.temperature,
                             top_k=settings.top_k, top_p=settings.top_p, guidance_scale=settings.guidance_scale,
                             generator=generators)
        return model.tokenizer.detokenize(codes.to(model.tokenizer.quantizer.codebook.device))
    if isinstance(model, VAE):
        device = next(model.parameters()).device
        z = torch.stack([torch.randn(model.latent_shape, generator=g) for g in generators]) * settings.temperature
        return model.decode(z.to(device), None if labels is None else labels.to(device))
    raise TypeError(f"cannot sample from a {type(model).__name__}")


def to_output(images: torch.Tensor, output_type: OutputType) -> list[Image.Image] | torch.Tensor | np.ndarray:
    images = images.detach().float().clamp(0, 1).cpu()
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy()  # b h w c
    if output_type == "np":
        return array
    pixels = (array * 255).round().astype(np.uint8)
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def generate(
    model: GenerativeModel | str,
    num_samples: int = 1,
    class_labels: Labels = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    output_type: OutputType = "pil",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Image.Image] | torch.Tensor | np.ndarray:
    """Sample `num_samples` images from a two-stage pipeline, a VAE or a CVAE.

    Args:
        model: a `TwoStagePipeline`, `VAE` or `CVAE`, or a folder / Hub id holding one.
        class_labels: ints or class names; one for all samples or one per sample. None gives
            unconditional samples (a CVAE cycles through its classes instead).
        temperature, top_k, top_p, guidance_scale: sampling settings of the prior (None: the
            pipeline's defaults; guidance only with class_labels). For a VAE/CVAE, temperature scales
            the standard deviation of z ~ N(0, I) and the others must be None.
        seed: sample i always comes from seed (seed, i), whatever `batch_size`. None draws a seed.
        output_type: "pil" (list of PIL images), "pt" (`b c h w` float tensor in [0, 1]) or "np"
            (`b h w c` float32 array in [0, 1]).
        device: where to sample; None picks CUDA when available.
    """
    if output_type not in ("pil", "pt", "np"):
        raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    model = load_model(model, generative=True)
    labels = resolve_labels(model, class_labels, num_samples)
    settings = resolve_settings(model, temperature=temperature, top_k=top_k, top_p=top_p,
                                guidance_scale=guidance_scale, conditional_samples=labels is not None)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    batches = []
    starts = range(0, num_samples, batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) == 1):
        indices = range(start, min(start + batch_size, num_samples))
        batch_labels = None if labels is None else labels[indices.start : indices.stop]
        batches.append(sample_images(model, indices, batch_labels, settings, seed).cpu())
    return to_output(torch.cat(batches), output_type)
