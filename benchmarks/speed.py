"""Speed and memory of every stage, each against a reference measured in the same run.

    python benchmarks/speed.py --out benchmarks/results/speed.json            # CUDA if available, else CPU
    python benchmarks/speed.py --device cpu --repeats 20
    python benchmarks/speed.py --quick                                         # tiny sizes: a smoke run

What is measured, and against what:

  matmul            float32 n x n @ n x n on the device: the arithmetic rate every other figure is put
                    against (each measurement also reports its own GFLOP/s, counted by
                    torch.utils.flop_counter, as a fraction of this rate)
  quantizer_*       our VectorQuantizer forward+backward against vector_quantize_pytorch.VectorQuantize
                    with the same settings (vectors, dim, codebook size, EMA decay, dead-code threshold,
                    k-means or random init, commitment weight, straight-through gradient)
  train_vqvae/vae   stage-1 training images/s (default config, AdamW forward+backward+clip+step)
  encode_vqvae      VQVAE.tokenize images/s (no grad)
  train_prior       prior training tokens/s (GPT-2 prior from stage2_prior.build_prior)
  sample_*          sample_codes tokens/s with the key/value cache against without it
  generate_*        end-to-end images/s of pipelines.generate: two-stage pipeline, and a VAE

Every model is randomly initialised: speed does not depend on trained weights. Each measurement
runs in its own fresh subprocess (this script with --_child NAME) so that its peak memory can be
attributed: on CUDA the peak of torch.cuda.max_memory_allocated, on every device the child's peak
resident set size minus that of a baseline child that only imports the same modules. Times are
the median of --repeats calls after --warmup calls (time.perf_counter, CUDA synchronised).
Prints one JSON object; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

import pipelines  # noqa: E402
from stage1_tokenizer import VAE, VQVAE, VAEConfig, VectorQuantizer, VQVAEConfig, build_loss  # noqa: E402
from stage2_prior import TokenizerSpec, build_prior, sample_codes  # noqa: E402

MEASUREMENTS = [
    "matmul", "quantizer_ours", "quantizer_reference", "train_vqvae", "train_vae", "encode_vqvae",
    "train_prior", "sample_cache", "sample_nocache", "generate_pipeline", "generate_vae",
]
CLASS_NAMES = [str(i) for i in range(10)]


def import_reference() -> tuple[Any, str | None]:
    """vector_quantize_pytorch.VectorQuantize, or None and the reason it could not be imported."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except Exception as e:  # noqa: BLE001 - any failure is reported in the JSON, not raised
        return None, f"{type(e).__name__}: {e} (pip install -e '.[bench]')"
    return VectorQuantize, None


def reference_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("vector-quantize-pytorch")
    except Exception:  # noqa: BLE001
        return None


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    """Problem sizes; --quick shrinks the batches, not the models."""
    cuda = args.device.startswith("cuda")
    full = {
        "matmul_n": args.matmul_size or (4096 if cuda else 1024),
        "quantizer_batch": 128,  # x 7 x 7 latent grid = 6,272 vectors, one stage-1 batch
        "train_batch": 128,
        "encode_batch": 256,
        "prior_batch": 64,
        "prior_layers": 4,
        "prior_hidden": 192,
        "prior_heads": 8,
        "sample_batch": 64,
        "generate_samples": 64,
    }
    if args.quick:
        full.update(matmul_n=args.matmul_size or 256, quantizer_batch=16, train_batch=16, encode_batch=32,
                    prior_batch=8, sample_batch=4, generate_samples=4)
    return full


# -- timing --------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call as torch.utils.flop_counter counts them: matmuls, convolutions and attention only."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# -- the measurements: each returns (fn, items per call, unit, details) ----------------------------
def random_images(n: int, config: Any, device: torch.device) -> torch.Tensor:
    return torch.rand(n, config.image_channels, config.image_size, config.image_size, device=device)


def build_matmul(s: dict, device: torch.device, args: argparse.Namespace):
    n = s["matmul_n"]
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    details = {"n": n, "dtype": "float32", "float32_matmul_precision": torch.get_float32_matmul_precision()}
    return (lambda: torch.mm(a, b, out=c)), 2 * n**3, "flop", details


