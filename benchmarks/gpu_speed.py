"""The GPU benchmark: one command, every figure against a ceiling measured in the same run.

    python benchmarks/gpu_speed.py --out benchmarks/results/gpu_<card>.json      # on a CUDA machine
    python benchmarks/gpu_speed.py --device cpu --quick                           # smoke run anywhere

  sampling         the 12 x 768 prior (256 codes, K = 16,384) in bf16 at batch 1 and 64, on every decoding
                   path and `transformers` generate, as tokens/s and as a percentage of the memory-bandwidth
                   floor (weights + key/value cache bytes per step / the bandwidth of a large copy)
  prior training   tokens/s of AdamW steps under bf16 autocast, and the achieved FLOP/s (counted by
                   torch.utils.flop_counter) as a share of the bf16 matmul rate
  tokenizer        images/s of VQ-VAE training steps at 256 px (16x16 codes, 16,384 l2-normalised codes of
                   dimension 8, the LlamaGen VQ-16 setting), the same share of the matmul rate
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402
from sampling_speed import SIZES, copy_bandwidth, measure, synchronize  # noqa: E402

from stage1_tokenizer import VQVAE, VectorQuantizerConfig, build_loss  # noqa: E402
from stage2_prior import TokenizerSpec, build_prior  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: checks the script runs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="add the compiled static-cache sampling path")
    p.add_argument("--out", default=None)
    return p.parse_args()


def timed(step, device: torch.device, repeats: int) -> float:
    step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, repeats)


def counted_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def prior_training(device: torch.device, quick: bool, repeats: int, rate: float) -> dict:
    s = SIZES["mnist" if quick else "256px"]
    spec = TokenizerSpec("random", s["codebook_size"], (s["side"], s["side"]), 16 * s["side"], 3, [str(i) for i in range(10)])
    prior = build_prior(spec, spec.class_names, num_layers=s["num_layers"], hidden_size=s["hidden_size"],
                        num_heads=s["num_heads"], dropout=0.0).to(device)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4)
    batch = 8 if quick else 64
    ids = torch.randint(0, s["codebook_size"], (batch, 1 + s["side"] ** 2), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = prior(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, device, repeats)
    flops = counted_flops(step)
    return {"tokens_per_s": ids.numel() / seconds, "achieved_TFLOPs": flops / seconds / 1e12,
            "share_of_matmul_rate": flops / seconds / rate, "batch": batch, "sequence": ids.shape[1]}


def tokenizer_training(device: torch.device, quick: bool, repeats: int, rate: float) -> dict:
    size, downsamples = (32, 2) if quick else (256, 4)
    model = VQVAE(image_size=size, image_channels=3, channels=32 if quick else 128, num_downsamples=downsamples,
                  code_dim=8, quantizer=VectorQuantizerConfig(codebook_size=16384, l2_normalize=True,
                                                              codebook_init="random")).to(device).train()
    loss_fn = build_loss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = 4 if quick else 32
    images = torch.rand(batch, 3, size, size, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(model(images), images, 0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, device, repeats)
    flops = counted_flops(step)
    return {"images_per_s": batch / seconds, "achieved_TFLOPs": flops / seconds / 1e12,
            "share_of_matmul_rate": flops / seconds / rate, "batch": batch, "image_size": size,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or pass --device cpu --quick for a smoke run")
    repeats = 2 if args.quick else args.repeats
    dtype = torch.bfloat16
    report = header("gpu_speed") | {"device": str(device)}
    report["bf16_matmul_TFLOPs"] = matmul_rate(device, dtype, 512 if args.quick else 8192, repeats) / 1e12
    bandwidth = copy_bandwidth(device, 64 if args.quick else 1024)
    report["copy_bandwidth_GBps"] = bandwidth / 1e9
    rate = report["bf16_matmul_TFLOPs"] * 1e12
    size = "mnist" if args.quick else "256px"
    report["sampling"] = {f"batch {b}": measure(size, b, device, dtype, repeats=repeats, compile=args.compile,
                                                bandwidth=bandwidth) for b in (1, 64 if not args.quick else 4)}
    report["prior_training"] = prior_training(device, args.quick, repeats, rate)
    report["tokenizer_training"] = tokenizer_training(device, args.quick, repeats, rate)
    emit(report, args.out)


if __name__ == "__main__":
    main()
