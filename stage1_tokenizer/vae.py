"""VAE and CVAE: the shared encoder/decoder with a Gaussian posterior between them.

The CVAE differs from the VAE only in `_encoder_input` and `_decoder_input` (and the channel
counts those imply): the label as one-hot channels into the encoder, its embedding beside z.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from .autoencoder import Autoencoder
from .configs import CVAEConfig, VAEConfig
from .likelihood import pixel_log_likelihood
from .architectures import build_decoder, build_encoder
from .outputs import AutoencoderOutput
from .posterior import GaussianPosterior
from vqgen.sampling_settings import SamplingSettings, gaussian_latent_settings
from vqgen.validation import check_images, check_labels


class VAE(Autoencoder):
    """Gaussian-latent autoencoder; `z` is `b latent_dim` (flat) or `b latent_dim h w` (grid)."""

    model_type = "vae"
    config_class = VAEConfig
    default_loss = "elbo"

    def __init__(self, config: VAEConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise TypeError(f"pass a {self.config_class.__name__} or keyword options, not both (got {sorted(kwargs)})")
        config = config or self.config_class(**kwargs)
        super().__init__(config)
        c, g = config.channels, config.latent_size
        in_channels = config.image_channels + self._encoder_extra_channels(config)
        z_channels = config.latent_dim + self._decoder_extra_channels(config)
        if config.latent == "grid":
            self.encoder = build_encoder(config, in_channels, 2 * config.latent_dim)
            self.decoder = build_decoder(config, z_channels, config.image_channels)
        else:
            self.encoder = nn.Sequential(
                build_encoder(config, in_channels, c),
                nn.Flatten(),
                nn.Linear(c * g * g, 2 * config.latent_dim),
            )
            self.decoder = nn.Sequential(
                nn.Linear(z_channels, c * g * g),
                nn.Unflatten(1, (c, g, g)),
                build_decoder(config, c, config.image_channels),
            )

    @property
    def _image_decoder(self) -> nn.Module:
        """The conv decoder that writes the image (a flat latent puts a linear layer in front of it)."""
        return self.decoder if self.config.latent == "grid" else self.decoder[-1]

    # -- the conditioning hooks (identity for the VAE; see CVAE) ---------------------------------
    @staticmethod
    def _encoder_extra_channels(config: VAEConfig) -> int:
        return 0

    @staticmethod
    def _decoder_extra_channels(config: VAEConfig) -> int:
        return 0

    def _encoder_input(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return images

    def _decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return z

    # -- the model ---------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        g = self.config.latent_size
        return (self.config.latent_dim,) if self.config.latent == "flat" else (self.config.latent_dim, g, g)

    def encode(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> GaussianPosterior:
        """q(z|x) for images `b c H W` in [0, 1]."""
        check_images(images, self.config)
        mean, logvar = self.encoder(self._encoder_input(images, labels)).chunk(2, dim=1)
        return GaussianPosterior(mean, logvar)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Parameters of p(x|z): Bernoulli logits or Gaussian means, `b c H W`."""
        return self.decoder(self._decoder_input(z, labels))

    def to_images(self, logits: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) as images in [0, 1]."""
        return torch.sigmoid(logits) if self.config.likelihood == "bernoulli" else logits.clamp(0, 1)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.to_images(self.decode_logits(z, labels))

    def log_likelihood(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, in nats: `b`."""
        return pixel_log_likelihood(logits, images, self.config.likelihood, self.config.gaussian_std)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> AutoencoderOutput:
        posterior = self.encode(images, labels)
        logits = self.decode_logits(posterior.sample(generator), labels)
        return AutoencoderOutput(reconstruction=self.to_images(logits), decoded=logits, posterior=posterior,
                                 last_layer=self._image_decoder.last_layer_weight)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean."""
        return self.decode(self.encode(images, labels).mean, labels)

    @torch.no_grad()
    def sample(
        self, num_samples: int, labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z ~ N(0, I) -> images `num_samples c H W` in [0, 1]."""
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        device = next(self.parameters()).device
        z = torch.randn((num_samples, *self.latent_shape), generator=generator, device=device)
        return self.decode(z, labels)


    # -- the interface the pipelines use for every stage-1 model (pipelines/protocols.py) ------------
    has_elbo = True
    can_sample = True  # z ~ N(0, I), decoded

    def encode_latent(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images `b c H W` in [0, 1] -> the posterior means `b *latent_shape`."""
        return self.encode(images, labels).mean

    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents `b *latent_shape` -> images `b c H W` in [0, 1]."""
        return self.decode(z, labels)

    def negative_elbo(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) in closed form plus -log p(x|z) at the posterior mean, in nats: `b`.

        Deterministic (no sampled z), so it can rank images, e.g. as an anomaly score.
        """
        posterior = self.encode(images, labels)
        return posterior.kl() - self.log_likelihood(self.decode_logits(posterior.mean, labels), images)

    def sampling_settings(self, sampling: SamplingSettings | None = None, *, conditional: bool = False,
                          **kwargs: Any) -> SamplingSettings:
        """Only `temperature` (the standard deviation of z) applies; a prior's knobs are refused."""
        return gaussian_latent_settings(type(self).__name__, sampling, **kwargs)

    def sample_latents(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                       settings: SamplingSettings) -> torch.Tensor:
        """One z ~ N(0, temperature^2 I) per generator, `b *latent_shape`, each drawn with its own generator."""
        return GaussianPosterior.standard_normal(self.latent_shape, self.device).sample_seeded(generators,
                                                                                              settings.temperature)

    @torch.no_grad()
    def sample_batch(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                     settings: SamplingSettings) -> torch.Tensor:
        """One image per generator, `b c H W` in [0, 1]: `sample_latents`, decoded."""
        z = self.sample_latents(labels, generators, settings)
        return self.decode(z, None if labels is None else labels.to(self.device))

class CVAE(VAE):
    """Conditional VAE: `labels` (`b` long, in [0, num_classes)) are required everywhere."""

    model_type = "cvae"
    config_class = CVAEConfig

    def __init__(self, config: CVAEConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.label_embedding = nn.Embedding(self.config.num_classes, self.config.label_embed_dim)

    @staticmethod
    def _encoder_extra_channels(config: CVAEConfig) -> int:
        return config.num_classes

    @staticmethod
    def _decoder_extra_channels(config: CVAEConfig) -> int:
        return config.label_embed_dim

    def _encoder_input(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        labels = check_labels(labels, self.config.num_classes, images.shape[0]).to(images.device)
        one_hot = F.one_hot(labels, self.config.num_classes).to(images.dtype)
        maps = repeat(one_hot, "b k -> b k h w", h=images.shape[2], w=images.shape[3])
        return torch.cat([images, maps], dim=1)

    def _decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        labels = check_labels(labels, self.config.num_classes, z.shape[0]).to(z.device)
        embedding = self.label_embedding(labels).to(z.dtype)
        if z.ndim == 4:  # grid latent: the embedding becomes constant channels
            embedding = repeat(embedding, "b e -> b e h w", h=z.shape[2], w=z.shape[3])
        return torch.cat([z, embedding], dim=1)

    # -- the interface the pipelines use (pipelines/protocols.py) --------------------------------------
    requires_labels = True  # every encode and decode takes one label per image

    @property
    def class_names(self) -> list[str]:
        """The classes this model is conditioned on (their indices as names when none were recorded)."""
        return self.config.class_names or [str(i) for i in range(self.config.num_classes)]