def quantizer_input(s: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, VQVAEConfig]:
    config = VQVAEConfig()
    g = torch.Generator().manual_seed(0)
    shape = (s["quantizer_batch"], config.code_dim, config.latent_size, config.latent_size)
    z = torch.randn(shape, generator=g).to(device).requires_grad_()
    upstream = torch.randn(shape, generator=g).to(device)  # fixed gradient of a stand-in decoder
    return z, upstream, config


def quantizer_settings(config: VQVAEConfig, z: torch.Tensor, init: str) -> dict:
    vq = config.quantizer  # the default VQVAEConfig's VectorQuantizerConfig
    return {"dim": config.code_dim,
            "codebook_size": vq.codebook_size, "ema_decay": vq.ema_decay,
            "dead_code_threshold": vq.dead_code_threshold, "commitment_weight": vq.beta, "init": init,
            "input": "b d h w = " + "x".join(map(str, z.shape)), "gradient": "straight-through",
            "loss backpropagated": "sum(quantized * fixed random tensor) + commitment loss"}


def build_quantizer_ours(s: dict, device: torch.device, args: argparse.Namespace):
    z, upstream, config = quantizer_input(s, device)
    vq = config.quantizer
    quantizer = VectorQuantizer(dataclasses.replace(vq, codebook_init=args.quantizer_init), config.code_dim).to(device)
    quantizer.train()

    def step() -> None:
        z.grad = None
        out = quantizer(z)
        ((out.quantized * upstream).sum() + out.losses["commitment_loss"]).backward()

    return step, z.shape[0] * z.shape[2] * z.shape[3], "vector", quantizer_settings(config, z, args.quantizer_init)


def build_quantizer_reference(s: dict, device: torch.device, args: argparse.Namespace):
    VectorQuantize, error = import_reference()
    if VectorQuantize is None:
        raise ImportError(error)
    z, upstream, config = quantizer_input(s, device)
    vq = config.quantizer
    quantizer = VectorQuantize(
        dim=config.code_dim, codebook_size=vq.codebook_size, decay=vq.ema_decay,
        commitment_weight=vq.beta, threshold_ema_dead_code=vq.dead_code_threshold, use_cosine_sim=vq.l2_normalize,
        kmeans_init=args.quantizer_init == "kmeans", kmeans_iters=10,
        accept_image_fmap=True,  # takes b d h w like ours, so both do the same layout change
        rotation_trick=False,  # its default (True for dim > 1) replaces the straight-through gradient we use
    ).to(device)
    quantizer.train()

    def step() -> None:
        z.grad = None
        quantized, _, commitment = quantizer(z)
        ((quantized * upstream).sum() + commitment).backward()

    details = {**quantizer_settings(config, z, args.quantizer_init), "version": reference_version(),
               "constructor": "VectorQuantize(dim, codebook_size, decay, commitment_weight, threshold_ema_dead_code, "
                              "use_cosine_sim, kmeans_init, kmeans_iters=10, accept_image_fmap=True, rotation_trick=False)"}
    return step, z.shape[0] * z.shape[2] * z.shape[3], "vector", details


def build_train(model: torch.nn.Module, s: dict, device: torch.device, lr: float, weight_decay: float):
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    images = random_images(s["train_batch"], model.config, device)
    objective = build_loss(model)

    def step() -> None:
        loss = objective(model(images), images, 0).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    details = {"batch": s["train_batch"], "image": f"{model.config.image_channels}x{model.config.image_size}x"
               f"{model.config.image_size}", "parameters": sum(p.numel() for p in model.parameters()),
               "step": f"forward + backward + clip_grad_norm(1.0) + AdamW(lr={lr}, weight_decay={weight_decay})",
               "config": "default " + type(model.config).__name__}
    return step, s["train_batch"], "image", details


def build_train_vqvae(s: dict, device: torch.device, args: argparse.Namespace):
    return build_train(VQVAE(VQVAEConfig()), s, device, lr=1e-3, weight_decay=0.0)


def build_train_vae(s: dict, device: torch.device, args: argparse.Namespace):
    return build_train(VAE(VAEConfig()), s, device, lr=1e-3, weight_decay=0.0)


