"""How to sample: the one settings type every sampler (a two-stage pipeline, a VAE, a CVAE) fills in.

It lives in the shared core because the samplers live in different stages: each model's
`sampling_settings(...)` validates the user's arguments and returns one of these, and its
`sample_batch(...)` takes it back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .validation import is_finite_number


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; the prior-only knobs keep their neutral values (None, 1.0) for the VAE family."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0


def gaussian_latent_settings(
    sampler: str, *, temperature: float | None, top_k: int | None, top_p: float | None, guidance_scale: float | None
) -> SamplingSettings:
    """The settings of a model that samples z ~ N(0, I) and decodes it: only the temperature applies.

    `sampler` names the model in the error that refuses a prior's knobs (top-k, top-p, guidance).
    """
    prior_only = {"top_k": top_k, "top_p": top_p, "guidance_scale": guidance_scale}
    given = [k for k, v in prior_only.items() if v is not None]
    if given:
        raise ValueError(f"{given} apply to a two-stage pipeline's prior; a {sampler} samples "
                         "z ~ N(0, I) (use temperature to scale its standard deviation).")
    temperature = 1.0 if temperature is None else temperature
    if not is_finite_number(temperature) or not temperature > 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return SamplingSettings(temperature=temperature)
