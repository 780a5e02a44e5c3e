"""Prior sampling speed: vqgen's sampler on each decoding path against transformers' own `generate`.

    python benchmarks/sampling_speed.py --out benchmarks/results/sampling_cpu.json     # both sizes, CPU
    python benchmarks/sampling_speed.py --sizes mnist --repeats 3 --compile            # add the compiled path
    python benchmarks/sampling_speed.py --sizes 256px --batch_size 1 --compile --profile \
        --skip "dynamic cache" "static cache"                 # on a GPU: where the fastest path's time goes

Sizes (random weights: speed does not depend on them):
  mnist   the MNIST prior of `stage2_prior.train`'s defaults: GPT-2, 6 layers x 256, 7x7 = 49 codes, K = 512
  256px   the 256-pixel preset's size class: GPT-2, 12 layers x 768, 16x16 = 256 codes, K = 16,384

Every path samples the same batch of class-conditional sequences with top-k 100, temperature 1, no
guidance. The `generate` row is a separately loaded, uncompiled copy of the same saved prior with a
fresh `GenerationConfig` (its default dynamic cache). Repeats are interleaved across paths and the
median is reported, so a noisy moment hits every path alike. On CUDA the report adds the
memory-bandwidth floor: bytes read per decoding step (weights + the key/value cache at the mean
position) divided by the bandwidth of a large device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from stage2_prior import TokenizerSpec, build_prior, sample_codes, save_prior  # noqa: E402
from stage2_prior.prior import prior_spec  # noqa: E402

SIZES = {
    "mnist": dict(num_layers=6, hidden_size=256, num_heads=8, side=7, codebook_size=512),
    "256px": dict(num_layers=12, hidden_size=768, num_heads=12, side=16, codebook_size=16384),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["mnist", "256px"])
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (median reported)")
    p.add_argument("--top_k", type=int, default=100)
    p.add_argument("--compile", action="store_true", help="also time the static cache with a compiled step")
    p.add_argument("--uncached", action="store_true", help="also time recomputing the prefix (slow at 256 codes)")
    p.add_argument("--skip", nargs="*", default=[], choices=["dynamic cache", "static cache"],
                   help="leave out these reference paths (the 256px size takes minutes per path on a CPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="weights' dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--profile", action="store_true",
                   help="profile one call of the fastest of our paths (torch.profiler): where its time goes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    return p.parse_args()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, megabytes: int = 1024) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    synchronize(device)
    return 2 * src.numel() * 10 / (time.perf_counter() - start)


def bytes_per_step(prior: torch.nn.Module, batch: int, length: int) -> float:
    """Weights once, plus every layer's keys and values at the mean position, for the whole batch."""
    weights = sum(p.numel() * p.element_size() for p in prior.parameters())
    c = prior.config
    layers, width = c.num_hidden_layers, c.hidden_size
    element = next(prior.parameters()).element_size()
    kv = 2 * layers * width * element * batch * (length / 2)
    return weights + kv


