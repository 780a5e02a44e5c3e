"""VQ-VAE: the shared encoder/decoder with a vector quantiser between them."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .configs import VQVAEConfig
from .networks import Decoder, Encoder
from .outputs import AutoencoderOutput
from vqgen.pretrained import PretrainedModel
from .quantizer import VectorQuantizer
from vqgen.validation import check_images


class VQVAE(PretrainedModel):
    """Image `b c H W` in [0, 1] <-> codes `b h w` in [0, codebook_size), h = H / 2**num_downsamples.

    >>> model = VQVAE(codebook_size=512)          # or VQVAE(VQVAEConfig(...))
    >>> codes = model.tokenize(images)            # b 7 7 for 28x28 images
    >>> images = model.detokenize(codes)
    """

    model_type = "vqvae"
    config_class = VQVAEConfig

    def __init__(self, config: VQVAEConfig | None = None, **kwargs: Any) -> None:
        config = config or VQVAEConfig(**kwargs)
        super().__init__(config)
        common = dict(channels=config.channels, num_res_blocks=config.num_res_blocks)
        self.encoder = Encoder(config.image_channels, config.code_dim, num_downsamples=config.num_downsamples, **common)
        self.quantizer = VectorQuantizer(
            config.codebook_size,
            config.code_dim,
            beta=config.beta,
            ema_decay=config.ema_decay,
            dead_code_threshold=config.dead_code_threshold,
            init=config.codebook_init,
            l2_normalize=config.l2_normalize,
        )
        self.decoder = Decoder(config.code_dim, config.image_channels, num_upsamples=config.num_downsamples, **common)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return (self.config.latent_size, self.config.latent_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents: `b c H W -> b d h w`."""
        check_images(images, self.config)
        return self.encoder(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> AutoencoderOutput:
        """`labels` is accepted and ignored, so one training loop serves every stage-1 model."""
        z = self.encode(images)
        q = self.quantizer(z)
        decoded = self.decoder(q.quantized)
        reconstruction_loss = F.mse_loss(decoded, images)
        loss = reconstruction_loss + q.commitment_loss
        if self.quantizer.ema_decay is None:
            loss = loss + q.codebook_loss
        return AutoencoderOutput(
            loss=loss,
            reconstruction=decoded.clamp(0, 1),
            reconstruction_loss=reconstruction_loss,
            codebook_loss=q.codebook_loss,
            commitment_loss=q.commitment_loss,
            codes=q.codes,
            code_counts=q.counts,
        )

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
        return self.decoder(self.quantizer.lookup(codes.to(self.quantizer.codebook.device))).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """detokenize(tokenize(images)); `labels` is ignored (same signature as the VAE family)."""
        return self.detokenize(self.tokenize(images))
