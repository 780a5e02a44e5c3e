"""Sample many images on 1..N processes, resumably.

    accelerate launch -m pipelines.sample --model runs/quickstart/pipeline --num_samples 1000 --out runs/samples

The N samples are cut into shards of `--batch_size` consecutive indices; process r draws shards
r, r + P, r + 2P, ... and writes each as `OUT/shards/shard-XXXXXX.npz` (atomically). Sample i is
seeded from (seed, i), so 1 process and P processes give identical images. A rerun skips shards
already on disk. When every shard is there, the main process merges them one shard at a time (never
holding the whole set) into `OUT/samples.npz` (`images` uint8 `n h w c`, `labels`, `seeds`), into
`OUT/samples_adm.npz` in the layout of OpenAI's guided-diffusion evaluation suite (`arr_0` uint8
`n h w 3`, grey images repeated to RGB as its Inception takes them; `arr_1` the labels of a
class-conditional run), and writes `OUT/samples.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from vqgen.atomic_io import atomic_write_bytes, atomic_write_text
from vqgen.distributed import leave_after_distributed_run
from vqgen.sampling_settings import add_sampling_arguments, sampling_kwargs

from .npz_writer import NpzWriter
from vqgen.image_grid import save_image_grid

from .labels import batch_labels
from .loading import load_model
from .sampling import sample_images
from .seeds import sample_seed

MANIFEST = "manifest.json"
SAMPLES, ADM_SAMPLES = "samples.npz", "samples_adm.npz"
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="accelerate launch -m pipelines.sample",
        description="Sample images from a two-stage pipeline, a VAE or a CVAE into an .npz and a PNG grid; "
                    "the work is split across processes and a rerun resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="folder or Hub id of a pipeline, VAE or CVAE")
    p.add_argument("--num_samples", type=int, default=None,
                   help="how many images; None: one per --class_labels (fewer labels are cycled over the images)")
    p.add_argument("--out", required=True, help="output folder (shards/, samples.npz, samples_adm.npz, samples.png)")
    p.add_argument("--class_labels", nargs="+", default=None,
                   help="class ids or names: one for all samples, or cycled over the samples (e.g. 0 1 2 ... 9), "
                        "as pipe(...) and pipelines.generate do")
    p.add_argument("--seed", type=int, default=0, help="sample i is drawn with seed (seed, i)")
    p.add_argument("--batch_size", type=int, default=64, help="samples per shard and per forward pass")
    add_sampling_arguments(p)
    p.add_argument("--compile_prior", choices=["auto", "yes", "no"], default="auto",
                   help="compile the prior's one-token step (auto: on CUDA, as CUDA graphs; on a CPU it pays for "
                        "small priors only, docs/performance.md). Changes the speed; the samples only where float "
                        "rounding decides a draw")
    args = p.parse_args(argv)
    if args.num_samples is None and args.class_labels is None:
        p.error("give --num_samples, or --class_labels to draw one sample per label")
    if args.num_samples is not None and args.num_samples <= 0:
        p.error(f"--num_samples must be positive, got {args.num_samples}")
    if args.batch_size <= 0:
        p.error(f"--batch_size must be positive, got {args.batch_size}")
    return args


def command_line_labels(class_labels: list[str] | None) -> list[int | str] | None:
    """Command-line labels as `batch_labels` takes them: a number is a class id (as in vqgen 0.1), anything else
    a class name."""
    if class_labels is None:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in class_labels]


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def write_shard(path: Path, images: torch.Tensor, labels: torch.Tensor | None, seeds: list[int]) -> None:
    pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    write_npz(path, images=pixels, labels=np.full(len(seeds), -1) if labels is None else labels.numpy(),
              seeds=np.asarray(seeds, dtype=np.uint64))


def merge_shards(shards: list[Path], out: Path, *, num_samples: int, conditional: bool) -> None:
    """Stream the shards, in order, into `samples.npz` and the ADM-layout `samples_adm.npz`; grid of the first 100."""
    with np.load(shards[0]) as first:
        h, w, c = first["images"].shape[1:]
    arrays = {"images": ((num_samples, h, w, c), np.uint8), "labels": ((num_samples,), np.int64),
              "seeds": ((num_samples,), np.uint64)}
    adm = {"arr_0": ((num_samples, h, w, 3), np.uint8)} | ({"arr_1": ((num_samples,), np.int64)} if conditional else {})
    grid = []
    with NpzWriter(out / SAMPLES, arrays) as ours, NpzWriter(out / ADM_SAMPLES, adm) as theirs:
        for path in shards:
            with np.load(path) as shard:
                images = shard["images"]
                ours.write(images=images, labels=shard["labels"].astype(np.int64), seeds=shard["seeds"])
                theirs.write(arr_0=np.broadcast_to(images, (*images.shape[:3], 3)),
                             **({"arr_1": shard["labels"].astype(np.int64)} if conditional else {}))
            if sum(len(g) for g in grid) < 100:
                grid.append(images[: 100 - sum(len(g) for g in grid)])
    save_image_grid(torch.from_numpy(np.concatenate(grid)).permute(0, 3, 1, 2).float() / 255, out / "samples.png",
                    nrow=10)


def compile_prior(args: argparse.Namespace) -> bool | None:
    """`--compile_prior` as the pipeline takes it; None for "auto": `sample_codes`' default, compiled on CUDA only."""
    return None if args.compile_prior == "auto" else args.compile_prior == "yes"


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """A rerun may resume only the same request; anything else would mix two sets of samples."""
    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            changed = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
            raise SystemExit(f"{out} holds shards of another sampling run (different {changed}); "
                             "use another --out, or delete it to start over.")
    else:
        atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    state = Accelerator()  # not PartialState: only Accelerator honours ACCELERATE_USE_CPU (gloo on CPU)
    out = Path(args.out)
    model = load_model(args.model, generative=True)
    # the API's rule: one sample per label without --num_samples, labels cycled over the samples with it
    args.num_samples, labels = batch_labels(model, command_line_labels(args.class_labels), args.num_samples)
    settings = model.sampling_settings(conditional=labels is not None, **sampling_kwargs(args))
    if args.compile_prior != "auto" and not hasattr(model, "compile_prior"):
        raise SystemExit(f"error: --compile_prior applies to a two-stage pipeline's prior; {args.model} is a "
                         f"{model.model_type}")
    if hasattr(model, "compile_prior"):
        model.compile_prior = compile_prior(args)
    model.to(state.device)
    manifest = {"model": args.model, "num_samples": args.num_samples, "seed": args.seed, "batch_size": args.batch_size,
                "labels": None if labels is None else labels.tolist(), "settings": dataclasses.asdict(settings)}
    if state.is_main_process:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        check_manifest(out, manifest)
    state.wait_for_everyone()

    starts = list(range(0, args.num_samples, args.batch_size))
    mine = starts[state.process_index :: state.num_processes]
    written = 0
    for start in tqdm(mine, desc="sample shards", disable=not state.is_local_main_process):
        path = out / "shards" / f"shard-{start // args.batch_size:06d}.npz"
        if path.is_file():
            continue  # done by an earlier, interrupted run
        indices = range(start, min(start + args.batch_size, args.num_samples))
        shard_labels = None if labels is None else labels[indices.start : indices.stop]
        images = sample_images(model, indices, shard_labels, settings, args.seed)
        write_shard(path, images, shard_labels, [sample_seed(args.seed, i) for i in indices])
        written += 1
    # every process reports what it did: proves who took part and lets rank 0 count the work
    written_per_process = gather_object([written])
    state.wait_for_everyone()

    summary = {"num_samples": args.num_samples, "processes_seen": len(written_per_process),
               "shards_written_per_process": written_per_process, "shards_total": len(starts)}
    if state.is_main_process:
        merge_shards([out / "shards" / f"shard-{s // args.batch_size:06d}.npz" for s in starts], out,
                     num_samples=args.num_samples, conditional=labels is not None)
        atomic_write_text(out / "sampling_summary.json", json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary))
        print(f"wrote {out / SAMPLES} and {out / ADM_SAMPLES} ({args.num_samples} images) and {out / 'samples.png'}")
    state.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
    leave_after_distributed_run()
