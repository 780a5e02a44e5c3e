"""The field's own sample metrics: Inception FID, IS and KID, and rFID for tokenizers.

The network is torch-fidelity's `FeatureExtractorInceptionV3` (the TensorFlow FID Inception, with its
TF1-compatible resize to 299x299), run once per image for all three metrics; the statistics are
torchmetrics' `FrechetInceptionDistance`, `InceptionScore` and `KernelInceptionDistance` fed the
features it gives. Images go in as uint8 (rounded, as `pipelines.sample` writes them); grey images
are repeated to three channels, as the reference suites do for MNIST.

Weights are never downloaded here (an offline machine would hang, and random weights would give
meaningless numbers): they come from `--inception_weights PATH` or from torch's hub cache, where
torch-fidelity, torchmetrics and pytorch-fid keep the same file; otherwise a clear error says how
to get it. The file is read with `torch.load(weights_only=True)` first, so a pickle that is not a
plain state dict is refused before torch-fidelity loads it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

# torch-fidelity's release asset; pytorch-fid publishes the same weights (same sha256 prefix) under another name.
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
POOL_DIM, LOGITS_DIM = 2048, 1008
# The field's defaults: IS over 10 splits; KID over 100 subsets of (at most) 1,000 images.
IS_SPLITS, KID_SUBSETS, KID_SUBSET_SIZE = 10, 100, 1000


class InceptionWeightsMissing(FileNotFoundError):
    """No Inception weights on this machine, and they are never downloaded behind the user's back."""


def _install_hint() -> str:
    return ('install torch-fidelity (`pip install "vqgen[inception]"`), which imports torchvision: it must be the '
            'build of your torch (for a CPU torch, `pip install torchvision --index-url '
            'https://download.pytorch.org/whl/cpu`; a CUDA torchvision beside a CPU torch fails to import)')


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file to use: `path`, or the copy in torch's hub cache. Raises `InceptionWeightsMissing`."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InceptionWeightsMissing(f"--inception_weights {path}: no such file. {_how_to_get_weights()}")
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in WEIGHTS_FILES:
        if (cache / name).is_file():
            return cache / name
    raise InceptionWeightsMissing(f"no Inception weights in torch's hub cache ({cache}). {_how_to_get_weights()}")


def _how_to_get_weights() -> str:
    return (f"Download {WEIGHTS_URL} on a machine with network access (95 MB; pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth is the same file) and pass it with --inception_weights PATH, "
            f"or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}. Without Inception weights, score in the "
            "feature classifier's space instead (--classifier).")


class InceptionFeatures(nn.Module):
    """`b c h w` float images in [0, 1] (c = 1 or 3) -> pool features `b 2048` and unbiased logits `b 1008`."""

    def __init__(self, weights: str | os.PathLike) -> None:
        super().__init__()
        weights = Path(weights)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{weights} is not a PyTorch state dict of Inception weights ({e}). "
                             f"{_how_to_get_weights()}") from None
        missing = {"Conv2d_1a_3x3.conv.weight", "fc.weight"} - set(state) if isinstance(state, dict) else {"(a dict)"}
        if missing:
            raise ValueError(f"{weights} is not torch-fidelity's Inception state dict (missing {sorted(missing)}). "
                             f"{_how_to_get_weights()}")
        del state  # torch-fidelity reads the file itself
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except Exception as e:  # ImportError, or a torchvision built for another torch
            raise ImportError(f"the Inception metrics need torch-fidelity, which failed to import ({e}): "
                              f"{_install_hint()}") from e
        # The file was just checked to be a plain state dict, so torch-fidelity's own (pickle) load of it is safe.
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(weights))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception takes `b c h w` images with 1 or 3 channels, got {tuple(images.shape)}")
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        pool, logits = self.net(pixels.expand(-1, 3, -1, -1))
        return pool.double(), logits.double()


class _Given(nn.Module):
    """The feature "network" of a torchmetrics metric that is handed features already computed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class InceptionMetrics:
    """FID, IS and KID of generated images against real ones, and rFID of reconstructions, batch by batch.

    FID keeps running float64 sums (torchmetrics); IS and KID keep each image's features (1008 and 2048
    floats), as their estimators need them.
    """

    def __init__(self, weights: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        self.features = InceptionFeatures(weights).to(device)
        self.device = torch.device(device)
        self.fid = FrechetInceptionDistance(feature=_Given(POOL_DIM))
        self.rfid = FrechetInceptionDistance(feature=_Given(POOL_DIM))
        with warnings.catch_warnings():  # "will save all extracted features": known, and said in this class's docstring
            warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
            self.inception_score = InceptionScore(feature=_Given(LOGITS_DIM), splits=IS_SPLITS)
            self.kid = KernelInceptionDistance(feature=_Given(POOL_DIM), subsets=KID_SUBSETS,
                                               subset_size=KID_SUBSET_SIZE)
        self.counts = {"real": 0, "reconstructions": 0, "samples": 0}

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.features(images.to(self.device))
        return pool.cpu(), logits.cpu()

    def add_real(self, images: torch.Tensor, reconstructions: torch.Tensor | None = None) -> None:
        """Real `b c h w` images (the reference of FID, KID and rFID) and, for a tokenizer, their reconstructions."""
        pool, _ = self._embed(images)
        self.fid.update(pool, real=True)
        self.rfid.update(pool, real=True)
        self.kid.update(pool, real=True)
        self.counts["real"] += len(images)
        if reconstructions is not None:
            self.rfid.update(self._embed(reconstructions)[0], real=False)
            self.counts["reconstructions"] += len(reconstructions)

    def add_samples(self, images: torch.Tensor) -> None:
        """Generated `b c h w` images."""
        pool, logits = self._embed(images)
        self.fid.update(pool, real=False)
        self.kid.update(pool, real=False)
        self.inception_score.update(logits)
        self.counts["samples"] += len(images)

    def reconstruction_fid(self) -> float:
        return _distance(self.rfid)

    def sample_metrics(self, seed: int = 0) -> dict[str, float | int]:
        """FID, IS (mean and std over splits) and KID (mean and std over subsets) of the samples."""
        n_real, n_fake = self.counts["real"], self.counts["samples"]
        self.kid.subset_size = min(KID_SUBSET_SIZE, n_real, n_fake)
        # IS and KID draw random splits and subsets from the global generator: fix it, and leave the caller's alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            is_mean, is_std = self.inception_score.compute()
            kid_mean, kid_std = self.kid.compute()
        return {"fid": _distance(self.fid), "inception_score": is_mean.item(),
                "inception_score_std": is_std.item(), "is_splits": IS_SPLITS, "kid": kid_mean.item(),
                "kid_std": kid_std.item(), "kid_subsets": KID_SUBSETS, "kid_subset_size": self.kid.subset_size,
                "real_images": n_real, "samples": n_fake}


def _distance(fid: FrechetInceptionDistance) -> float:
    """A Fréchet distance is never negative: torchmetrics' can be by round-off (-1e-6 for identical sets)."""
    return max(fid.compute().item(), 0.0)
