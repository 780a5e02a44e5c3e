"""What `pipe(...)` and `pipelines.generate(...)` return: diffusers' shape, `pipe(...).images[0]`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

Images = list[Image.Image] | torch.Tensor | np.ndarray


class BaseOutput:
    """A dataclass read by attribute (`out.images`), by key (`out["images"]`) or by position (`out[0]`), as
    diffusers' outputs are; `to_tuple()` gives the fields that are set, in order."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def __getitem__(self, key: str | int) -> Any:
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


@dataclass
class ImageGenerationOutput(BaseOutput):
    """The samples of one call.

    images: list of PIL images ("pil"), `b c h w` float tensor ("pt"), `b h w c` float32 array ("np"), all in
        [0, 1] but PIL; with output_type="latent", the latents instead (the code grids of a two-stage pipeline).
    codes: the code grids the prior drew, `b h w` long; None for the VAE family, which has none.
    class_labels: the label of each sample, `b` long; None for unconditional samples.
    seed: the run seed (sample i comes from seed (seed, i)); None when the call got `generator=`.
    """

    images: Images
    codes: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    seed: int | None = None
