"""How to sample: the one settings type of every sampler (a two-stage pipeline's prior, a VAE, a CVAE).

`SamplingSettings` holds temperature, top-k, top-p and guidance and checks them when it is built; its
`check_for` adds the checks that need the model. Every entry point (`sample_codes`, `generate`,
`pipe(...)`, `pipelines.sample`, the saved `pipeline_config.json`) takes or stores one, and takes the
same four as keyword arguments (`SamplingKwargs`) that `SamplingSettings.resolve` turns into one. The
command-line flags are made from the fields and their help text (`add_sampling_arguments`).
It lives in the shared core because the samplers live in different stages.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .validation import is_finite_number, is_integer

# the knobs of a prior over codes; a model that samples z ~ N(0, I) takes temperature alone
PRIOR_ONLY = ("top_k", "top_p", "guidance_scale")


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample, checked when built; the prior-only knobs keep their neutral values (None, 1.0) for a VAE."""

    temperature: float = field(default=1.0, metadata={
        "help": "softmax temperature of the prior; for a VAE/CVAE the standard deviation of z ~ N(0, I)"})
    top_k: int | None = field(default=None, metadata={"help": "keep the k most likely codes at each step"})
    top_p: float | None = field(default=None, metadata={
        "help": "keep the most likely codes until their probability reaches p (nucleus sampling)"})
    guidance_scale: float = field(default=1.0, metadata={
        "help": "classifier-free guidance: logits uncond + s * (cond - uncond); 1 is none"})

    def __post_init__(self) -> None:
        if not is_finite_number(self.temperature) or not self.temperature > 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.top_k is not None and (not is_integer(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 (or None: no cut-off), got {self.top_k!r}")
        if self.top_p is not None and (not is_finite_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must lie in (0, 1] (or be None: no nucleus), got {self.top_p!r}")
        if not is_finite_number(self.guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number (1.0: no guidance), got {self.guidance_scale!r}")

    @classmethod
    def resolve(cls, sampling: SamplingSettings | None = None, defaults: SamplingSettings | None = None,
                **kwargs: Any) -> SamplingSettings:
        """`sampling` (None: `defaults`, or the neutral settings) with each keyword that is not None in its field's
        place: what every entry point runs on its `sampling` argument and keyword settings."""
        if sampling is not None and not isinstance(sampling, cls):
            raise TypeError(f"sampling must be a SamplingSettings or None, got {type(sampling).__name__}; "
                            "build one with SamplingSettings(temperature=..., top_k=..., ...)")
        unknown = sorted(set(kwargs) - set(SETTING_NAMES))
        if unknown:
            raise TypeError(f"unknown sampling setting(s) {unknown}; the settings are {list(SETTING_NAMES)}")
        given = {name: value for name, value in kwargs.items() if value is not None}
        return dataclasses.replace(sampling or defaults or cls(), **given)

    def check_for(self, *, codebook_size: int | None, conditional: bool, sampler: str = "prior") -> SamplingSettings:
        """The checks that need the model; returns these settings. `codebook_size`: the prior's, or None for a
        model without one (`sampler` names it), which takes temperature alone. `conditional`: the model has classes."""
        if codebook_size is None:
            refuse_prior_knobs([name for name in PRIOR_ONLY if getattr(self, name) != getattr(NEUTRAL, name)], sampler)
        elif self.top_k is not None and self.top_k > codebook_size:
            raise ValueError(f"top_k must be an integer in [1, {codebook_size}] (the codebook size), got {self.top_k!r}")
        if self.guidance_scale != 1.0 and not conditional:
            raise ValueError(f"guidance_scale={self.guidance_scale} needs a class-conditional prior; this {sampler} is "
                             "unconditional. Use guidance_scale=1.0.")
        return self


class SamplingKwargs(TypedDict, total=False):
    """`SamplingSettings` as keyword arguments (the entry points' convenience): None or absent keeps the default."""

    temperature: float | None
    top_k: int | None
    top_p: float | None
    guidance_scale: float | None


NEUTRAL = SamplingSettings()
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplingSettings))


def refuse_prior_knobs(names: list[str], sampler: str) -> None:
    if names:
        raise ValueError(f"{names} apply to a two-stage pipeline's prior; a {sampler} samples "
                         "z ~ N(0, I) (use temperature to scale its standard deviation).")


def gaussian_latent_settings(sampler: str, sampling: SamplingSettings | None = None,
                             **kwargs: Any) -> SamplingSettings:
    """The settings of a model that samples z ~ N(0, I) and decodes it (`sampler` names it): temperature alone.
    A prior's knob is refused when given as a keyword, even at its neutral value, as when set in `sampling`."""
    refuse_prior_knobs([name for name in PRIOR_ONLY if kwargs.get(name) is not None], sampler)
    return SamplingSettings.resolve(sampling, **kwargs).check_for(codebook_size=None, conditional=False,
                                                                  sampler=sampler)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """A `--name` flag per setting, its help from the field; unset flags parse to None (the model's default)."""
    for f in dataclasses.fields(SamplingSettings):
        kind = int if f.name == "top_k" else float
        parser.add_argument(f"--{f.name}", type=kind, default=None, help=f"{f.metadata['help']}; unset: the model's")


def sampling_kwargs(args: argparse.Namespace) -> SamplingKwargs:
    """The settings of parsed `add_sampling_arguments` flags, as keyword arguments."""
    return {name: getattr(args, name) for name in SETTING_NAMES}
