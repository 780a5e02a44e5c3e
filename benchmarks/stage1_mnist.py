"""Stage-1 quality under a fixed wall-clock budget: VQ-VAE, VAE and CVAE on full MNIST.

    python benchmarks/stage1_mnist.py --data ../shared/data/mnist --minutes 10 --out benchmarks/results/stage1_mnist.json

Each model is trained by the real training script (`stage1_tokenizer.train.main`) for as many steps
as fit the budget (measured from a short timing run, so the cosine schedule ends on time) and
evaluated on the full 10,000-image test split. Prints one JSON object; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from stage1_tokenizer.train import main as train  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def seconds_per_step(model: str, data: str, extra: list[str], workdir: Path) -> float:
    """Time a short run (without its start-up and final evaluation) to size the real one."""
    out = workdir / f"timing-{model}"
    summary = train(["--model", model, "--dataset", data, "--output_dir", str(out), "--max_steps", "30",
                     "--eval_steps", "1000000", "--checkpointing_steps", "0", "--max_eval_samples", "256", *extra])
    return summary["train_seconds"] / 30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with the MNIST IDX files")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    p.add_argument("--models", nargs="+", default=["vqvae", "vae", "cvae"], choices=["vqvae", "vae", "cvae"])
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--keep", default=None, help="keep the trained models under this folder")
    args = p.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data} does not exist: pass --data with the folder of MNIST IDX files")

    results: dict = {
        **header("stage1_mnist"),
        "dataset": args.data,
        "budget_minutes": args.minutes,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for model in args.models:
            common = ["--batch_size", str(args.batch_size)]
            per_step = seconds_per_step(model, args.data, common, Path(tmp))
            # ~8% of the budget goes to evaluation and saving; the rest to steps.
            steps = max(50, int(args.minutes * 60 * 0.92 / per_step))
            start = time.time()
            summary = train(["--model", model, "--dataset", args.data, "--output_dir", str(root / model),
                             "--max_steps", str(steps), "--eval_steps", str(steps), "--checkpointing_steps", "0",
                             "--warmup_steps", str(min(200, steps // 10)), "--max_train_minutes", str(args.minutes),
                             *common])
            summary["wall_seconds"] = round(time.time() - start, 1)
            summary["seconds_per_step"] = round(per_step, 4)
            summary["images_per_second"] = round(args.batch_size / per_step, 1)
            results["models"][model] = summary
            print(json.dumps({model: summary}), file=sys.stderr)
    emit(results, args.out)


if __name__ == "__main__":
    main()
