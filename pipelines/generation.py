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
from .outputs import ImageGenerationOutput
from .protocols import GenerativeModel
from .sampling import Generator, OutputType, StepCallback, check_request, sample


def generate(
    model: GenerativeModel | str | os.PathLike,
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
    """Sample images from a two-stage pipeline, a VAE or a CVAE: `generate(pipe, class_labels=[1, 2, 3]).images`.

    Args:
        model: a `TwoStagePipeline`, `VAE` or `CVAE`, or a folder / Hub id holding one.
        num_samples: how many images; None: one per class label (or per row of `prompt_codes`, or per
            generator of a list), 1 without any. Fewer labels than samples are cycled over them
            (`[0, 1, 2]` for 7 samples: 0 1 2 0 1 2 0), as `python -m pipelines.sample` does; more are refused.
        class_labels: ints or class names; one for all samples, or a list. None gives unconditional
            samples (a CVAE cycles through its classes instead).
        sampling: a `SamplingSettings` (temperature, top_k, top_p, guidance_scale); None: the
            pipeline's defaults, whose guidance applies only with class_labels. For a VAE/CVAE,
            temperature scales the standard deviation of z ~ N(0, I) and the others stay unset.
        temperature, top_k, top_p, guidance_scale: keywords that take the place of those fields
            (None: keep them), e.g. `generate(pipe, 8, class_labels="7", top_k=50)`.
        seed: sample i always comes from seed (seed, i), whatever `batch_size`. None draws a seed
            (returned as `.seed`).
        generator: instead of `seed`, a `torch.Generator` or one per sample. One generator: one seed per
            sample is drawn from it in order, so a call is reproducible from the generator's seed and
            does not depend on `batch_size`, but sample i depends on the number of samples drawn before it
            (not on the others' labels or batch). A list: sample i depends on `generator[i]` alone.
        output_type: "pil" (list of PIL images), "pt" (`b c h w` float tensor in [0, 1]), "np"
            (`b h w c` float32 array in [0, 1]) or "latent" (the latents instead of images: a
            pipeline's code grids `b h w` long, a VAE's z).
        device: where to sample; None samples where the model is (`pipe.to(...)` holds).
        progress: progress bars (batches; for a pipeline, its code positions too); False turns them off.
        prompt_codes: a two-stage pipeline's completion: `b t` codes (or `t` for every sample) kept as the
            first t codes of each grid in raster order; the prior draws the rest.
        callback_on_step_end: `callback(pipe, step, timestep, callback_kwargs)` after each code a two-stage
            pipeline draws (see `TwoStagePipeline.sample_latents`), batch by batch.

    Returns an `ImageGenerationOutput`: `.images`, `.codes` (a pipeline's code grids; None for the VAE family),
    `.class_labels` and `.seed`.
    """
    check_request(num_samples, batch_size, output_type, seed, device, generator)  # before loading: a bad call downloads nothing
    SamplingSettings.resolve(sampling, **kwargs)  # before loading: bad settings download nothing either
    return sample(load_model(model, generative=True), num_samples, class_labels, sampling=sampling, seed=seed,
                  generator=generator, batch_size=batch_size, output_type=output_type, device=device,
                  progress=progress, prompt_codes=prompt_codes, callback_on_step_end=callback_on_step_end, **kwargs)
