"""The whole mission in one command: train a tokenizer, train a prior on its codes, sample.

    python -m pipelines.quickstart --output_dir runs/quickstart

Runs the real training scripts (stage1_tokenizer.train, stage2_prior.train) one after the other on
the embedded 5,000 MNIST digits (offline), assembles a `TwoStagePipeline`, and writes
the tokenizer's `reconstructions.png`, the pipeline's `samples.png` (one row per class) and
`overview.png` (the two side by side). Prints where they are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image

from vqgen.data import DEFAULT_DATASET
from stage1_tokenizer.presets import PRESETS
from stage1_tokenizer.train import main as train_tokenizer
from stage2_prior.train import main as train_prior

from .pipeline import SAMPLES_NAME, TwoStagePipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/quickstart", help="everything goes here")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="any dataset spec (default: the embedded digits)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="the tokenizer's preset (stage1_tokenizer.presets), e.g. cifar10 for 32x32 RGB photos")
    p.add_argument("--tokenizer_share", type=float, default=1 / 3,
                   help="the share of --minutes that the tokenizer trains for (the prior gets the rest)")
    p.add_argument("--tokenizer_steps", type=int, default=400, help="VQ-VAE training steps")
    p.add_argument("--prior_steps", type=int, default=1200, help="prior training steps")
    p.add_argument("--prior_layers", type=int, default=4, help="transformer blocks of the prior")
    p.add_argument("--prior_hidden_size", type=int, default=192, help="width of the prior")
    p.add_argument("--minutes", type=float, default=13.0,
                   help="time limit of the two trainings together (a third for the tokenizer), so the whole run "
                        "stays within 15 minutes on 2 CPU cores")
    p.add_argument("--guidance_scale", type=float, default=2.0, help="classifier-free guidance of the sample grid")
    p.add_argument("--seed", type=int, default=0, help="seed of both trainings and of the samples")
    p.add_argument("--max_train_samples", type=int, default=None, help="train on only the first N images (smoke tests)")
    return p.parse_args(argv)


def side_by_side(left: Path, right: Path, path: Path, gap: int = 16) -> Path:
    with Image.open(left) as a, Image.open(right) as b:
        mode = "L" if a.mode == b.mode == "L" else "RGB"
        canvas = Image.new(mode, (a.width + gap + b.width, max(a.height, b.height)), color="white")
        canvas.paste(a.convert(mode), (0, 0))
        canvas.paste(b.convert(mode), (a.width + gap, 0))
    canvas.save(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    start = time.time()
    common = ["--dataset", args.dataset, "--seed", str(args.seed), "--checkpointing_steps", "0"]
    if args.max_train_samples:
        common += ["--max_train_samples", str(args.max_train_samples)]
    preset = ["--preset", args.preset] if args.preset else []
    stage1 = train_tokenizer([*preset, "--model", "vqvae", "--output_dir", str(out / "tokenizer"), "--max_steps",
                              str(args.tokenizer_steps), "--eval_steps", str(args.tokenizer_steps),
                              "--max_train_minutes", str(args.minutes * args.tokenizer_share), *common])
    stage2 = train_prior(["--tokenizer", str(out / "tokenizer"), "--output_dir", str(out / "prior"),
                          "--cache_dir", str(out / "code_cache"), "--max_steps", str(args.prior_steps),
                          "--eval_steps", str(args.prior_steps), "--sample_steps", "0",
                          "--num_layers", str(args.prior_layers), "--hidden_size", str(args.prior_hidden_size),
                          "--max_train_minutes", str(args.minutes * (1 - args.tokenizer_share)), *common])
    pipe = TwoStagePipeline.from_parts(out / "tokenizer", out / "prior", guidance_scale=args.guidance_scale)
    pipe.config.evaluation = {"tokenizer test PSNR": stage1["test/psnr"],
                              "prior test bits/pixel-dim": stage2["test/bits_per_pixel_dim"]}
    # the pipeline's own card grid: 8 samples per class, one row per class, seed 0
    samples_png = pipe.save_pretrained(out / "pipeline") / SAMPLES_NAME
    reconstructions_png = out / "tokenizer" / "reconstructions.png"
    overview = side_by_side(reconstructions_png, samples_png, out / "overview.png")
    summary = {"tokenizer_test_psnr": stage1["test/psnr"], "codebook_usage": stage1["test/codebook_usage"],
               "prior_test_bits_per_pixel_dim": stage2["test/bits_per_pixel_dim"],
               "minutes": round((time.time() - start) / 60, 1)}
    print(json.dumps(summary))
    print(f"reconstructions (originals above, reconstructions below): {reconstructions_png}")
    print(f"class-conditional samples (one row per class, guidance {args.guidance_scale}): {samples_png}")
    print(f"both side by side: {overview}")
    print(f"pipeline (load with pipelines.TwoStagePipeline.from_pretrained): {out / 'pipeline'}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
