"""Stage-2 benchmark on full MNIST: encode and training throughput, held-out bits per pixel-dimension
after a wall-clock budget, and sampling throughput with the key/value cache against without it.

    python benchmarks/stage2_mnist.py --tokenizer runs/bench/vqvae --data ../shared/data/mnist --minutes 20 \
        --out benchmarks/results/stage2_mnist.json

`--tokenizer` is the default VQ-VAE trained by benchmarks/stage1_mnist.py (`--keep DIR` keeps it in
DIR/vqvae). Prints one JSON object; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from stage1_tokenizer import VQVAE  # noqa: E402
from stage2_prior import encode_dataset, load_prior, sample_codes  # noqa: E402
from stage2_prior.train import main as train  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def sampling_tokens_per_second(prior: torch.nn.Module, batch: int, use_cache: bool, repeats: int = 2) -> float:
    labels = torch.arange(batch) % 10
    sample_codes(prior, 2, class_labels=labels[:2], use_cache=use_cache)  # warm-up
    start = time.perf_counter()
    for i in range(repeats):
        codes = sample_codes(prior, batch, class_labels=labels, use_cache=use_cache,
                             generator=torch.Generator().manual_seed(i))
    return repeats * codes.numel() / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="folder of the stage-1 benchmark's VQ-VAE")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with the MNIST IDX files")
    p.add_argument("--minutes", type=float, default=20.0, help="prior training budget")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--sample_batch", type=int, default=64)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--keep", default=None, help="keep the trained prior in this folder")
    args = p.parse_args()

    tokenizer = VQVAE.from_pretrained(args.tokenizer)
    results: dict = {
        **header("stage2_mnist"),
        "tokenizer": args.tokenizer,
        "dataset": args.data,
        "budget_minutes": args.minutes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        codes = encode_dataset(tokenizer, args.data, "train", cache_dir=Path(tmp) / "cache")
        results["encode_images_per_second"] = round(len(codes) / (time.perf_counter() - start), 1)
        encode_dataset(tokenizer, args.data, "test", cache_dir=Path(tmp) / "cache")

        out = Path(args.keep) if args.keep else Path(tmp) / "prior"
        # steps sized so the cosine schedule ends near the budget; --max_train_minutes is the hard stop
        probe = train(["--tokenizer", args.tokenizer, "--dataset", args.data, "--output_dir", str(Path(tmp) / "probe"),
                       "--cache_dir", str(Path(tmp) / "cache"), "--max_steps", "30", "--eval_steps", "1000000",
                       "--sample_steps", "0", "--checkpointing_steps", "0", "--max_eval_samples", "256",
                       "--batch_size", str(args.batch_size)])
        per_step = probe["train_seconds"] / 30
        steps = max(100, int(args.minutes * 60 * 0.95 / per_step))
        summary = train(["--tokenizer", args.tokenizer, "--dataset", args.data, "--output_dir", str(out),
                         "--cache_dir", str(Path(tmp) / "cache"), "--max_steps", str(steps), "--eval_steps", str(steps),
                         "--sample_steps", "0", "--checkpointing_steps", "0", "--batch_size", str(args.batch_size),
                         "--warmup_steps", str(min(200, steps // 10)), "--max_train_minutes", str(args.minutes)])
        results["training"] = summary
        prior = load_prior(out)
        with_cache = sampling_tokens_per_second(prior, args.sample_batch, use_cache=True)
        without = sampling_tokens_per_second(prior, args.sample_batch, use_cache=False, repeats=1)
        results["sampling"] = {"batch": args.sample_batch, "tokens_per_second_kv_cache": round(with_cache, 1),
                               "tokens_per_second_no_cache": round(without, 1),
                               "speedup": round(with_cache / without, 2)}
    emit(results, args.out)


if __name__ == "__main__":
    main()
