"""Train the feature classifier of a dataset once (the feature space of `pipelines.evaluate`).

    python benchmarks/feature_classifier.py --dataset ../shared/data/mnist --out runs/classifier/mnist

Writes `model.safetensors` and `config.json` (with the test accuracy) into `--out` and prints one
JSON object. Pass the folder to `python -m pipelines.evaluate --classifier`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from pipelines.feature_classifier import train_feature_classifier  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DEFAULT_DATA), help="any labelled dataset spec (IDX folder, imagefolder, ...)")
    p.add_argument("--out", default="runs/classifier/mnist", help="folder for model.safetensors and config.json")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.time()
    model = train_feature_classifier(args.dataset, epochs=args.epochs, seed=args.seed)
    model.save(args.out)
    results = {**header("feature_classifier"), "dataset": args.dataset, "epochs": args.epochs,
               "train_seconds": round(time.time() - start, 1), "test_accuracy": model.config.test_accuracy}
    emit(results, None)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
