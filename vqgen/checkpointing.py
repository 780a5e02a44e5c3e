"""Resumable training checkpoints, written atomically: `OUTPUT/checkpoints/checkpoint-STEP`.

A checkpoint is `accelerator.save_state` (model in safetensors, optimizer/scheduler/RNG/sampler
state read back with `torch.load(weights_only=True)`) plus `trainer_state.json`, which records the
size and sha256 of every other file. It is assembled in a hidden scratch folder and renamed into
place, so a folder named `checkpoint-STEP` is complete; a file damaged later (a full disk, a bad
copy) is caught by its checksum, and `latest` falls back to the newest checkpoint that is intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
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
        state = {"step": step, "files": file_digests(scratch)}
        atomic_write_text(scratch / TRAINER_STATE, json.dumps(state, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(scratch, final)
    accelerator.wait_for_everyone()
    return final


def file_digests(folder: Path) -> dict[str, list]:
    """`{relative path: [size, sha256]}` of every file of a checkpoint but its trainer_state.json."""
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != TRAINER_STATE):
        sha = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        digests[path.relative_to(folder).as_posix()] = [path.stat().st_size, sha.hexdigest()]
    return digests


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when every file is as it was saved."""
    try:
        expected = json.loads((path / TRAINER_STATE).read_text()).get("files")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        return f"{TRAINER_STATE} is unreadable ({e})"
    if expected is None:  # saved before checksums were recorded
        return None
    actual = file_digests(path)
    missing = sorted(set(expected) - set(actual))
    damaged = sorted(name for name in expected if name in actual and actual[name] != expected[name])
    if missing or damaged:
        return f"missing files {missing}, truncated or corrupt files {damaged}"
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoints_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(output_dir: str | os.PathLike, spec: str) -> Path:
    """`spec` is a checkpoint folder, or 'latest' for the newest intact one under `output_dir`."""
    if spec == "latest":
        for path in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            warnings.warn(f"skipping {path}: {problem}; falling back to the previous checkpoint", stacklevel=2)
        raise FileNotFoundError(
            f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoints_dir(output_dir)} is intact. "
            "Start without --resume_from_checkpoint, or point --output_dir at the run to resume."
        )
    path = Path(spec)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {spec}: not a complete checkpoint folder (no {TRAINER_STATE}). "
            f"Use 'latest' or one of {[str(p) for p in list_checkpoints(output_dir)]}."
        )
    if problem := checkpoint_problem(path):
        raise ValueError(f"--resume_from_checkpoint {spec}: {problem}. Resume from another checkpoint, or use "
                         "'latest', which takes the newest intact one.")
    return path


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
