"""Config dataclasses of the stage-1 models; each serialises to `config.json`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vqgen.fields import field_default, option

from .architectures import ARCHITECTURES
from .quantizers import QUANTIZERS, VectorQuantizerConfig, quantizer_config


# vqgen 0.1's only network: what a config.json without `architecture` means.
DEFAULT_ARCHITECTURE = "conv"
# Every registered network's own options, mixed into the shared config (their fields come first).
NETWORK_OPTIONS = tuple(network.options for network in ARCHITECTURES.values() if network.options is not None)


@dataclass
class AutoencoderConfig(*NETWORK_OPTIONS):
    """The encoder/decoder and image geometry every stage-1 model shares, and each network's own options."""

    image_size: int = option(28, "side of the (square) images")
    image_channels: int = option(1, "1 (grey) or 3 (RGB)")
    channels: int = option(64, "conv channels of encoder and decoder")
    num_downsamples: int = option(2, "stride-2 stages: latent side = image side / 2**n")
    num_res_blocks: int = option(2, "residual blocks in encoder and in decoder")
    class_names: list[str] | None = option(None, "the dataset's class names")
    architecture: str = option(DEFAULT_ARCHITECTURE, "; ".join(f"{name}: {network.description}"
                                                               for name, network in ARCHITECTURES.items()),
                               choices=lambda: sorted(ARCHITECTURES))

    def __post_init__(self) -> None:
        factor = 2**self.num_downsamples
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**num_downsamples = {factor}; "
                f"choose num_downsamples so that it divides, or resize the images."
            )
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}")
        # Lists, whatever sequence was passed, so a config equals itself after a JSON round trip.
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), tuple):
                setattr(self, f.name, list(getattr(self, f.name)))
        for name, network in ARCHITECTURES.items():
            if network.options is None:
                continue
            if name == self.architecture:
                network.options.validate(self)
            elif changed := [f.name for f in dataclasses.fields(network.options)
                             if getattr(self, f.name) != field_default(f)]:
                raise ValueError(f"{changed} apply to architecture {name!r}; the {self.architecture} network "
                                 "would ignore them")

    def to_dict(self) -> dict[str, Any]:
        """The fields config.json holds: all of them, less the options of the networks this config does not use,
        and `architecture` itself when it is the default. vqgen 0.1 refuses unknown fields: so what it
        wrote and what it can read stay the same files."""
        data = dataclasses.asdict(self)
        for name, network in ARCHITECTURES.items():
            if name != self.architecture and network.options is not None:
                for f in dataclasses.fields(network.options):
                    del data[f.name]
        if self.architecture == DEFAULT_ARCHITECTURE:
            del data["architecture"]
        return data

    @property
    def latent_size(self) -> int:
        """Side of the latent grid: `image_size / 2**num_downsamples`."""
        return self.image_size // 2**self.num_downsamples


@dataclass
class VQVAEConfig(AutoencoderConfig):
    """The encoder's `code_dim` latent channels go through the quantiser that `quantizer.type` names."""

    code_dim: int = option(64, "latent channels the encoder hands to the quantiser")
    quantizer: Any = field(default_factory=VectorQuantizerConfig)

    format_version: ClassVar[int] = 2  # 2: the quantiser's settings moved into the `quantizer` sub-config

    def __post_init__(self) -> None:
        super().__post_init__()
        self.quantizer = quantizer_config(self.quantizer)
        if getattr(self.quantizer, "type", None) not in QUANTIZERS:
            raise ValueError(f"quantizer must be a config of one of {sorted(QUANTIZERS)}, got {self.quantizer!r}")

    @property
    def codebook_size(self) -> int:
        """Number of codes K, whichever quantiser (a property of the quantiser, read from its config)."""
        return self.quantizer.codebook_size

    @staticmethod
    def upgrade(data: dict[str, Any], format_version: int) -> dict[str, Any]:
        """config.json fields of an older format -> this one. Version 1 kept the VQ settings at top level."""
        if format_version < 2 and "quantizer" not in data:
            names = ("codebook_size", "beta", "ema_decay", "dead_code_threshold", "codebook_init", "l2_normalize")
            data = dict(data)
            data["quantizer"] = {"type": "vq", **{k: data.pop(k) for k in names if k in data}}
        return data


@dataclass
class VAEConfig(AutoencoderConfig):
    latent: Literal["flat", "grid"] = option("flat", "latent as a vector or a spatial grid")
    latent_dim: int = option(32, "size of z (flat) or its channels (grid)")
    kl_weight: float = option(1.0, "beta of the beta-VAE")
    likelihood: Literal["bernoulli", "gaussian"] = option("bernoulli", "p(x|z)")
    gaussian_std: float = option(0.1, "fixed std of the Gaussian likelihood")
    binarized: bool = option(False, "trained on dynamically binarised images (train.py --binarize)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent not in ("flat", "grid"):
            raise ValueError(f"latent must be 'flat' or 'grid', got {self.latent!r}")
        if self.likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {self.likelihood!r}")


@dataclass
class CVAEConfig(VAEConfig):
    num_classes: int = option(10, "number of classes")
    label_embed_dim: int = option(16, "size of the label embedding beside z")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for num_classes={self.num_classes}")
