"""What the pipelines issue reports: class-conditional accuracy of samples and anomaly ROC-AUC.

    python benchmarks/digit_classifier.py --out runs/classifier_mnist
    python benchmarks/pipeline_mnist.py --pipelines runs/quickstart/pipeline runs/bench/pipeline \
        --models runs/bench/vae runs/bench/cvae --out benchmarks/results/pipeline_mnist.json

- Class-conditional accuracy: `--num_samples` samples (an equal number per class) from each
  class-conditional model (`--pipelines`, and any CVAE in `--models`), judged by the digit classifier.
- Anomaly detection: every stage-1 model in `--models` (and the pipeline's tokenizer) scores the
  MNIST test split (normal) and the Fashion-MNIST test split (anomalous); ROC-AUC per score.
Prints one JSON object; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from digit_classifier import DigitClassifier, accuracy, as_tensors  # noqa: E402
from report import emit, header  # noqa: E402

from pipelines import generate, load_model  # noqa: E402
from pipelines.latent_tools import anomaly_score, roc_auc  # noqa: E402
from stage1_tokenizer import CVAE, VAE  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def conditional_accuracy(model, judge: DigitClassifier, num_samples: int, **kwargs) -> dict:
    labels = torch.arange(num_samples) % 10
    start = time.perf_counter()
    images = generate(model, num_samples=num_samples, class_labels=labels, seed=0, output_type="pt", **kwargs)
    seconds = time.perf_counter() - start
    return {"accuracy": round(accuracy(judge, images, labels), 4), "images_per_second": round(num_samples / seconds, 1),
            **kwargs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipelines", nargs="*", default=[], help="TwoStagePipeline folders")
    p.add_argument("--classifier", default="runs/classifier_mnist", help="folder of benchmarks/digit_classifier.py")
    p.add_argument("--models", nargs="*", default=[], help="stage-1 model folders (VQ-VAE, VAE, CVAE)")
    p.add_argument("--mnist", default=str(SHARED / "mnist"))
    p.add_argument("--fashion", default=str(SHARED / "fashion_mnist"))
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--out", default=None)
    args = p.parse_args()

    judge = DigitClassifier.load(args.classifier)
    mnist, mnist_labels = as_tensors(args.mnist, "test")
    fashion, _ = as_tensors(args.fashion, "test")
    results: dict = {**header("pipeline_mnist"), "classifier_test_accuracy": round(accuracy(judge, mnist, mnist_labels), 4),
                     "conditional_samples": {}, "anomaly_roc_auc": {}}
    scored = {name: load_model(name) for name in args.models}
    for path in args.pipelines:
        pipe = load_model(path)
        results["conditional_samples"][path] = [
            conditional_accuracy(pipe, judge, args.num_samples, guidance_scale=s) for s in args.guidance_scales]
        scored[f"{path} (tokenizer)"] = pipe.tokenizer
    for name, model in scored.items():
        if isinstance(model, CVAE):
            results["conditional_samples"][name] = [conditional_accuracy(model, judge, args.num_samples)]
        scores = ["reconstruction", "negative_elbo"] if isinstance(model, VAE) else ["reconstruction"]
        for score in scores:
            normal, anomalous = anomaly_score(model, mnist, score=score), anomaly_score(model, fashion, score=score)
            results["anomaly_roc_auc"][f"{name} / {score}"] = round(roc_auc(normal, anomalous), 4)
    emit(results, args.out)


if __name__ == "__main__":
    main()
