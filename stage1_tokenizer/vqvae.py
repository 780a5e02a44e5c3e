"""VQ-VAE: the shared encoder/decoder (conv or vqgan) with a vector quantiser between them."""

from __future__ import annotations

from typing import Any

import torch

from .autoencoder import Autoencoder
from .configs import VQVAEConfig
from .architectures import build_decoder, build_encoder
from .outputs import AutoencoderOutput
from .quantizers import build_quantizer
from vqgen.validation import check_images


class VQVAE(Autoencoder):
    """Image `b c H W` in [0, 1] <-> codes `b h w` in [0, codebook_size), h = H / 2**num_downsamples.

    >>> model = VQVAE(codebook_size=512)          # or VQVAE(VQVAEConfig(...))
    >>> codes = model.tokenize(images)            # b 7 7 for 28x28 images
    >>> images = model.detokenize(codes)
    """

    model_type = "vqvae"
    config_class = VQVAEConfig
    default_loss = "vq"

    def __init__(self, config: VQVAEConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise TypeError(f"pass a VQVAEConfig or keyword options, not both (got {sorted(kwargs)} beside the config)")
        # VQVAE(codebook_size=...) keeps working: flat VQ settings go into the quantiser sub-config.
        config = config or VQVAEConfig(**VQVAEConfig.upgrade(kwargs, format_version=1))
        super().__init__(config)
        self.encoder = build_encoder(config, config.image_channels, config.code_dim)
        self.quantizer = build_quantizer(config.quantizer, config.code_dim)
        self.decoder = build_decoder(config, config.code_dim, config.image_channels)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (self.config.latent_size, self.config.latent_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents: `b c H W -> b d h w`."""
        check_images(images, self.config)
        return self.encoder(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> AutoencoderOutput:
        """`labels` is accepted and ignored, so one training loop serves every stage-1 model."""
        q = self.quantizer(self.encode(images))
        decoded = self.decoder(q.quantized)
        return AutoencoderOutput(reconstruction=decoded.clamp(0, 1), decoded=decoded, quantizer_losses=q.losses,
                                 codes=q.codes, last_layer=self.decoder.last_layer_weight)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """`b c H W` float in [0, 1] -> `b h w` long codes. Never updates the codebook."""
        z = self.encode(images).float()
        return self.quantizer.nearest(z)

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor) -> torch.Tensor:
        """`b h w` long codes -> `b c H W` images in [0, 1]."""
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid_shape:
            raise ValueError(
                f"codes must have shape [b, {self.grid_shape[0]}, {self.grid_shape[1]}] for this tokenizer, "
                f"got {tuple(codes.shape)}"
            )
        return self.decoder(self.quantizer.lookup(codes)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """detokenize(tokenize(images)); `labels` is ignored (same signature as the VAE family)."""
        return self.detokenize(self.tokenize(images))

    # -- the interface the pipelines use for every stage-1 model (pipelines/protocols.py) ------------
    is_discrete = True

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """One pre-quantisation latent: `(code_dim, h, w)`."""
        return (self.config.code_dim, *self.grid_shape)

    def encode_latent(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images `b c H W` in [0, 1] -> pre-quantisation latents `b d h w`; `labels` is ignored."""
        return self.encode(images).float()

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents `b d h w` -> images `b c H W`: each latent vector snaps to its nearest code first."""
        return self.detokenize(self.quantizer.nearest(z))
