"""The GPU benchmark: one command, every figure against a ceiling measured in the same run.

    python benchmarks/gpu_speed.py --out benchmarks/results/gpu_<card>.json      # on a CUDA machine
    python benchmarks/gpu_speed.py --device cpu --quick                           # smoke run anywhere

  sampling         the 12 x 768 prior (256 codes, K = 16,384) in bf16 at batch 1 and 64, on every decoding
                   path and `transformers` generate, as tokens/s and as a percentage of the memory-bandwidth
                   floor (weights + key/value cache bytes per step / the bandwidth of a large copy)
  prior training   tokens/s of AdamW steps under bf16 autocast, and the achieved FLOP/s (counted by
                   torch.utils.flop_counter) as a share of the bf16 matmul rate
  tokenizer        images/s of training steps of the `vq16-256` preset (LlamaGen's VQ-16: 256 px -> 16x16 codes
                   of 16,384, dimension 8, l2-normalised) under bf16 autocast, reconstruction and codebook losses
                   (the discriminator starts late in training and LPIPS needs weights: neither is timed), the same
                   share of the matmul rate
  consistency      float32 on the device: whether every decoding path gives the same codes, and sample i the same
                   codes at batch 1 and 64 (the draws are identical by construction; logits computed by different
                   kernels can still differ in the last bits)

Each section is written to --out as soon as it is done, so a run cut short keeps what it measured.
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
from sampling_speed import SIZES, copy_bandwidth, measure, random_prior, synchronize  # noqa: E402

from stage1_tokenizer import build_loss  # noqa: E402
from stage1_tokenizer.train import build_model  # noqa: E402
from stage1_tokenizer.train import parse_args as parse_training_args  # noqa: E402
from stage2_prior import sample_codes  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: checks the script runs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no_compile", action="store_true", help="leave out the compiled paths (sampling and training)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
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


def prior_training(device: torch.device, quick: bool, repeats: int, rate: float, compile: bool) -> dict:
    size = "mnist" if quick else "256px"
    s, prior = SIZES[size], random_prior(size, device)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=1e-4)
    batch = 8 if quick else 64
    ids = torch.randint(0, s["codebook_size"], (batch, 1 + s["side"] ** 2), device=device)
    report = {"batch": batch, "sequence": ids.shape[1], "attention": prior.config._attn_implementation}
    flops = None
    for name, model in [("eager", prior)] + ([("compiled", torch.compile(prior))] if compile else []):
        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        flops = flops or counted_flops(step)
        seconds = timed(step, device, repeats)
        report[name] = {"tokens_per_s": ids.numel() / seconds, "achieved_TFLOPs": flops / seconds / 1e12,
                        "share_of_matmul_rate": flops / seconds / rate}
    return report


def tokenizer_training(device: torch.device, quick: bool, repeats: int, rate: float) -> dict:
    preset = "cifar10" if quick else "vq16-256"
    args = parse_training_args(["--preset", preset])
    model = build_model(args, args.image_size, args.channels_in, None).to(device).train()
    loss_fn = build_loss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = 4 if quick else args.batch_size
    images = torch.rand(batch, 3, args.image_size, args.image_size, device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(model(images), images, 0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = counted_flops(step)
    seconds = timed(step, device, repeats)
    return {"preset": preset, "images_per_s": batch / seconds, "achieved_TFLOPs": flops / seconds / 1e12,
            "share_of_matmul_rate": flops / seconds / rate, "batch": batch, "image_size": args.image_size,
            "parameters": sum(p.numel() for p in model.parameters())}


def consistency(device: torch.device) -> dict:
    prior = random_prior("mnist", device).eval()
    labels = torch.arange(64) % 10
    generators = lambda idx: [torch.Generator().manual_seed(i) for i in idx]  # noqa: E731
    runs = {cache: sample_codes(prior, 64, class_labels=labels, generator=generators(range(64)), top_k=100,
                                cache_implementation=cache) for cache in ("preallocated", "dynamic", "static")}
    runs["static, compiled"] = sample_codes(prior, 64, class_labels=labels, generator=generators(range(64)), top_k=100,
                                            cache_implementation="static", compile=True)
    ones = torch.cat([sample_codes(prior, 1, class_labels=labels[i : i + 1], generator=generators([i]), top_k=100)
                      for i in range(8)])
    cpu = sample_codes(prior.cpu(), 8, class_labels=labels[:8], generator=generators(range(8)), top_k=100)
    reference = runs["preallocated"]
    share = lambda a, b: (a.cpu() == b.cpu()).float().mean().item()  # noqa: E731
    return {"share_of_codes_equal_to_preallocated": {name: share(reference, codes) for name, codes in runs.items()},
            "share_of_codes_equal_batch_1_vs_64": share(ones, reference[:8]),
            "share_of_codes_equal_cpu_vs_device": share(cpu, reference[:8])}


SECTIONS = ("sampling", "consistency", "prior_training", "tokenizer_training")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or pass --device cpu --quick for a smoke run")
    repeats = 2 if args.quick else args.repeats
    compile = not args.no_compile
    dtype = torch.bfloat16
    report = header("gpu_speed") | {"device": str(device)}
    report["bf16_matmul_TFLOPs"] = matmul_rate(device, dtype, 512 if args.quick else 8192, repeats) / 1e12
    bandwidth = copy_bandwidth(device, 64 if args.quick else 1024)
    report["copy_bandwidth_GBps"] = bandwidth / 1e9
    rate = report["bf16_matmul_TFLOPs"] * 1e12
    size = "mnist" if args.quick else "256px"
    sections = {
        "sampling": lambda: {f"batch {b}": measure(size, b, device, dtype, repeats=repeats, compile=compile,
                                                   bandwidth=bandwidth) for b in (1, 4 if args.quick else 64)},
        "consistency": lambda: consistency(device),
        "prior_training": lambda: prior_training(device, args.quick, repeats, rate, compile),
        "tokenizer_training": lambda: tokenizer_training(device, args.quick, repeats, rate),
    }
    for name in args.sections:
        start = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as e:  # a section that fails is reported, and the others still run
            report[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        if args.out:
            emit(report, args.out, quiet=True)
    emit(report, args.out)


if __name__ == "__main__":
    main()
