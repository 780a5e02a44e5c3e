"""Which CPU-specific pieces of the compiled decoding step earn their place (issue #25): an interleaved A/B.

The pieces were removed from vqgen after this measurement; it runs against the commit that still had them:

    git worktree add /tmp/vqgen-43c4f31 43c4f31
    python benchmarks/cpu_decoding_ab.py --repo /tmp/vqgen-43c4f31 --sizes mnist --rounds 9 \
        --out benchmarks/results/cpu_decoding_ab.json

Every variant samples the same batch (class-conditional, top-k 100, batch 64, random weights) through
`sample_codes` on the compiled static-cache path, each with a copy of the same prior (so each compiles its own
step), in alternation: round r times every variant once, and the median over rounds is compared. "lean" is
what vqgen keeps: `torch.compile` of the prior's step with the token choice, a whole `StaticCache`, the prefix
fed eagerly, SDPA attention, dynamo's own guards. Each other variant is "lean" plus one piece, and "all" is
every piece together (the decoder at that commit). A piece stays only at >= 1.15x over "lean" on the MNIST
prior with no loss at the 256-pixel prior.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PIECES = ("onednn", "kth_largest", "guard_filter", "windowed_cache", "first_token", "eager_attention")
SIZES = {
    "mnist": dict(num_layers=6, hidden_size=256, num_heads=8, side=7, codebook_size=512),
    "256px": dict(num_layers=12, hidden_size=768, num_heads=12, side=16, codebook_size=16384),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, help="a checkout of vqgen at 43c4f31 (the decoder with every piece)")
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["mnist"])
    p.add_argument("--variants", nargs="+", default=["lean", *PIECES, "all"],
                   help="lean, all, or a piece's name (lean plus that piece)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--top_k", type=int, default=100)
    p.add_argument("--out", default=None)
    return p.parse_args()


def install_switches(decoding) -> None:
    """Let each prior say which pieces its decoder uses (`prior.__dict__["_ab_pieces"]`)."""
    original_init, original_first = decoding.Decoder.__init__, decoding.Decoder.first

    def init(self, prior, *args, **kwargs):
        pieces = prior.__dict__["_ab_pieces"]
        original_init(self, prior, *args, **kwargs)
        if "eager_attention" not in pieces:
            self.attention = None  # keep SDPA

    def compiled_cache(self, batch):
        windowed = "windowed_cache" in self.prior.__dict__["_ab_pieces"]
        return decoding.reusable_static_cache(self.prior, batch, self.max_length, windowed=windowed)

    def first(self, tokens, choose, keys):
        if "first_token" in self.prior.__dict__["_ab_pieces"]:
            return original_first(self, tokens, choose, keys)
        return choose(self.prefill(tokens), keys, tokens.shape[1] - 1)

    decoding.Decoder.__init__, decoding.Decoder.compiled_cache, decoding.Decoder.first = init, compiled_cache, first


def compiled_step(prior, pieces: set[str]):
    """The step at 43c4f31 (`decoding.CompiledStep`) with only `pieces` among its passes and guard filter."""
    from stage2_prior import decoding, kth_largest, onednn_matmuls

    passes = ([kth_largest.KthLargest()] if "kth_largest" in pieces else []) + \
             ([onednn_matmuls.OneDNNMatmuls()] if "onednn" in pieces else [])
    step = decoding.CompiledStep.__new__(decoding.CompiledStep)

    def compiled(function):
        options = {}
        if passes:
            options["post_grad_custom_post_pass"] = decoding.GraphPasses(passes)
        if "guard_filter" in pieces:
            options["guard_filter_fn"] = decoding.step_guards
        return torch.compile(function, dynamic=False, options=options or None, isolate_recompiles=True)

    step.forward = compiled(prior)
    step.fused = compiled(functools.partial(decoding.next_tokens, prior))
    step.unfusable = set()
    return step


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(Path(args.repo).resolve()))
    sys.path.insert(0, str(HERE))
    from report import emit, header
    from stage2_prior import TokenizerSpec, build_prior, decoding, sample_codes

    install_switches(decoding)
    variants = {name: set(PIECES) if name == "all" else set() if name == "lean" else {name} for name in args.variants}
    for pieces in variants.values():
        if "first_token" in pieces:  # it feeds position 0 through the windowed cache's window of 2
            pieces.add("windowed_cache")
    report = header("cpu_decoding_ab") | {"repo_commit": _commit(args.repo), "batch_size": args.batch_size,
                                          "top_k": args.top_k, "rounds": args.rounds, "sizes": {}}
    for size in args.sizes:
        s = SIZES[size]
        spec = TokenizerSpec("random", s["codebook_size"], (s["side"], s["side"]), s["side"] * 16, 3,
                             [str(i) for i in range(10)])
        torch.manual_seed(0)
        base = build_prior(spec, spec.class_names, num_layers=s["num_layers"], hidden_size=s["hidden_size"],
                           num_heads=s["num_heads"], dropout=0.0).eval()
        labels = torch.arange(args.batch_size) % 10
        runs, codes, first_call = {}, {}, {}
        for name, pieces in variants.items():
            prior = copy.deepcopy(base)
            prior.__dict__["_ab_pieces"] = pieces
            prior.__dict__["_vqgen_compiled_step"] = {None: compiled_step(prior, pieces)}
            runs[name] = functools.partial(sample_codes, prior, args.batch_size, class_labels=labels, top_k=args.top_k,
                                           cache_implementation="static", compile=True)
            start = time.perf_counter()
            codes[name] = runs[name](generator=torch.Generator().manual_seed(0))
            first_call[name] = time.perf_counter() - start
            print(f"{size} {name}: compiled in {first_call[name]:.1f} s", file=sys.stderr)
        times = {name: [] for name in runs}
        for r in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run(generator=torch.Generator().manual_seed(r))
                times[name].append(time.perf_counter() - start)
        lean = statistics.median(times["lean"]) if "lean" in times else float("nan")
        rows = {name: {"median_s": statistics.median(ts), "speedup_vs_lean": lean / statistics.median(ts),
                       "seconds": [round(t, 4) for t in ts], "first_call_s": round(first_call[name], 1),
                       "codes_equal_to_lean": bool(torch.equal(codes[name], codes["lean"])) if "lean" in codes else None}
                for name, ts in times.items()}
        report["sizes"][size] = {"parameters": sum(p.numel() for p in base.parameters()),
                                 "codes": s["side"] ** 2, "variants": rows}
        print(size, {k: round(v["speedup_vs_lean"], 3) for k, v in rows.items()}, file=sys.stderr)
    emit(report, args.out)


def _commit(repo: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
