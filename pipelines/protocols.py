"""The interface the pipelines program against, so no tool asks which class a model is.

Implemented by the stage-1 models (`VQVAE`, `VAE`, `CVAE`), by `TwoStagePipeline`, and by the
adapters of another library's models (benchmarks/peer_pythae.py). The models only have to match
these shapes (duck typing); none of them imports this module, as the stages must not import the
pipelines. Capabilities are flags that say which further methods a model has:

    is_discrete   tokenize, detokenize, codebook_size, grid_shape      (VQ-VAE)
    has_elbo      encode -> GaussianPosterior, decode_logits,
                  log_likelihood, negative_elbo                        (VAE, CVAE)
    can_sample    sampling_settings, sample_latents, decode_latent,
                  sample_batch                                         (VAE, CVAE, two-stage pipeline)

A discrete autoencoder that can sample does so through a prior over its codes: such a model (the
two-stage pipeline) also has `prior` and `complete_codes`.

Images are float `b c H W` in [0, 1] throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Unpack

import torch

from vqgen.sampling_settings import SamplingKwargs, SamplingSettings


class Labelled(Protocol):
    """What label parsing needs of a model."""

    @property
    def class_names(self) -> list[str] | None:
        """The classes the model is conditioned on; None when it takes no labels."""

    @property
    def requires_labels(self) -> bool:
        """True when it cannot encode, decode or sample without a class (a CVAE)."""


class Autoencoder(Labelled, Protocol):
    """A stage-1 model: images <-> latents."""

    config: Any  # image_size, image_channels (and class_names, the dataset's, for plots)
    is_discrete: bool
    has_elbo: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One latent, no batch dim: `(latent_dim,)` (flat VAE) or `(d, h, w)` (grid VAE, VQ-VAE)."""

    def encode_latent(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`b c H W` -> `b *latent_shape`: the posterior mean (VAE family) or the pre-quantisation latent (VQ-VAE)."""

    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`b *latent_shape` -> `b c H W`; a VQ-VAE snaps each latent vector to its nearest code first."""

    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`b c H W` -> `b c H W`: decode(encode(images))."""


class ImageSampler(Labelled, Protocol):
    """A model that draws images (`can_sample`): the two-stage pipeline, a VAE, a CVAE."""

    @property
    def device(self) -> torch.device: ...

    def sampling_settings(self, sampling: SamplingSettings | None = None, *, conditional: bool = False,
                          **kwargs: Unpack[SamplingKwargs]) -> SamplingSettings:
        """The user's settings (`SamplingSettings.resolve`) completed with the model's defaults and checked.

        `conditional`: whether the samples will have class labels. Refuses what does not apply,
        before any work.
        """

    def sample_latents(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                       settings: SamplingSettings) -> torch.Tensor:
        """One latent per generator on the model's device: a VAE's z `b *latent_shape`, a pipeline's code grid `b h w`
        (a pipeline also takes `prompt_codes`, `callback_on_step_end` and `progress`). Latent i depends only on
        `generators[i]` (and its label), not on the batch it is drawn in."""

    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """What `sample_latents` drew -> images `b c H W` in [0, 1]."""

    def sample_batch(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                     settings: SamplingSettings) -> torch.Tensor:
        """One image per generator, `b c H W` in [0, 1] on the model's device; `labels`: `b` long or None.

        Image i depends only on `generators[i]` (and its label), not on the batch it is drawn in.
        """


class GenerativeModel(Labelled, Protocol):
    """What a user passes as `model` to the pipelines' tools: any of the above, loaded."""

    model_type: str  # the family's name ("two-stage", "vqvae", ...), reported in results, never branched on
    can_sample: bool

    @property
    def autoencoder(self) -> Autoencoder:
        """The stage-1 model that encodes and decodes images (a pipeline's tokenizer; a stage-1 model itself)."""

    @property
    def device(self) -> torch.device: ...

    def to(self, device: str | torch.device) -> GenerativeModel: ...
