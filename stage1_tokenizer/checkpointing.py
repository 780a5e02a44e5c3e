"""Resumable training checkpoints, written atomically: `OUTPUT/checkpoints/checkpoint-STEP`.

A checkpoint is `accelerator.save_state` (model in safetensors, optimizer/scheduler/RNG/sampler
state read back with `torch.load(weights_only=True)`) plus `trainer_state.json`. It is assembled
in a hidden scratch folder and renamed into place, so a folder named `checkpoint-STEP` is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from accelerate import Accelerator

from .atomic_io import atomic_write_text

TRAINER_STATE = "trainer_state.json"
_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run evaluation or sampling without moving the training RNG stream.

    Otherwise how often a run evaluates (and a run that stops at a checkpoint always evaluates
    at its end) would change the dropout masks and code restarts of the steps that follow, and a
    resumed run would no longer match an uninterrupted one.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        yield


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int) -> Path:
    """Every process calls this; each writes its own RNG state, rank 0 renames the folder into place."""
    final = checkpoints_dir(output_dir) / f"checkpoint-{step}"
    scratch = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(scratch))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(scratch / TRAINER_STATE, json.dumps({"step": step}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch, final)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(output_dir: str | os.PathLike, spec: str) -> Path:
    """`spec` is a checkpoint folder, or 'latest' for the newest complete one under `output_dir`."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoints_dir(output_dir)}. "
                "Start without --resume_from_checkpoint, or point --output_dir at the run to resume."
            )
        return found[-1]
    path = Path(spec)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {spec}: not a complete checkpoint folder (no {TRAINER_STATE}). "
            f"Use 'latest' or one of {[str(p) for p in list_checkpoints(output_dir)]}."
        )
    return path


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
