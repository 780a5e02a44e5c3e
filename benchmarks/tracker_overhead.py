"""What the experiment tracker costs a training run: the same stage-1 run with `--report_to tensorboard`
and with `--report_to none`, alternated, each in a fresh process, median of each.

    python benchmarks/tracker_overhead.py --out benchmarks/results/tracker_overhead_cpu.json

A run is `stage1_tokenizer.train` (the default VQ-VAE on the embedded digits) for `--steps` steps at the
default `--logging_steps`, evaluated (and its grid logged) every `--eval_steps`; the time is the whole of
`main()` in the child (tracker start, every log, the grids, the final save), its imports left out. The
runs alternate, so a machine shared with other work slows both arms alike; the ratio is the figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

# The child also sums the time spent inside the tracking calls themselves: a figure the machine's
# other work barely moves, beside the wall-clock ratio it does.
CHILD = """
import functools, json, sys, time
import accelerate, torch
torch.set_num_threads(1)
import stage1_tokenizer.train as script
from vqgen.tracking import TrainingWindow
inside = [0.0]
def timed(f):
    @functools.wraps(f)
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - start
    return call
for owner, name in [(TrainingWindow, "add"), (TrainingWindow, "flush"), (accelerate.Accelerator, "log"),
                    (accelerate.Accelerator, "init_trackers"), (accelerate.Accelerator, "end_training"),
                    (script, "log_images")]:
    setattr(owner, name, timed(getattr(owner, name)))
start = time.perf_counter()
script.main(sys.argv[1:])
print("SECONDS", json.dumps([time.perf_counter() - start, inside[0]]))
"""


def one_run(report_to: str, args: argparse.Namespace, folder: Path) -> tuple[float, float]:
    """Seconds of the run, and of them inside the tracking calls."""
    command = [sys.executable, "-c", CHILD, "--model", "vqvae", "--output_dir", str(folder), "--report_to", report_to,
               "--max_steps", str(args.steps), "--eval_steps", str(args.eval_steps),
               "--batch_size", str(args.batch_size),
               "--logging_steps", str(args.logging_steps),
               "--checkpointing_steps", "0", "--max_eval_samples", "256", "--seed", "0"]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                              "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}).stdout
    return json.loads(out.split("SECONDS", 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="runs of each arm, alternated")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval_steps", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--logging_steps", type=int, default=50, help="the training scripts' default")
    p.add_argument("--out")
    args = p.parse_args()
    seconds: dict[str, list[float]] = {"tensorboard": [], "none": []}
    inside: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            # which arm goes first alternates too, so neither always follows the other
            for arm in (["tensorboard", "none"] if r % 2 == 0 else ["none", "tensorboard"]):
                total, tracking = one_run(arm, args, Path(scratch) / f"{arm}{r}")
                seconds[arm].append(total)
                if arm == "tensorboard":
                    inside.append(tracking / total)
                print(arm, round(total, 2), round(tracking, 3), file=sys.stderr)
    medians = {arm: statistics.median(values) for arm, values in seconds.items()}
    pairs = [t / n for t, n in zip(seconds["tensorboard"], seconds["none"])]
    results = {
        **header("tracker_overhead"),
        "run": {"script": "stage1_tokenizer.train", "model": "vqvae", "dataset": "embedded", "steps": args.steps,
                "batch_size": args.batch_size, "logging_steps": args.logging_steps, "eval_steps": args.eval_steps,
                "threads": 1, "rounds": args.rounds},
        "seconds": {arm: [round(s, 3) for s in values] for arm, values in seconds.items()},
        "median_seconds": {arm: round(m, 3) for arm, m in medians.items()},
        "overhead_of_medians": round(medians["tensorboard"] / medians["none"] - 1, 4),
        "median_paired_overhead": round(statistics.median(pairs) - 1, 4),
        "median_share_inside_tracking_calls": round(statistics.median(inside), 4),
        "note": "2-core machine shared with other work: the arms alternate and the ratio is the figure",
    }
    emit(results, args.out)


if __name__ == "__main__":
    main()
