"""The data layer at the scale of real image collections (issue 12), measured on the real CIFAR-10 folder.

    python benchmarks/data_loading.py --cifar10 ../shared/data/cifar10 --out benchmarks/results/data_cpu.json

1. Peak memory (PSS summed over the training processes and their DataLoader workers; PSS counts a page
   shared by n processes as 1/n in each, so the sum is what the tree really holds) of a short stage-1
   run on the full 50,000-image train split and on a 5,000-image copy of it (symlinks, 500 per class,
   the same test split), with 1 and with 2 processes.
2. Loader throughput in images/s with 0, 1 and 2 workers, on the CIFAR-10 JPEGs (32²) and on the same
   images upscaled to 256² JPEGs (a scratch folder this script writes), against PIL's one-core decode
   rate measured in the same run.
3. Time to the first training batch on the full folder: with an empty index cache (the folder is listed
   and every header read) and with the cache built.

The CIFAR-10 files are JPEG-compressed copies (see ../shared/data/README.md): every figure is on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vqgen.data import load_image_dataset  # noqa: E402


def tree_pss_mb(pid: int, skip_root: bool) -> float:
    """PSS of a process tree in MB (the launcher itself left out when `skip_root`)."""
    try:
        root = psutil.Process(pid)
        members = root.children(recursive=True) + ([] if skip_root else [root])
        total = 0
        for p in members:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def peak_memory(command: list[str], env: dict[str, str], skip_root: bool) -> tuple[float, float]:
    """Run `command`; return (peak tree PSS in MB, seconds)."""
    start = time.time()
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss_mb(proc.pid, skip_root))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    watcher.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return peak[0], time.time() - start


def small_copy(full: Path, folder: Path, per_class: int) -> Path:
    """`per_class` training images of each class as symlinks, and the full test split (a symlink)."""
    for class_dir in sorted((full / "train").iterdir()):
        target = folder / "train" / class_dir.name
        target.mkdir(parents=True)
        for f in sorted(class_dir.iterdir())[:per_class]:
            (target / f.name).symlink_to(f)
    (folder / "test").symlink_to(full / "test")
    return folder


def upscaled_copy(full: Path, folder: Path, n: int, side: int) -> Path:
    files = sorted((full / "train").rglob("*.jpg"))[:: max(1, 50000 // n)][:n]
    for i, f in enumerate(files):
        target = folder / f.parent.name / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(target, quality=90)
    return folder


def decode_rate(folder: Path, n: int) -> float:
    """PIL alone, one core: open + decode + RGB of `n` files, images/s."""
    files = sorted(folder.rglob("*.jpg"))[:n]
    torch.set_num_threads(1)
    start = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB").load()
    return len(files) / (time.perf_counter() - start)


def loader_rate(folder: Path, size: int, workers: int, batches: int, batch_size: int = 64) -> float:
    dataset = load_image_dataset(str(folder), "train", image_size=size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0), drop_last=True,
                                         collate_fn=dataset.collate)
    iterator = iter(loader)
    next(iterator)  # workers started, first batch in: the steady state is what is timed
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += next(iterator)["image"].shape[0]
    return count / (time.perf_counter() - start)


def first_batch_seconds(folder: Path, cache: Path) -> float:
    code = ("import time, torch; t = time.time(); from vqgen.data import load_image_dataset; "
            f"d = load_image_dataset({str(folder)!r}, 'train'); load_image_dataset({str(folder)!r}, 'test'); "
            "next(iter(torch.utils.data.DataLoader(d, batch_size=128, shuffle=True))); print(time.time() - t)")
    env = {**os.environ, "VQGEN_DATA_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar10", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_cpu.json"))
    p.add_argument("--steps", type=int, default=30, help="training steps of each memory run")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of each memory run")
    p.add_argument("--skip", nargs="*", default=[], choices=["memory", "throughput", "first_batch"])
    args = p.parse_args()
    full = Path(args.cifar10)
    if not (full / "train").is_dir():
        raise SystemExit(f"{full} is not the CIFAR-10 image folder (train/<class>/*.jpg); pass --cifar10")
    scratch = Path(tempfile.mkdtemp(prefix="vqgen-data-bench-"))
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
                    "data": "CIFAR-10 as JPEG-compressed copies (../shared/data/README.md)"}
    try:
        env = {**os.environ, "VQGEN_DATA_CACHE": str(scratch / "cache"), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT)}
        if "memory" not in args.skip:
            copy = small_copy(full, scratch / "cifar10_5k", 500)
            train = ["--max_steps", str(args.steps), "--eval_steps", "100000", "--checkpointing_steps", "0",
                     "--batch_size", "64", "--dataloader_num_workers", str(args.workers), "--max_eval_samples", "2000"]
            rows = []
            for processes in (1, 2):
                for name, folder in (("5k copy", copy), ("full 50k", full)):
                    # the index is built once first, so the figure is the training run's, not the indexing's
                    load_image_dataset(str(folder), "train") if processes == 1 else None
                    out = scratch / f"run-{processes}-{name.split()[0]}"
                    module = ["-m", "stage1_tokenizer.train", "--dataset", str(folder), "--output_dir", str(out), *train]
                    if processes == 1:
                        command, skip_root = [sys.executable, *module], False
                    else:
                        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                   "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                   "--main_process_port", str(29500 + processes * 7), *module]
                        skip_root = True
                    peak, seconds = peak_memory(command, {**env, "ACCELERATE_USE_CPU": "1"}, skip_root)
                    rows.append({"processes": processes, "train_images": name, "peak_pss_mb": round(peak, 1),
                                 "seconds": round(seconds, 1)})
                    print(rows[-1], flush=True)
            for processes in (1, 2):
                small, big = (r["peak_pss_mb"] for r in rows if r["processes"] == processes)
                rows.append({"processes": processes, "full_minus_copy_mb": round(big - small, 1),
                             "target": "<= 100 MB", "met": big - small <= 100})
            result["peak_memory"] = {"steps": args.steps, "workers_per_process": args.workers, "rows": rows}
        if "throughput" not in args.skip:
            big = upscaled_copy(full, scratch / "cifar10_256", 1200, 256)
            rates = {"32px": {"decode_one_core": decode_rate(full / "train", 5000)},
                     "256px": {"decode_one_core": decode_rate(big, 600)}}
            for workers in (0, 1, 2):
                rates["32px"][f"loader_{workers}_workers"] = loader_rate(full, 32, workers, batches=60)
                rates["256px"][f"loader_{workers}_workers"] = loader_rate(big, 256, workers, batches=12)
            for size, row in rates.items():
                for key in list(row):
                    if key.startswith("loader"):
                        row[key.replace("loader", "ratio")] = round(row[key] / row["decode_one_core"], 2)
                print(size, {k: round(v, 2) for k, v in row.items()}, flush=True)
            rates["256px"]["target"] = "2 workers >= 1.6x the one-core decode rate"
            rates["256px"]["met"] = rates["256px"]["ratio_2_workers"] >= 1.6
            result["throughput_images_per_s"] = rates
        if "first_batch" not in args.skip:
            cold = first_batch_seconds(full, scratch / "cold-cache")
            warm = first_batch_seconds(full, scratch / "cold-cache")
            result["first_batch_seconds"] = {"empty_index_cache": round(cold, 1), "index_cached": round(warm, 1),
                                             "note": "the OS page cache was warm in both"}
            print(result["first_batch_seconds"], flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
