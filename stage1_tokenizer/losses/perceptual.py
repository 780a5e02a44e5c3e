"""`lpips`: the LPIPS perceptual distance (Zhang et al. 2018, VGG16 variant, version 0.1) as a loss term.

The same numbers as the reference `lpips` package for the same weights: images scaled to [-1, 1]
and shifted/scaled per channel by its fixed constants, VGG16's activations at relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3, each unit-normalised over channels, squared differences weighted per
channel by the published linear heads, averaged over space and summed over the five layers.

The network is frozen and not trained: its weights are non-persistent buffers, so they are no
parameter of any optimizer and enter no `model.safetensors`, checkpoint or auxiliary module; it has
no dropout or batch statistics, so it computes the same thing in training and evaluation (the
reference turns its heads' dropout off in eval mode; here there is none to turn off).

Weights (both needed; vqgen never downloads them and never runs with random ones):
- the VGG16 backbone: `--lpips_weights FILE`, a torchvision `vgg16` state dict (the `features.N.weight`
  / `features.N.bias` names; `classifier.*` is ignored) as `.safetensors` or as a torch file read with
  `torch.load(weights_only=True)`; without the flag, torchvision's own cached download
  (`TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`) when it is there;
- the linear heads: `lin0.model.1.weight` ... `lin4.model.1.weight` (the reference's names) in the same
  file, or else the `weights/v0.1/vgg.pth` that ships inside the `lpips` wheel, found without importing
  the package (whose import needs torchvision): `pip install --no-deps lpips==0.1.4` is enough.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqgen.fields import option

from ..outputs import AutoencoderOutput
from .base import LossConfigurationError, LossTerms, TrainingLoss

# torchvision's `vgg16().features` index of each convolution, per block; a 2x2 max-pool comes before
# every block but the first, and LPIPS reads the ReLU after each block's last convolution.
VGG16_BLOCKS: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((0, 3, 64), (2, 64, 64)),
    ((5, 64, 128), (7, 128, 128)),
    ((10, 128, 256), (12, 256, 256), (14, 256, 256)),
    ((17, 256, 512), (19, 512, 512), (21, 512, 512)),
    ((24, 512, 512), (26, 512, 512), (28, 512, 512)),
)
HEAD_KEYS = tuple(f"lin{k}.model.1.weight" for k in range(len(VGG16_BLOCKS)))
# the file name torchvision gives VGG16_Weights.IMAGENET1K_V1 in its download cache
TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
# The smallest side that leaves relu5_3 (after four 2x2 max-pools) at least one pixel.
MIN_IMAGE_SIZE = 16


@dataclass
class LPIPSOptions:
    lpips_weights: str | None = option(None, "VGG16 backbone for --extra_losses lpips: a torchvision vgg16 state dict "
                                             "(.safetensors, or a torch file loaded with weights_only=True), "
                                             "optionally with LPIPS's linear heads (lin0..lin4); default: "
                                             f"torchvision's cached {TORCHVISION_VGG16_FILE} if present")
    lpips_weight: float = option(1.0, "weight of the LPIPS term in the tokenizer's loss")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file or a torch file, never unpickling code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LossConfigurationError(f"{path} holds more than tensors, and vqgen never unpickles code "
                                f"({str(e).splitlines()[0]}); save it as a plain state dict or safetensors") from e
    if not isinstance(state, dict):
        raise LossConfigurationError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def lpips_package_heads() -> Path | None:
    """The published VGG heads inside an installed `lpips` wheel, located without importing it."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"
    return path if path.is_file() else None


def torchvision_cached_vgg16() -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG16_FILE
    return path if path.is_file() else None


