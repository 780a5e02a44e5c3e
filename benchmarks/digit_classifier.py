"""A small CNN judge for generated digits: trained once on MNIST, saved with safetensors.

    python benchmarks/digit_classifier.py --data ../shared/data/mnist --out runs/classifier_mnist

Used by the pipeline benchmark to score class-conditional samples (does the classifier agree with
the requested class?). Prints one JSON object with its test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from stage1_tokenizer.data import load_image_dataset  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


class DigitClassifier(nn.Module):
    """`b 1 28 28` in [0, 1] -> `b 10` logits; `features` is the 128-d penultimate layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @classmethod
    def load(cls, folder: str | Path) -> DigitClassifier:
        model = cls()
        model.load_state_dict(load_file(Path(folder) / "model.safetensors"))
        return model.eval()


def as_tensors(spec: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    columns = load_image_dataset(spec, split).with_format("torch")[:]
    return columns["image"].float() / 255, columns["label"]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    predictions = torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])
    return (predictions == labels).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="MNIST IDX folder (or any labelled dataset spec)")
    p.add_argument("--out", default="runs/classifier_mnist", help="folder for model.safetensors and metrics.json")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    train_x, train_y = as_tensors(args.data, "train")
    test_x, test_y = as_tensors(args.data, "test")
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for _ in range(args.epochs):
        order = torch.randperm(len(train_x))
        for i in tqdm(range(0, len(order), 128), desc="train classifier"):
            idx = order[i : i + 128]
            loss = nn.functional.cross_entropy(model(train_x[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out / "model.safetensors")
    results = {**header("digit_classifier"), "dataset": args.data, "epochs": args.epochs,
               "train_seconds": round(time.time() - start, 1), "test_accuracy": accuracy(model, test_x, test_y)}
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    emit(results, None)


if __name__ == "__main__":
    main()