def build_encode_vqvae(s: dict, device: torch.device, args: argparse.Namespace):
    model = VQVAE(VQVAEConfig()).to(device).eval()
    images = random_images(s["encode_batch"], model.config, device)
    return (lambda: model.tokenize(images)), s["encode_batch"], "image", {"batch": s["encode_batch"],
                                                                         "call": "VQVAE.tokenize (no grad)"}


def make_prior(s: dict, device: torch.device) -> tuple[torch.nn.Module, VQVAE]:
    tokenizer = VQVAE(VQVAEConfig())
    spec = TokenizerSpec.from_tokenizer(tokenizer, "untrained")
    prior = build_prior(spec, CLASS_NAMES, num_layers=s["prior_layers"], hidden_size=s["prior_hidden"],
                        num_heads=s["prior_heads"])
    return prior.to(device), tokenizer.to(device)


def prior_details(prior: torch.nn.Module, s: dict) -> dict:
    return {"architecture": "gpt2", "layers": s["prior_layers"], "hidden_size": s["prior_hidden"],
            "heads": s["prior_heads"], "parameters": sum(p.numel() for p in prior.parameters()),
            "sequence": f"1 class token + {prior.config.n_positions - 1} codes", "classes": len(CLASS_NAMES)}


def build_train_prior(s: dict, device: torch.device, args: argparse.Namespace):
    prior, tokenizer = make_prior(s, device)
    prior.train()
    optimizer = torch.optim.AdamW(prior.parameters(), lr=5e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    b, length = s["prior_batch"], prior.config.n_positions
    codes = torch.randint(0, tokenizer.codebook_size, (b, length - 1), generator=g)
    labels = torch.randint(0, len(CLASS_NAMES), (b, 1), generator=g) + tokenizer.codebook_size + 1
    ids = torch.cat([labels, codes], dim=1).to(device)

    def step() -> None:
        prior(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    details = {**prior_details(prior, s), "batch": b,
               "step": "forward + backward + clip_grad_norm(1.0) + AdamW(lr=5e-4, weight_decay=0.01)",
               "tokens": "predicted tokens, (sequence - 1) per sequence, as stage2_prior.train counts them"}
    return step, b * (length - 1), "token", details


def build_sample(use_cache: bool):
    def build(s: dict, device: torch.device, args: argparse.Namespace):
        prior, _ = make_prior(s, device)
        prior.eval()
        n = s["sample_batch"]
        generator = torch.Generator().manual_seed(0)
        num_codes = prior.config.n_positions - 1
        details = {**prior_details(prior, s), "samples": n, "use_cache": use_cache,
                   "call": "sample_codes(prior, n, use_cache=...): unconditional (null class), temperature 1"}
        return (lambda: sample_codes(prior, n, use_cache=use_cache, generator=generator)), n * num_codes, "token", details
    return build


def build_generate_pipeline(s: dict, device: torch.device, args: argparse.Namespace):
    prior, tokenizer = make_prior(s, device)
    pipe = pipelines.TwoStagePipeline(tokenizer, prior)
    n = s["generate_samples"]
    details = {**prior_details(prior, s), "samples": n,
               "call": "pipelines.generate(pipe, num_samples=n, output_type='pt', seed=0, device=...): prior "
                       "sampling (cache on, unconditional) + VQ-VAE decoding + copy to CPU"}
    return (lambda: pipelines.generate(pipe, num_samples=n, output_type="pt", seed=0, progress=False,
                                       device=device)), n, "image", details


def build_generate_vae(s: dict, device: torch.device, args: argparse.Namespace):
    vae = VAE(VAEConfig()).to(device).eval()
    n = s["generate_samples"]
    details = {"samples": n, "config": "default VAEConfig",
               "call": "pipelines.generate(vae, num_samples=n, output_type='pt', seed=0, device=...)"}
    return (lambda: pipelines.generate(vae, num_samples=n, output_type="pt", seed=0, progress=False,
                                       device=device)), n, "image", details


BUILDERS: dict[str, Callable] = {
    "matmul": build_matmul,
    "quantizer_ours": build_quantizer_ours,
    "quantizer_reference": build_quantizer_reference,
    "train_vqvae": build_train_vqvae,
    "train_vae": build_train_vae,
    "encode_vqvae": build_encode_vqvae,
    "train_prior": build_train_prior,
    "sample_cache": build_sample(True),
    "sample_nocache": build_sample(False),
    "generate_pipeline": build_generate_pipeline,
    "generate_vae": build_generate_vae,
}


# -- one measurement, inside its own process ---------------------------------------------------------
def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_child(name: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    import_reference()  # imported in every child, baseline included, so its memory is never attributed
    torch.zeros(1, device=device).add_(1)  # CUDA context / thread pools: part of the baseline too
    synchronize(device)
    if name == "baseline":
        return {"peak_rss_mib": round(peak_rss_mib(), 1)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    s = sizes(args)
    fn, items, unit, details = BUILDERS[name](s, device, args)
    times = time_calls(fn, device, args.warmup, args.repeats)
    # memory is read before anything else runs in this process
    result: dict[str, Any] = {"peak_rss_mib": round(peak_rss_mib(), 1)}
    if device.type == "cuda":
        result["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    flops = count_flops(fn)
    median = statistics.median(times)
    result.update({
        "seconds_per_call": round(median, 6),
        "seconds_min_max": [round(min(times), 6), round(max(times), 6)],
        f"{unit}s_per_call": items,
        f"{unit}s_per_second": round(items / median, 1),
        "gflop_per_call": round(flops / 1e9, 4),
        "achieved_gflops": round(flops / median / 1e9, 2),
    })
    if name != "matmul":
        # the reference rate again, in this process right after the timed calls: the fraction is then
        # taken against the arithmetic rate the machine gave at that moment (other load drifts)
        del fn
        mm, mm_flops, _, _ = build_matmul(s, device, args)
        mm_median = statistics.median(time_calls(mm, device, 1, 5))
        result["matmul_gflops_here"] = round(mm_flops / mm_median / 1e9, 2)
        result["fraction_of_matmul_rate"] = round(flops / median / (mm_flops / mm_median), 4)
    return {**result, **details}


def spawn(name: str, args: argparse.Namespace) -> dict:
    """Run one measurement in a fresh interpreter; a failure is returned as {"error": ...}, never raised."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", name, "--_child_out", str(out),
               "--device", args.device, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--quantizer_init", args.quantizer_init]
        if args.matmul_size:
            cmd += ["--matmul_size", str(args.matmul_size)]
        if args.quick:
            cmd.append("--quick")
        print(f"[speed] {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
        return json.loads(out.read_text())


def ratio(a: dict, b: dict, key: str) -> float | None:
    if key in a and key in b and b[key]:
        return round(a[key] / b[key], 3)
    return None


def assemble(raw: dict[str, dict], args: argparse.Namespace) -> dict:
    """Raw per-child results -> the report: memory against the baseline, rates against matmul, ratios."""
    baseline = raw.get("baseline", {})
    matmul_rate = raw.get("matmul", {}).get("flops_per_second")
    for name, r in raw.items():
        if name == "baseline" or "error" in r:
            continue
        if "peak_rss_mib" in r and "peak_rss_mib" in baseline:
            r["peak_rss_increase_mib"] = round(r.pop("peak_rss_mib") - baseline["peak_rss_mib"], 1)
        if name != "matmul" and matmul_rate:
            r["fraction_of_first_matmul_rate"] = round(r["achieved_gflops"] * 1e9 / matmul_rate, 4)
    if "matmul" in raw and "flops_per_second" in raw["matmul"]:
        m = raw["matmul"]
        m["gflops"] = round(m.pop("flops_per_second") / 1e9, 2)
        for key in ("flops_per_call", "achieved_gflops"):  # the same figure again
            m.pop(key, None)

    ours, ref = raw.get("quantizer_ours", {}), raw.get("quantizer_reference", {})
    cache, nocache = raw.get("sample_cache", {}), raw.get("sample_nocache", {})
    report: dict[str, Any] = {
        "reference_matmul": raw.get("matmul"),
        "quantizer": {
            "ours": ours,
            "vector_quantize_pytorch": ref,
            "ours_speedup": ratio(ours, ref, "vectors_per_second"),
            "note": "speedup = our vectors/s over vector_quantize_pytorch's, same input tensor and settings. Its "
                    "training-mode forward builds an n x K one-hot matrix and gets the quantised vectors and the EMA "
                    "sums by two more n x K x d matmuls, and takes the square root of the distances; ours does one "
                    "distance matmul, then index lookups (its higher gflop_per_call shows this). Its rotation-trick "
                    "gradient (default) was switched off to match our straight-through one.",
        },
        "stage1_training": {"vqvae": raw.get("train_vqvae"), "vae": raw.get("train_vae")},
        "encode": raw.get("encode_vqvae"),
        "prior_training": raw.get("train_prior"),
        "sampling": {"with_cache": cache, "without_cache": nocache,
                     "cache_speedup": ratio(cache, nocache, "tokens_per_second")},
        "generate": {"two_stage_pipeline": raw.get("generate_pipeline"), "vae": raw.get("generate_vae")},
        "baseline_peak_rss_mib": baseline.get("peak_rss_mib"),
    }
    return {k: v for k, v in report.items() if v is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run (default: cuda if available, else cpu)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 10, --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2, --quick 1)")
    p.add_argument("--quick", action="store_true", help="tiny batches, few repeats: a smoke run, not a benchmark")
    p.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=None, metavar="NAME",
                   help="run only these measurements: " + ", ".join(MEASUREMENTS))
    p.add_argument("--quantizer_init", choices=["kmeans", "random"], default="kmeans",
                   help="codebook init of both quantisers (k-means runs in the warm-up)")
    p.add_argument("--matmul_size", type=int, default=None, help="n of the reference matmul (default 1024 on CPU, "
                   "4096 on CUDA, 256 with --quick)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_child_out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.repeats < 1 or args.warmup < 1:
        p.error("--repeats and --warmup must be at least 1 (the first call of a quantiser initialises it)")
    if args.matmul_size is not None and args.matmul_size < 1:
        p.error(f"--matmul_size must be positive, got {args.matmul_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device} but CUDA is not available; use --device cpu")

    if args._child:
        result = run_child(args._child, args)
        Path(args._child_out).write_text(json.dumps(result))
        return

    names = ["baseline", *(args.only or MEASUREMENTS)]
    if (args.only is None or "quantizer_reference" in args.only) and import_reference()[0] is None:
        raw_reference = {"error": import_reference()[1]}
        names.remove("quantizer_reference")
    else:
        raw_reference = None
    raw = {name: spawn(name, args) for name in names}
    if raw_reference is not None:
        raw["quantizer_reference"] = raw_reference

    memory = ("peak_rss_increase_mib: the measurement's process peak resident set size (ru_maxrss) minus that of a "
              "baseline process that imports the same modules and touches the device, read right after the timed calls; "
              "it covers weights, inputs, optimizer state, activations and allocator/thread-pool/kernel-library "
              "caches of building, warm-up and timed calls. ru_maxrss is a high-water mark of pages touched, so "
              "memory freed and reused inside the process is counted once.")
    if args.device.startswith("cuda"):
        memory += (" peak_gpu_allocated_mib: torch.cuda.max_memory_allocated over building the models and inputs, "
                   "the warm-up and the timed calls (reset at the start of a fresh process), i.e. tensors only, "
                   "not the CUDA context or the caching allocator's reserve.")
    results: dict = {
        **header("speed"),
        "device": args.device,
        "quick": args.quick,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "sizes": sizes(args),
        "notes": {
            "weights": "every model is randomly initialised: speed does not depend on trained weights (sampling always "
                       "runs h*w steps; the quantisers' dead-code restarts depend on the data, here random normal latents)",
            "timing": "median seconds per call of the timed calls after the warm-up, time.perf_counter, CUDA "
                      "synchronised; each measurement in its own fresh process, one after another",
            "flops": "gflop_per_call is counted by torch.utils.flop_counter (matmuls, convolutions, attention; not "
                     "element-wise work, so memory-bound or launch-bound work shows as a low fraction). "
                     "fraction_of_matmul_rate = achieved GFLOP/s over matmul_gflops_here, the reference matmul timed "
                     "again in the same process right after the measurement; fraction_of_first_matmul_rate is over "
                     "reference_matmul, timed once at the start. A fraction above 1 is possible: convolutions and "
                     "larger matmuls can run faster than the n x n reference",
            "memory": memory,
        },
        **assemble(raw, args),
    }
    if args.quick:
        results["notes"]["quick"] = "tiny batches: a smoke run of the script, not a benchmark"
    emit(results, args.out)


if __name__ == "__main__":
    main()
