"""Config dataclasses of the stage-1 models; each serialises to `config.json`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class AutoencoderConfig:
    """The encoder/decoder and image geometry every stage-1 model shares."""

    image_size: int = 28
    image_channels: int = 1
    channels: int = 64
    num_downsamples: int = 2
    num_res_blocks: int = 2
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        factor = 2**self.num_downsamples
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**num_downsamples = {factor}; "
                f"choose num_downsamples so that it divides, or resize the images."
            )
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid: `image_size / 2**num_downsamples`."""
        return self.image_size // 2**self.num_downsamples


@dataclass
class VQVAEConfig(AutoencoderConfig):
    codebook_size: int = 512
    code_dim: int = 64
    beta: float = 0.25
    ema_decay: float | None = 0.99
    dead_code_threshold: float = 1.0
    codebook_init: Literal["kmeans", "data", "random"] = "kmeans"
    l2_normalize: bool = False


@dataclass
class VAEConfig(AutoencoderConfig):
    latent: Literal["flat", "grid"] = "flat"
    latent_dim: int = 32  # flat: size of z; grid: channels of z on the latent_size x latent_size grid
    kl_weight: float = 1.0  # beta of the beta-VAE
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    gaussian_std: float = 0.1  # fixed std of the Gaussian likelihood
    binarized: bool = False  # trained on dynamically binarised images (train.py --binarize)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent not in ("flat", "grid"):
            raise ValueError(f"latent must be 'flat' or 'grid', got {self.latent!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")


@dataclass
class CVAEConfig(VAEConfig):
    num_classes: int = 10
    label_embed_dim: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes={self.num_classes}")
