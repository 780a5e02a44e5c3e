"""The small classifier whose features stand in for Inception's when scoring samples.

Inception weights cannot be downloaded on every machine, and they know nothing of 28x28 digits
anyway; a CNN trained on the dataset itself gives a feature space in which Fréchet distance and
precision/recall separate good samples from bad, and its predictions judge class-conditional samples.
Trained once per dataset by the installed command (`vqgen-feature-classifier --dataset SPEC --out DIR`),
saved with safetensors beside a `config.json` that records its test accuracy.

Training streams the split: one pass writes its images as uint8 into a memory-mapped scratch file
(`c h w` bytes per image on disk, not in memory), from which every epoch reads uniformly shuffled
batches; the test accuracy is counted batch by batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vqgen.atomic_io import atomic_path, atomic_write_text
from vqgen.data import class_names, image_batches, load_image_dataset

COMMAND = "vqgen-feature-classifier"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass
class FeatureClassifierConfig:
    image_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    feature_dim: int = 128
    dataset: str | None = None
    test_accuracy: float | None = None
    # channels of the first conv (the second has twice as many); 32 is the digit model of vqgen 0.2
    width: int = 32


class FeatureClassifier(nn.Module):
    """`b c h w` in [0, 1] -> `b num_classes` logits; `embed` gives the `b feature_dim` penultimate layer."""

    def __init__(self, config: FeatureClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or FeatureClassifierConfig()
        c = self.config
        self.body = nn.Sequential(
            nn.Conv2d(c.image_channels, c.width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c.width, 2 * c.width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(2 * c.width * 7 * 7, c.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    def check_images(self, images: torch.Tensor) -> None:
        c = self.config
        if images.ndim != 4 or tuple(images.shape[1:]) != (c.image_channels, c.image_size, c.image_size):
            raise ValueError(f"the feature classifier takes images of shape (n, {c.image_channels}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(images.shape)}: was it trained on another dataset?")

    @property
    def description(self) -> str:
        """What a figure in this feature space was measured with: written beside every such figure."""
        accuracy = self.config.test_accuracy
        return (f"penultimate layer of the feature classifier (test accuracy "
                f"{'unknown' if accuracy is None else f'{accuracy:.2%}'} on {self.config.dataset or 'its dataset'})")

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Features `n feature_dim` and predicted classes `n` of `n c h w` images, in batches."""
        self.check_images(images)
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
                f"`{COMMAND} --dataset SPEC --out {folder}`")
        config = FeatureClassifierConfig(**json.loads((folder / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(folder / WEIGHTS_NAME))
        return model.eval()


class _ImageCache:
    """A split decoded once into a uint8 `n c h w` memory map on disk, read back in any order.

    The pages are the file's, so the kernel can drop them: memory does not grow with the split.
    """

    def __init__(self, spec: str, split: str, folder: Path, batch_size: int) -> None:
        path, labels, shape = folder / f"{split}.u8", [], None
        with open(path, "wb") as f:
            for images, y in tqdm(image_batches(spec, split, batch_size=batch_size), desc=f"decode {split}"):
                if y is None:
                    raise ValueError(f"{spec!r} has no labels; the feature classifier needs a labelled dataset")
                f.write((images * 255).round().to(torch.uint8).numpy().tobytes())
                labels.append(y.long())
                shape = tuple(images.shape[1:])
        if shape is None:
            raise ValueError(f"{spec!r} has no images in its {split} split")
        self.labels = torch.cat(labels)
        self.images = np.memmap(path, dtype=np.uint8, mode="r", shape=(len(self.labels), *shape))

    def shuffled(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`b c h w` float images in [0, 1] and `b` labels, in a fresh uniform order."""
        order = torch.randperm(len(self.labels), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size].sort().values  # ascending reads from the file
            yield torch.from_numpy(self.images[idx.numpy()]).float().div_(255), self.labels[idx]


@torch.no_grad()
def classifier_accuracy(model: FeatureClassifier, spec: str, batch_size: int = 500) -> float:
    """Share of `spec`'s test split that `model` classifies correctly, counted batch by batch."""
    correct = total = 0
    for images, labels in image_batches(spec, "test", batch_size=batch_size):
        _, predicted = model.embed(images)
        correct += (predicted == labels).sum().item()
        total += len(labels)
    return correct / total


def train_feature_classifier(spec: str, *, epochs: int = 2, batch_size: int = 128, learning_rate: float = 1e-3,
                             width: int = 32, seed: int = 0, scratch_dir: str | os.PathLike | None = None,
                             ) -> FeatureClassifier:
    """Train on the dataset's train split; the config records the test-split accuracy.

    `scratch_dir` holds the uint8 copy of the train split while training (default: the system's temp folder).
    """
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="vqgen-classifier-") as folder:
        train = _ImageCache(spec, "train", Path(folder), batch_size=max(batch_size, 256))
        names = _class_names(spec, train.labels)
        c, h, w = train.images.shape[1:]
        if h != w:
            raise ValueError(f"{spec!r} holds {h}x{w} images; the feature classifier takes square ones")
        model = FeatureClassifier(FeatureClassifierConfig(image_channels=c, image_size=h, num_classes=len(names),
                                                          width=width, dataset=spec))
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        generator = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            steps = -(-len(train.labels) // batch_size)
            for images, labels in tqdm(train.shuffled(batch_size, generator), total=steps,
                                       desc=f"feature classifier, epoch {epoch + 1}/{epochs}"):
                loss = nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        del train  # release the memory map before its folder goes
    model.config.test_accuracy = round(classifier_accuracy(model, spec), 4)
    return model.eval()


def _class_names(spec: str, labels: torch.Tensor) -> list[str]:
    """The split's class names (from the data layer), or the label ids when it has none."""
    names = class_names(load_image_dataset(spec, "train", max_samples=1))
    return names if names is not None else [str(i) for i in range(int(labels.max()) + 1)]


def main(argv: list[str] | None = None) -> dict:
    """`vqgen-feature-classifier`: train, save, print one JSON object."""
    p = argparse.ArgumentParser(
        prog=COMMAND, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the feature classifier of a labelled dataset once: the feature space in which "
                    "`python -m pipelines.evaluate --classifier DIR` measures Fréchet distance, rFD, "
                    "precision/recall and class accuracy. Writes model.safetensors and config.json (with the "
                    "test accuracy) into --out. CIFAR-10: --dataset ../shared/data/cifar10 --width 64 --epochs 10.")
    p.add_argument("--dataset", required=True, help="any labelled dataset spec (IDX folder, image folder, Hub id, ...)")
    p.add_argument("--out", required=True, help="folder for model.safetensors and config.json")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=32, help="channels of the first conv layer (the second has twice as many)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scratch_dir", default=None,
                   help="where the uint8 copy of the train split lives while training (default: the temp folder)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "width"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        p.error(f"--learning_rate must be positive, got {args.learning_rate}")
    start = time.time()
    model = train_feature_classifier(args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                                     learning_rate=args.learning_rate, width=args.width, seed=args.seed,
                                     scratch_dir=args.scratch_dir)
    model.save(args.out)
    result = {"dataset": args.dataset, "out": str(args.out), "epochs": args.epochs, "width": args.width,
              "train_seconds": round(time.time() - start, 1), "test_accuracy": model.config.test_accuracy}
    print(json.dumps(result, indent=2))
    return result


def command() -> None:
    """The `vqgen-feature-classifier` entry point: a console script exits with what it returns, and `main`'s
    result dict would read as a failure."""
    main(sys.argv[1:])


if __name__ == "__main__":
    command()
