"""Our VectorQuantizer against vector_quantize_pytorch.VectorQuantize at LlamaGen's codebook setting.

    python benchmarks/quantizer_16k.py --out benchmarks/results/quantizer_16k_cpu.json
    python benchmarks/quantizer_16k.py --codebook_size 512 --dim 64 --no_l2 --init kmeans   # speed.py's setting

Default setting: 16,384 codes of dimension 8, l2-normalised (their `use_cosine_sim=True`), EMA decay 0.99,
dead-code threshold 1 (their `threshold_ema_dead_code`), commitment 0.25, straight-through gradient (their
`rotation_trick=False`), random codebook init (their `kmeans_init=False`), n = 6,272 vectors (batch 128 of
7 x 7 latents). Both quantisers get the same input tensor and the same backpropagated loss
(sum(quantized * fixed random tensor) + commitment loss), in training mode, in one process.

  time     median seconds per forward + backward call over --repeats rounds after --warmup calls each;
           the two sides alternate call by call (and which goes first alternates by round), so load
           from other processes falls on both alike
  memory   peak_tensor_mib: the peak of tensor memory allocated during one call above what was live
           before it (torch.profiler's memory timeline; the quantiser's own state is not counted).
           peak_rss_increase_mib: peak resident set size of a fresh process that builds one side
           and runs its warm-up and timed calls, minus that of a process that only imports both.
           On CUDA also peak_gpu_allocated_mib (torch.cuda.max_memory_allocated over one call).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from stage1_tokenizer import VectorQuantizer, VectorQuantizerConfig  # noqa: E402

SIDES = ("ours", "vector_quantize_pytorch")


def reference():
    from vector_quantize_pytorch import VectorQuantize
    return VectorQuantize


def reference_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("vector-quantize-pytorch")
    except Exception:  # noqa: BLE001
        return None


def inputs(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.dim, args.grid, args.grid)
    z = torch.randn(shape, generator=g).to(device).requires_grad_()
    upstream = torch.randn(shape, generator=g).to(device)  # fixed gradient of a stand-in decoder
    return z, upstream


def build(side: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One forward + backward call of `side` on its own copy of the input."""
    z, upstream = inputs(args, device)
    if side == "ours":
        config = VectorQuantizerConfig(codebook_size=args.codebook_size, beta=args.commitment, ema_decay=args.decay,
                                       dead_code_threshold=args.dead_code_threshold, codebook_init=args.init,
                                       l2_normalize=args.l2)
        quantizer = VectorQuantizer(config, args.dim).to(device).train()
        if args.compile:
            quantizer.initialize_(z.detach())
            quantizer = torch.compile(quantizer, fullgraph=True)

        def step() -> None:
            z.grad = None
            out = quantizer(z)
            ((out.quantized * upstream).sum() + out.losses["commitment_loss"]).backward()
    else:
        quantizer = reference()(
            dim=args.dim, codebook_size=args.codebook_size, decay=args.decay, commitment_weight=args.commitment,
            threshold_ema_dead_code=args.dead_code_threshold, use_cosine_sim=args.l2,
            kmeans_init=args.init == "kmeans", kmeans_iters=10,
            accept_image_fmap=True,  # takes b d h w like ours, so both do the same layout change
            rotation_trick=False,  # its default replaces the straight-through gradient we use
        ).to(device).train()

        def step() -> None:
            z.grad = None
            quantized, _, commitment = quantizer(z)
            ((quantized * upstream).sum() + commitment).backward()
    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_tensor_mib(fn: Callable[[], None]) -> float:
    """Peak of tensor memory allocated during one call of fn, above what was live before it."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return round(peak / 2**20, 1)


def peak_rss_mib() -> float:
    """This process's peak resident set size. On Linux VmHWM: ru_maxrss would start from the parent's
    peak (it survives fork + exec), and the parent has run both quantisers by then."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_child(side: str, args: argparse.Namespace) -> dict:
    """In a fresh process: peak RSS of building `side` and running its warm-up and timed calls."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    reference()  # imported in every child, baseline included
    torch.zeros(1, device=device).add_(1)
    if side != "baseline":
        fn = build(side, args, device)
        for _ in range(args.warmup + args.repeats):
            fn()
        synchronize(device)
    return {"peak_rss_mib": peak_rss_mib()}


def child_rss(side: str, args: argparse.Namespace) -> float | None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", side, "--_child_out", str(out),
               *child_args(args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            print(proc.stderr[-2000:], file=sys.stderr)
            return None
        return json.loads(out.read_text())["peak_rss_mib"]


def child_args(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--codebook_size", str(args.codebook_size), "--dim", str(args.dim), "--batch", str(args.batch),
           "--grid", str(args.grid), "--decay", str(args.decay), "--dead_code_threshold", str(args.dead_code_threshold),
           "--commitment", str(args.commitment), "--init", args.init]
    if not args.l2:
        out.append("--no_l2")
    if args.compile:
        out.append("--compile")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per side first (the first initialises)")
    p.add_argument("--codebook_size", type=int, default=16384)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--grid", type=int, default=7, help="latent side: n = batch * grid * grid vectors")
    p.add_argument("--decay", type=float, default=0.99, help="EMA decay of both")
    p.add_argument("--dead_code_threshold", type=float, default=1.0)
    p.add_argument("--commitment", type=float, default=0.25)
    p.add_argument("--init", choices=["random", "kmeans"], default="random")
    p.add_argument("--no_l2", dest="l2", action="store_false", help="plain Euclidean codes (default: l2-normalised)")
    p.add_argument("--compile", action="store_true",
                   help="ours under torch.compile(fullgraph=True) (initialised eagerly first; compile time in the warm-up)")
    p.add_argument("--no_rss", action="store_true", help="skip the fresh-process peak-RSS measurements")
    p.add_argument("--out", default=None)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_child_out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1 or args.warmup < 1:
        p.error("--repeats and --warmup must be at least 1")

    if args._child:
        Path(args._child_out).write_text(json.dumps(run_child(args._child, args)))
        return

    device = torch.device(args.device)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    fns = {side: build(side, args, device) for side in SIDES}
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(args.repeats):
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            times[side].append(timed(fns[side], device))

    load_after = os.getloadavg()
    n = args.batch * args.grid * args.grid
    results: dict[str, Any] = {}
    for side in SIDES:
        median = statistics.median(times[side])
        results[side] = {"seconds_per_call": round(median, 6),
                         "seconds_min_max": [round(min(times[side]), 6), round(max(times[side]), 6)],
                         "vectors_per_second": round(n / median, 1),
                         "peak_tensor_mib": peak_tensor_mib(fns[side])}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            fns[side]()
            synchronize(device)
            results[side]["peak_gpu_allocated_mib"] = round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)
    if not args.no_rss:
        baseline = child_rss("baseline", args)
        for side in SIDES:
            rss = child_rss(side, args)
            if rss is not None and baseline is not None:
                results[side]["peak_rss_increase_mib"] = round(rss - baseline, 1)
    ours, theirs = results["ours"], results["vector_quantize_pytorch"]
    report = {
        **header("quantizer_16k"),
        "device": args.device,
        "settings": {"codebook_size": args.codebook_size, "dim": args.dim, "l2_normalized": args.l2,
                     "vectors": n, "input": f"b d h w = {args.batch}x{args.dim}x{args.grid}x{args.grid}",
                     "ema_decay": args.decay, "dead_code_threshold": args.dead_code_threshold,
                     "commitment_weight": args.commitment, "init": args.init, "gradient": "straight-through",
                     "ours_compiled": args.compile,
                     "loss backpropagated": "sum(quantized * fixed random tensor) + commitment loss",
                     "reference": f"vector_quantize_pytorch {reference_version()}: VectorQuantize(dim, codebook_size, "
                                  "decay, commitment_weight, threshold_ema_dead_code, use_cosine_sim, kmeans_init, "
                                  "kmeans_iters=10, accept_image_fmap=True, rotation_trick=False)"},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "load_average_before_after_timing": [round(load_before[0], 2), round(load_after[0], 2)],
        "ours": ours,
        "vector_quantize_pytorch": theirs,
        "ours_speedup": round(theirs["seconds_per_call"] / ours["seconds_per_call"], 3),
        "notes": {"timing": "median of the timed calls; the two sides alternate call by call in one process",
                  "peak_tensor_mib": "torch.profiler memory timeline of one call: peak of tensors created minus "
                                     "destroyed during the call (allocations live before the call not counted)",
                  "peak_rss_increase_mib": "peak RSS (VmHWM) of a fresh process building one side and running warm-up + "
                                           "timed calls, minus that of a process importing both and nothing more"},
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
