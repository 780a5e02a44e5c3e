"""`generate()`: one call that samples images from a two-stage pipeline, a VAE or a CVAE, loaded or by name.

Sample i is drawn from its own random generator, seeded from (seed, i): the same seed gives the
same images whatever the batch size or the number of processes that share the work.
"""

from __future__ import annotations

import os
from typing import Unpack

import torch

from vqgen.sampling_settings import SamplingKwargs, SamplingSettings

from .labels import Labels
from .loading import load_model
from .protocols import GenerativeModel
from .sampling import Images, OutputType, check_request, sample


def generate(
    model: GenerativeModel | str | os.PathLike,
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
    """Sample `num_samples` images from a two-stage pipeline, a VAE or a CVAE.

    Args:
        model: a `TwoStagePipeline`, `VAE` or `CVAE`, or a folder / Hub id holding one.
        class_labels: ints or class names; one for all samples or one per sample. None gives
            unconditional samples (a CVAE cycles through its classes instead).
        sampling: a `SamplingSettings` (temperature, top_k, top_p, guidance_scale); None: the
            pipeline's defaults, whose guidance applies only with class_labels. For a VAE/CVAE,
            temperature scales the standard deviation of z ~ N(0, I) and the others stay unset.
        temperature, top_k, top_p, guidance_scale: keywords that take the place of those fields
            (None: keep them), e.g. `generate(pipe, 8, class_labels="7", top_k=50)`.
        seed: sample i always comes from seed (seed, i), whatever `batch_size`. None draws a seed.
        output_type: "pil" (list of PIL images), "pt" (`b c h w` float tensor in [0, 1]) or "np"
            (`b h w c` float32 array in [0, 1]).
        device: where to sample; None picks CUDA when available.
    """
    check_request(num_samples, batch_size, output_type, seed, device)  # before loading: a bad call downloads nothing
    SamplingSettings.resolve(sampling, **kwargs)  # before loading: bad settings download nothing either
    return sample(load_model(model, generative=True), num_samples, class_labels, sampling=sampling, seed=seed,
                  batch_size=batch_size, output_type=output_type, device=device, progress=progress, **kwargs)
