"""An exponential moving average of a model's trained weights (`--use_ema`), as diffusers' EMAModel keeps one.

The average covers the parameters the optimizer trains (`requires_grad`), in float32 on their device. Buffers
and frozen parameters are not averaged: the model keeps its live ones. A VQ codebook learned by its own EMA
(`requires_grad=False`, with its counts in buffers) is such a thing, so the averaged encoder and decoder are
used with the live codebook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import save_file

EMA_FILE = "ema.safetensors"


class EMA:
    """`update()` after each optimizer step; `averaged()` puts the average into the model for a block."""

    def __init__(self, model: torch.nn.Module, max_decay: float) -> None:
        self.max_decay, self.num_updates = max_decay, 0
        trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        # compiled regions add `_orig_mod.` to their parameters' names; the file keeps the model's own
        self.names = [name.replace("_orig_mod.", "") for name, _ in trained]
        self.parameters = [p for _, p in trained]
        self.shadow = [p.detach().float().clone() for p in self.parameters]

    def decay(self, t: int) -> float:
        """The decay of update `t` (from 0): a warm-up, so early weights do not linger, capped at `max_decay`."""
        return min(self.max_decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * parameter, from the parameters every process holds alike."""
        weight = 1.0 - self.decay(self.num_updates)
        for shadow, parameter in zip(self.shadow, self.parameters):
            shadow.lerp_(parameter.detach().float(), weight)
        self.num_updates += 1

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside the block the model holds the averaged parameters; after it, exactly its own again."""
        if not self.shadow:
            yield
            return
        with torch.no_grad():
            own = [p.detach().clone() for p in self.parameters]
            for parameter, shadow in zip(self.parameters, self.shadow):
                parameter.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, kept in zip(self.parameters, own):
                    parameter.copy_(kept)

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "shadow": dict(zip(self.names, self.shadow))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if sorted(shadow) != sorted(self.names):
            missing, unexpected = sorted(set(self.names) - set(shadow)), sorted(set(shadow) - set(self.names))
            raise ValueError(f"the saved EMA does not fit this model: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for name, tensor in zip(self.names, self.shadow):
                tensor.copy_(shadow[name])
        self.num_updates = int(state["num_updates"])

    def checkpoint_with(self, accelerator: Accelerator) -> None:
        """`accelerator.save_state` writes the average as `ema.safetensors` and `load_state` reads it back.
        Not `register_for_checkpointing`: accelerate unpickles those objects with weights_only=False."""
        def save(models: list, weights: list, folder: str) -> None:
            if accelerator.is_main_process:
                state = self.state_dict()
                save_file({k: v.contiguous() for k, v in state["shadow"].items()}, Path(folder) / EMA_FILE,
                          metadata={"max_decay": repr(self.max_decay), "num_updates": str(self.num_updates)})

        def load(models: list, folder: str) -> None:
            path = Path(folder) / EMA_FILE
            if not path.is_file():
                raise SystemExit(f"{folder} was saved without --use_ema (no {EMA_FILE}): resume it without --use_ema")
            with safe_open(path, "pt") as f:
                self.load_state_dict({**f.metadata(), "shadow": {k: f.get_tensor(k) for k in f.keys()}})

        accelerator.register_save_state_pre_hook(save)
        accelerator.register_load_state_pre_hook(load)
