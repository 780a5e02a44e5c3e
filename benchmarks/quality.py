"""Every model family side by side, on MNIST and Fashion-MNIST, under the same training budget.

    python benchmarks/quality.py --out benchmarks/results/quality.json

For each dataset: a VQ-VAE and a class-conditional prior over its codes (the two-stage pipeline), a
VAE and a CVAE (dynamically binarised, Bernoulli likelihood, as in the published tables), all with
the same encoder/decoder and the same number of optimizer steps (batch 128 for stage 1, 64 for the
prior, so the two-stage model gets a second training run), plus the feature classifier.
Models already trained under `--workdir` are reused, so an interrupted run picks up where it stopped.
Then each model is scored by `pipelines.evaluate` against the test split (the other dataset is the
anomalous one). Prints one JSON object; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from pipelines import TwoStagePipeline  # noqa: E402
from pipelines.evaluate import evaluate  # noqa: E402
from pipelines.feature_classifier import train_feature_classifier  # noqa: E402
from stage1_tokenizer.train import main as train_stage1  # noqa: E402
from stage2_prior.train import main as train_prior  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"mnist": str(SHARED / "mnist"), "fashion_mnist": str(SHARED / "fashion_mnist")}


def train_all(spec: str, root: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Train what is missing under `root`; returns each model's steps, training seconds and test figures
    as its training run recorded them."""

    seconds: dict[str, float] = {}  # wall time of what this run trained
    budget = ["--dataset", spec, "--max_steps", str(args.steps), "--eval_steps", str(args.steps),
              "--checkpointing_steps", "0", "--warmup_steps", str(args.steps // 10), "--seed", str(args.seed)]
    stage1 = {"vqvae": [], "vae": ["--binarize", "--latent_dim", "50"], "cvae": ["--binarize", "--latent_dim", "50"]}
    for model, extra in stage1.items():
        if not (root / model / "model.safetensors").exists():
            start = time.time()
            train_stage1(["--model", model, "--output_dir", str(root / model), "--batch_size", "128", *budget, *extra])
            seconds[model] = round(time.time() - start, 1)
    if not (root / "pipeline" / "pipeline_config.json").exists():
        start = time.time()
        train_prior(["--tokenizer", str(root / "vqvae"), "--output_dir", str(root / "prior"), "--cache_dir",
                     str(root / "code_cache"), "--batch_size", "64", "--sample_steps", "0", "--num_layers", "4",
                     "--hidden_size", "192", *budget])
        seconds["prior"] = round(time.time() - start, 1)
        TwoStagePipeline.from_parts(root / "vqvae", root / "prior", guidance_scale=1.0).save_pretrained(root / "pipeline")
    if not (root / "classifier" / "model.safetensors").exists():
        start = time.time()
        train_feature_classifier(spec, seed=args.seed).save(root / "classifier")
        seconds["classifier"] = round(time.time() - start, 1)
    runs = {m: json.loads((root / m / "training_summary.json").read_text()) for m in ("vqvae", "vae", "cvae", "prior")}
    runs["classifier"] = json.loads((root / "classifier" / "config.json").read_text())
    for m, wall in seconds.items():
        runs[m]["wall_seconds_this_run"] = wall
    return runs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--workdir", default="runs/quality", help="trained models go to WORKDIR/DATASET/{vqvae,prior,...}")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps of every model (the shared budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_only", action="store_true", help="train what is missing and stop")
    p.add_argument("--samples", type=int, default=2000, help="generated images per model for sample quality")
    p.add_argument("--iwae_k", type=int, default=5000, help="importance samples of the reported likelihood bound")
    p.add_argument("--iwae_images", type=int, default=32,
                   help="test images the k-sample bound is averaged over (5000 x 32 decoder passes: ~4 min on one CPU core)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    for name in args.datasets:
        if not Path(DATASETS[name]).is_dir():
            raise SystemExit(f"{DATASETS[name]} does not exist: this benchmark needs ../shared/data beside the project")

    results: dict = {**header("quality"), "steps": args.steps, "stage1_batch_size": 128, "prior_batch_size": 64,
                     "datasets": {}}
    for name in args.datasets:
        root = Path(args.workdir) / name
        results["datasets"][name] = {"training": train_all(DATASETS[name], root, args)}
    if not args.train_only:
        for name in args.datasets:
            root = Path(args.workdir) / name
            other = next(DATASETS[n] for n in DATASETS if n != name)
            for model in ("pipeline", "vae", "cvae"):
                results["datasets"][name][model] = evaluate(
                    str(root / model), DATASETS[name], classifier=str(root / "classifier"), anomaly_dataset=other,
                    num_samples=args.samples, iwae_k=args.iwae_k, iwae_images=args.iwae_images, seed=args.seed)
    emit(results, args.out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