def random_prior(size: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A class-conditional prior of `SIZES[size]` with seeded random weights (speed does not depend on them)."""
    s = SIZES[size]
    spec = TokenizerSpec("random", s["codebook_size"], (s["side"], s["side"]), s["side"] * 16, 3,
                         [str(i) for i in range(10)])
    torch.manual_seed(0)
    return build_prior(spec, spec.class_names, num_layers=s["num_layers"], hidden_size=s["hidden_size"],
                       num_heads=s["num_heads"], dropout=0.0).to(device, dtype)


def measure(size: str, batch_size: int, device: torch.device, dtype: torch.dtype, *, repeats: int = 5,
            top_k: int = 100, compile: bool = False, uncached: bool = False,
            bandwidth: float | None = None, skip: tuple[str, ...] = (), profile: bool = False) -> dict:
    """Every path at one size and batch: tokens/s, speed-up over `generate`, and (with `bandwidth`,
    bytes/s) the share of the memory-bandwidth floor."""
    s = SIZES[size]
    prior = random_prior(size, device, dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_prior(prior, tmp)
        reference = AutoModelForCausalLM.from_pretrained(tmp).to(device, dtype).eval()
    n, b = s["side"] ** 2, batch_size
    labels = torch.arange(b) % 10
    vocab = prior_spec(prior).vocabulary
    prefix = vocab.sequences(torch.empty(b, 0, dtype=torch.long), labels).to(device)
    config = GenerationConfig(do_sample=True, top_k=top_k, temperature=1.0, max_new_tokens=n,
                              min_new_tokens=n, bos_token_id=vocab.start_token, pad_token_id=vocab.start_token)

    def ours(**kw):
        return lambda: sample_codes(prior, b, class_labels=labels, top_k=top_k,
                                    generator=torch.Generator().manual_seed(0), **kw)

    paths = {"preallocated cache": ours(cache_implementation="preallocated", compile=False),
             "dynamic cache": ours(cache_implementation="dynamic", compile=False),
             "static cache": ours(cache_implementation="static", compile=False),
             "transformers generate": lambda: reference.generate(input_ids=prefix, generation_config=config)}
    paths = {name: run for name, run in paths.items() if name not in skip}
    if compile:
        paths["static cache, compiled"] = ours(cache_implementation="static", compile=True)
    if uncached:
        paths["no cache"] = ours(use_cache=False)
    warmup, failed = {}, {}
    for name, run in list(paths.items()):  # warm-up (and compilation) outside the timed rounds
        start = time.perf_counter()
        try:
            run()
            synchronize(device)
        except Exception as e:  # one path that fails (a backend without CUDA graphs, say) must not cost the others
            failed[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            del paths[name]
            continue
        warmup[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    rows = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        rows[name] = {"tokens_per_s": b * n / median, "seconds": median, "first_call_s": warmup[name]}
    base = rows["transformers generate"]["seconds"] if "transformers generate" in rows else float("nan")
    for row in rows.values():
        row["speedup_vs_generate"] = base / row["seconds"]
        if "no cache" in rows:
            row["speedup_vs_no_cache"] = rows["no cache"]["seconds"] / row["seconds"]
        if bandwidth:
            row["percent_of_bandwidth_floor"] = 100 * bytes_per_step(prior, b, n) / bandwidth * n / row["seconds"]
    report = {"parameters": sum(p.numel() for p in prior.parameters()), "codes": n, "batch_size": b,
              "paths": rows | failed}
    if profile:
        ours_fastest = min((name for name in rows if name not in ("transformers generate", "no cache")),
                           key=lambda name: rows[name]["seconds"])
        report["profile"] = profiled(ours_fastest, paths[ours_fastest], device, tokens=b * n, steps=n)
    return report


def profiled(name: str, run, device: torch.device, tokens: int, steps: int, top: int = 15) -> dict:
    """One call under torch.profiler: the share of the wall time that operators (and, on CUDA, kernels) account
    for, and the operators that take the most. What the operators leave is Python: the loop, guards, launches."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run()
        synchronize(device)
    wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    cpu_ops = sum(e.self_cpu_time_total for e in events)
    kernels = sum(getattr(e, "self_device_time_total", 0) for e in events)
    by = lambda attr: [{"op": e.key[:80], "calls": e.count, "self_us_per_step": getattr(e, attr) / steps}  # noqa: E731
                       for e in sorted(events, key=lambda e: -getattr(e, attr, 0))[:top] if getattr(e, attr, 0) > 0]
    return {"path": name, "wall_us_per_step": wall_us / steps, "tokens_per_s_profiled": tokens / wall_us * 1e6,
            "share_in_cpu_operators": cpu_ops / wall_us,
            "share_with_device_kernels_running": kernels / wall_us if device.type == "cuda" else None,
            "top_by_self_cpu": by("self_cpu_time_total"),
            "top_by_self_device": by("self_device_time_total") if device.type == "cuda" else None}


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    report = header("sampling_speed") | {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                                         "top_k": args.top_k, "sizes": {}}
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    if bandwidth:
        report["copy_bandwidth_GBps"] = bandwidth / 1e9
    for size in args.sizes:
        rows = measure(size, args.batch_size, device, dtype, repeats=args.repeats, top_k=args.top_k,
                       compile=args.compile, uncached=args.uncached, bandwidth=bandwidth, skip=tuple(args.skip),
                       profile=args.profile)
        report["sizes"][size] = rows
        print(size, {k: round(v["speedup_vs_generate"], 2) if "error" not in v else v["error"]
                     for k, v in rows["paths"].items()}, file=sys.stderr)
    emit(report, args.out)


if __name__ == "__main__":
    main()