class LPIPS(nn.Module):
    """`LPIPS()(x, y)`: the per-image distance `b` between two `b c h w` batches in [0, 1] (c = 1 or 3)."""

    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        """`weights`: torchvision's `features.N.weight/bias` for every VGG16 convolution and the heads `HEAD_KEYS`."""
        super().__init__()
        expected = {f"features.{i}.weight": (c_out, c_in, 3, 3) for block in VGG16_BLOCKS for i, c_in, c_out in block}
        expected |= {f"features.{i}.bias": (c_out,) for block in VGG16_BLOCKS for i, _, c_out in block}
        expected |= {key: (1, block[-1][2], 1, 1) for key, block in zip(HEAD_KEYS, VGG16_BLOCKS)}
        missing = sorted(k for k in expected if k not in weights)
        if missing:
            raise LossConfigurationError(f"LPIPS weights lack {len(missing)} tensor(s), e.g. {missing[:3]}")
        wrong = [f"{k}: {tuple(weights[k].shape)}, not {shape}" for k, shape in expected.items()
                 if tuple(weights[k].shape) != shape]
        if wrong:
            raise LossConfigurationError(f"LPIPS weights of the wrong shape: {'; '.join(wrong[:3])}")
        # Non-persistent buffers: moved with the module, never optimised, never saved (see the module docstring).
        for key in expected:
            self.register_buffer(key.replace(".", "_"), weights[key].detach().float().clone(), persistent=False)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised activations of `x` (already shifted and scaled)."""
        taps = []
        for n, block in enumerate(VGG16_BLOCKS):
            if n:
                x = F.max_pool2d(x, 2, 2)
            for i, _, _ in block:
                x = F.relu(F.conv2d(x, getattr(self, f"features_{i}_weight"), getattr(self, f"features_{i}_bias"),
                                    padding=1))
            # normalised in float32: under bf16 autocast the sum of squares would lose the small channels
            f = x.float()
            taps.append(f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grey images as RGB, the input VGG16 knows
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        x, y = ((2 * t - 1 - self.shift) / self.scale for t in (x, y))
        total = 0
        for k, (fx, fy) in enumerate(zip(self.features(x), self.features(y))):
            total = total + F.conv2d((fx - fy).pow(2), getattr(self, f"lin{k}_model_1_weight")).mean(dim=(2, 3))
        return total.flatten()

    @classmethod
    def from_file(cls, path: str | Path | None) -> LPIPS:
        """Weights from `path` (else torchvision's cache), heads from there or from the `lpips` wheel."""
        how = (f"Give --lpips_weights FILE, a torchvision vgg16 state dict such as the {TORCHVISION_VGG16_FILE} "
               "that torchvision.models.vgg16(weights='IMAGENET1K_V1') downloads on a machine with network access, "
               f"or put that file in {Path(torch.hub.get_dir()) / 'checkpoints'}, where vqgen looks without the "
               "flag; or drop lpips from --extra_losses.")
        if path is None:
            path = torchvision_cached_vgg16()
            if path is None:
                raise LossConfigurationError(f"LPIPS needs VGG16 weights, which vqgen does not download. {how}")
        path = Path(path)
        if not path.is_file():
            raise LossConfigurationError(f"--lpips_weights {path}: no such file. {how}")
        weights = read_state_dict(path)
        # the file's own shortcomings first: whether the heads can be found elsewhere is a later question
        backbone = [f"features.{i}.{kind}" for block in VGG16_BLOCKS for i, _, _ in block for kind in ("weight", "bias")]
        missing = [key for key in backbone if key not in weights]
        if missing:
            raise LossConfigurationError(f"{path} is not a torchvision vgg16 state dict: it lacks {len(missing)} "
                                         f"tensor(s), e.g. {missing[:3]}. {how}")
        if not all(key in weights for key in HEAD_KEYS):
            heads = lpips_package_heads()
            if heads is None:
                raise LossConfigurationError(
                    f"{path} has no LPIPS linear heads (lin0..lin4) and the lpips package is not installed: "
                    "`pip install --no-deps lpips==0.1.4` (vqgen needs only the heads inside its wheel, not "
                    "its torchvision), or add the heads to the weights file.")
            weights = {**weights, **read_state_dict(heads)}
        return cls(weights)


class LPIPSLoss(TrainingLoss):
    """`lpips_weight` times the batch mean of LPIPS(reconstruction, image).

    It judges `output.reconstruction`, the image in [0, 1] that every model shows (the VAE's `decoded`
    are Bernoulli logits, not images).
    """

    name = "lpips"
    config_class = LPIPSOptions

    def __init__(self, network: LPIPS, weight: float) -> None:
        super().__init__()
        self.network, self.weight = network, weight

    @classmethod
    def from_model(cls, model: nn.Module, config: Any) -> LPIPSLoss:
        if model.config.image_size < MIN_IMAGE_SIZE:
            raise LossConfigurationError(f"LPIPS needs images of at least {MIN_IMAGE_SIZE} pixels a side (VGG16 pools "
                                    f"them four times); these are {model.config.image_size}")
        return cls(LPIPS.from_file(config.lpips_weights), config.lpips_weight)

    def forward(self, output: AutoencoderOutput, images: torch.Tensor, step: int) -> LossTerms:
        distance = self.network(output.reconstruction, images).mean()
        return LossTerms(self.weight * distance, {"lpips": distance})
