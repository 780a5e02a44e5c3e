"""Experiment trackers through accelerate: which ones a run reports to, the training curves the
loop logs every `--logging_steps`, and the image grids logged at each evaluation.

TensorBoard is the default: event files under `--output_dir/logs`, written and read offline
(`tensorboard --logdir OUTPUT_DIR/logs`). trackio and wandb are installed apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

TRACKERS = ("tensorboard", "trackio", "wandb")


def report_to(choice: str) -> list[str]:
    """The trackers `--report_to` names ('all': the installed ones), each checked to be installed:
    accelerate leaves out a missing one without a word."""
    if choice == "none":
        return []
    installed = [name for name in TRACKERS if importlib.util.find_spec(name) is not None]
    if choice == "all":
        return installed
    if choice not in installed:
        raise SystemExit(f"--report_to {choice} needs its package: pip install {choice} (or --report_to none)")
    return [choice]


def tracker_config(args: argparse.Namespace) -> dict[str, int | float | str | bool]:
    """The run's arguments as trackers take hyperparameters (scalars and strings), the Hub token left out."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in sorted(vars(args).items()) if k != "hub_token"}


def start_tracking(accelerator: Accelerator, args: argparse.Namespace, project_name: str, step: int) -> None:
    """Open the run's trackers (main process). A run resumed at `step` writes TensorBoard's restart
    marker after it, so what the stopped run logged past its checkpoint is dropped and the curves go on."""
    if not accelerator.log_with:
        return
    name = Path(args.output_dir).resolve().name
    accelerator.init_trackers(project_name, config=tracker_config(args), init_kwargs={
        "tensorboard": {"purge_step": step + 1} if step else {},
        "wandb": {"name": name, "dir": accelerator.logging_dir},
        "trackio": {"name": name},
    })


class TrainingWindow:
    """What the optimizer steps since the last log saw, kept on the device so no step waits for it:
    each loss term summed over the micro-batches that reported it (an adversarial loss reports its
    terms only from its start step on), the examples (images or tokens) trained on, and for a VQ
    tokenizer how often each code was picked. `flush` reduces it over processes once.

    Inactive (every call a no-op) when the run reports to no tracker.
    """

    def __init__(self, accelerator: Accelerator, unit: str = "examples", codebook_size: int = 0,
                 codebook_usage: Callable[[torch.Tensor], tuple[float, float]] | None = None) -> None:
        self.accelerator, self.unit, self.codebook_usage = accelerator, unit, codebook_usage
        self.active = bool(accelerator.log_with)
        self.codes = torch.zeros(codebook_size if codebook_usage else 0, dtype=torch.float64, device=accelerator.device)
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.examples, self.seconds = 0, 0.0
        self.codes.zero_()
        self.started = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], examples: int, codes: torch.Tensor | None = None) -> None:
        """One micro-batch of this process: its loss terms (scalars), examples, and codes if any."""
        if not self.active:
            return
        for name, value in terms.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1
        self.examples += examples
        if codes is not None and self.codes.numel():
            self.codes += torch.bincount(codes.flatten(), minlength=self.codes.numel())

    def pause(self) -> None:
        """Evaluation, grids and checkpoints are not training: the loop pauses the clock around them."""
        self.seconds += time.perf_counter() - self.started

    def resume(self) -> None:
        self.started = time.perf_counter()

    def flush(self) -> dict[str, float]:
        """On every process at once (a collective): the window's means, throughput and code usage as
        `train/...` scalars; then a fresh window."""
        seconds = self.seconds + time.perf_counter() - self.started
        names = sorted(self.sums)
        device = self.accelerator.device
        counts = torch.tensor([*(self.counts[n] for n in names), self.examples], dtype=torch.float64, device=device)
        values = torch.cat([*(self.sums[n].double()[None] for n in names), counts])
        totals = self.accelerator.reduce(values, reduction="sum").tolist()
        sums, counts, examples = totals[:len(names)], totals[len(names):-1], totals[-1]
        scalars = {f"train/{n}": s / c for n, s, c in zip(names, sums, counts)}
        scalars[f"train/{self.unit}_per_second"] = examples / max(seconds, 1e-9)
        if self.codes.numel():
            picked = self.accelerator.reduce(self.codes, reduction="sum")
            scalars["train/codebook_usage"], scalars["train/perplexity"] = self.codebook_usage(picked)
        self._reset()
        return scalars


def log_images(accelerator: Accelerator, images: dict[str, Path], step: int) -> None:
    """Grids already written as PNG, to every tracker that shows images (main process)."""
    if not accelerator.is_main_process or not accelerator.trackers:
        return
    arrays = {f"images/{tag}": np.asarray(Image.open(path).convert("RGB")) for tag, path in images.items()}
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for tag, array in arrays.items():
                tracker.writer.add_image(tag, array, step, dataformats="HWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_images({tag: [array] for tag, array in arrays.items()}, step=step)
        elif tracker.name == "trackio":
            import trackio

            tracker.log({tag: trackio.Image(array) for tag, array in arrays.items()}, step=step)
