"""Config dataclasses of the stage-1 models; each serialises to `config.json`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from vqgen.fields import field_default, option

from .quantizers import QUANTIZERS, VectorQuantizerConfig, quantizer_config


@dataclass
class AutoencoderConfig:
    """The encoder/decoder and image geometry every stage-1 model shares."""

    image_size: int = option(28, "side of the (square) images")
    image_channels: int = option(1, "1 (grey) or 3 (RGB)")
    channels: int = option(64, "conv channels of encoder and decoder")
    num_downsamples: int = option(2, "stride-2 stages: latent side = image side / 2**n")
    num_res_blocks: int = option(2, "residual blocks in encoder and in decoder")
    class_names: list[str] | None = option(None, "the dataset's class names")
    architecture: Literal["conv", "vqgan"] = option(
        "conv", "conv: one width, residual blocks at the latent resolution (vqgen 0.1); vqgan: the taming / "
                "LlamaGen network (channel multipliers, residual blocks at every level, self-attention)")
    channel_multipliers: list[int] = option(
        default_factory=list, help="vqgan: width channels * m of each of the num_downsamples + 1 levels, highest "
                                   "resolution first (none given: channels at every level)")
    attention_resolutions: list[int] = option(
        default_factory=list, help="vqgan: feature-map sides with self-attention after every residual block")
    mid_attention: bool = option(True, "vqgan: self-attention in the middle block (res-attn-res)")
    gradient_checkpointing: bool = option(False, "vqgan: recompute block activations in the backward pass (less "
                                                 "memory, ~1/3 more compute); training only")

    # Unknown to vqgen 0.1, which refuses unknown fields: a conv config.json leaves them out, so what 0.1 wrote
    # and what 0.1 can read stay the same files.
    VQGAN_FIELDS: ClassVar[tuple[str, ...]] = (
        "architecture", "channel_multipliers", "attention_resolutions", "mid_attention", "gradient_checkpointing")

    def __post_init__(self) -> None:
        factor = 2**self.num_downsamples
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**num_downsamples = {factor}; "
                f"choose num_downsamples so that it divides, or resize the images."
            )
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, got {self.image_channels}")
        # Lists, whatever sequence was passed, so a config equals itself after a JSON round trip.
        self.channel_multipliers = list(self.channel_multipliers)
        self.attention_resolutions = list(self.attention_resolutions)
        if self.architecture == "vqgan":
            self._check_vqgan()
        elif self.architecture == "conv":
            changed = [f.name for f in dataclasses.fields(AutoencoderConfig)
                       if f.name in self.VQGAN_FIELDS and getattr(self, f.name) != field_default(f)]
            if changed:
                raise ValueError(f"{changed} apply to architecture 'vqgan'; the conv network would ignore them")
        else:
            raise ValueError(f"architecture must be 'conv' or 'vqgan', got {self.architecture!r}")

    def _check_vqgan(self) -> None:
        levels = self.num_downsamples + 1
        if self.channel_multipliers and len(self.channel_multipliers) != levels:
            raise ValueError(
                f"channel_multipliers {self.channel_multipliers} has {len(self.channel_multipliers)} entries, but "
                f"num_downsamples {self.num_downsamples} makes {levels} levels: give one multiplier per level"
            )
        if any(m < 1 for m in self.channel_multipliers):
            raise ValueError(f"channel_multipliers must be positive, got {self.channel_multipliers}")
        sides = [self.image_size // 2**i for i in range(levels)]
        missing = [r for r in self.attention_resolutions if r not in sides]
        if missing:
            raise ValueError(f"attention_resolutions {missing} are not feature-map sides of this network {sides}")

    @property
    def level_multipliers(self) -> list[int]:
        """vqgan: the width multiplier of each level, highest resolution first (1 everywhere when none given)."""
        return self.channel_multipliers or [1] * (self.num_downsamples + 1)

    def to_dict(self) -> dict[str, Any]:
        """The fields config.json holds: all of them, less the vqgan ones for the conv network (see VQGAN_FIELDS)."""
        data = dataclasses.asdict(self)
        if self.architecture == "conv":
            for name in self.VQGAN_FIELDS:
                del data[name]
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
