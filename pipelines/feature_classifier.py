"""The small classifier whose features stand in for Inception's when scoring samples.

Inception weights cannot be downloaded on every machine, and they know nothing of 28x28 digits
anyway; a CNN trained on the dataset itself gives a feature space in which Fréchet distance and
precision/recall separate good samples from bad, and its predictions judge class-conditional samples.
Trained once per dataset (`benchmarks/feature_classifier.py`), saved with safetensors beside a
`config.json` that records its test accuracy.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vqgen.atomic_io import atomic_path, atomic_write_text
from vqgen.data import class_names, image_tensors, load_image_dataset

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass
class FeatureClassifierConfig:
    image_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    feature_dim: int = 128
    dataset: str | None = None
    test_accuracy: float | None = None


class FeatureClassifier(nn.Module):
    """`b c h w` in [0, 1] -> `b num_classes` logits; `embed` gives the `b feature_dim` penultimate layer."""

    def __init__(self, config: FeatureClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or FeatureClassifierConfig()
        c = self.config
        self.body = nn.Sequential(
            nn.Conv2d(c.image_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(64 * 7 * 7, c.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Features `n feature_dim` and predicted classes `n` of `n c h w` images, in batches."""
        c = self.config
        if images.ndim != 4 or tuple(images.shape[1:]) != (c.image_channels, c.image_size, c.image_size):
            raise ValueError(f"the feature classifier takes images of shape (n, {c.image_channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(images.shape)}: was it trained on another dataset?")
        self.eval()
        device = next(self.parameters()).device
        feats, preds = [], []
        for i in range(0, len(images), batch_size):
            f = self.body(images[i : i + batch_size].to(device, torch.float32))
            feats.append(f.cpu())
            preds.append(self.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, tmp)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(asdict(self.config), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> FeatureClassifier:
        folder = Path(folder)
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"no feature classifier in {folder} ({WEIGHTS_NAME} missing): train one with "
                f"`python benchmarks/feature_classifier.py --dataset SPEC --out {folder}`")
        config = FeatureClassifierConfig(**json.loads((folder / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return model.eval()


def train_feature_classifier(spec: str, *, epochs: int = 2, batch_size: int = 128, seed: int = 0) -> FeatureClassifier:
    """Train on the dataset's train split; the config records the test-split accuracy."""
    torch.manual_seed(seed)
    names = class_names(load_image_dataset(spec, "train", max_samples=1))
    if names is None:
        raise ValueError(f"{spec!r} has no labels; the feature classifier needs a labelled dataset")
    train_x, train_y = image_tensors(spec, "train")
    test_x, test_y = image_tensors(spec, "test")
    model = FeatureClassifier(FeatureClassifierConfig(image_channels=train_x.shape[1], image_size=train_x.shape[2],
                                                      num_classes=len(names), dataset=spec))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_x))
        for i in tqdm(range(0, len(order), batch_size), desc=f"feature classifier, epoch {epoch + 1}/{epochs}"):
            idx = order[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    _, predictions = model.embed(test_x)
    model.config.test_accuracy = round((predictions == test_y).float().mean().item(), 4)
    return model
