"""The step loop both training scripts run, and how a run ends.

A stage hands `train_loop` its own pieces: one micro-batch's loss, its evaluation and a hook for
grids. The loop owns the rest: progress, gradient accumulation, auxiliary optimisers, the evaluation
cadence, `metrics.jsonl`, checkpoints, stop signals, the time limit and the NaN stop.
`finish_training` then writes the summary and the model, and pushes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpointing import isolated_rng, prune_checkpoints, save_checkpoint
from .cli import exit_on
from .data import DATA_ERRORS
from .distributed import leave_after_distributed_run
from .ema import EMA
from .tracking import TrainingWindow, start_tracking
from .training import TrainingState

# One micro-batch's loss, and a closure computing the auxiliary optimisers' loss (None without them).
StepLoss = tuple[torch.Tensor, Callable[[], torch.Tensor | None] | None]


@dataclass
class TrainingResult:
    step: int  # the last step taken
    metrics: dict[str, float]  # the test metrics at that step
    seconds: float  # spent in the loop, final evaluation excluded

    def summary(self) -> dict[str, Any]:
        return {"steps": self.step, **self.metrics, "train_seconds": round(self.seconds, 1)}


def train_loop(accelerator: Accelerator, args: argparse.Namespace, state: TrainingState,
               compute_loss: Callable[[dict[str, torch.Tensor], int], StepLoss],
               evaluate: Callable[[int], dict[str, float]], *,
               hook: Callable[[int, bool], None] | None = None,
               loss_name: str = "train/loss", record_extras: Callable[[float], dict[str, Any]] = lambda seconds: {},
               desc: str = "train", window: TrainingWindow | None = None,
               project_name: str = "vqgen") -> TrainingResult:
    """Train from `state.step` to `--max_steps` (or until `--max_train_minutes`, or a stop signal).

    `compute_loss(batch, step)` runs inside `accelerator.accumulate`, once per micro-batch.
    `evaluate(step)` runs on every process, every `--eval_steps` and at the last step, exactly once
    at each, with the EMA weights under `--use_ema`; its metrics go into `metrics.jsonl` beside
    `loss_name` and `record_extras(seconds)`. `hook(step, evaluated)` runs on the main process after
    every step (grids, samples) with the raw weights (`state.averaged_weights()` gives it the EMA).
    Both see the training RNG stream set aside, so they change nothing a resumed run would replay.
    With `--report_to` trackers (opened here as `project_name`), every `--logging_steps` the loop
    logs what `compute_loss` gave `window` (loss terms, examples, codes) with the learning rate and
    gradient norm, and at each evaluation its metrics.
    """
    model, step = state.model, state.step
    window = window or TrainingWindow(accelerator)
    start_tracking(accelerator, args, project_name, step)
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc=desc)
    metrics, evaluated_at = {}, None
    model.train()
    start = time.time()
    for batch in state.batches(args.gradient_accumulation_steps) if step < args.max_steps else ():
        with accelerator.accumulate(model):
            loss, auxiliary_loss = compute_loss(batch, step)
            logging = window.active and (step + 1) % args.logging_steps == 0
            learning_rate = state.scheduler.get_last_lr()[0]  # the one this step uses
            grad_norm = optimizer_step(accelerator, state, loss, args.max_grad_norm, measure_norm=logging)
            if auxiliary_loss is not None:
                auxiliary_step(accelerator, state, auxiliary_loss, step, args.max_grad_norm)
        if not accelerator.sync_gradients:
            continue
        step += 1
        if state.ema is not None:  # from the parameters just stepped, alike on every process
            state.ema.update()
        mean_loss = mean_finite_loss(accelerator, loss, step)
        progress.update(1)
        progress.set_postfix(loss=f"{mean_loss:.4g}")
        if logging:
            accelerator.log({**window.flush(), "train/learning_rate": learning_rate,
                             **({} if grad_norm is None else {"train/grad_norm": float(grad_norm)})}, step=step)
        window.pause()
        evaluated = step % args.eval_steps == 0 or step == args.max_steps
        if evaluated:
            with isolated_rng(accelerator.device), state.averaged_weights():
                metrics, evaluated_at = evaluate(step), step
            accelerator.log(metrics, step=step)
            seconds = time.time() - start
            record = {"step": step, loss_name: mean_loss, "elapsed_s": round(seconds, 1), **record_extras(seconds),
                      **metrics}
            if accelerator.is_main_process:
                with (Path(args.output_dir) / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
            progress.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if hook is not None and accelerator.is_main_process:
            with isolated_rng(accelerator.device):
                hook(step, evaluated)
        if finish_step(accelerator, args, step, start, progress.write):
            break
        window.resume()
    progress.close()
    seconds = time.time() - start
    if evaluated_at != step:  # a run that stopped on time or signal; one that reached --max_steps just did
        with state.averaged_weights():
            metrics = evaluate(step)
        accelerator.log(metrics, step=step)
    return TrainingResult(step, metrics, seconds)


def finish_training(accelerator: Accelerator, args: argparse.Namespace, model: torch.nn.Module,
                    summary: dict[str, Any], save: Callable[[dict[str, torch.Tensor]], list[Path]],
                    push: Callable[[str, str | None], str], compare: tuple[torch.nn.Module, ...] = (),
                    ema: EMA | None = None) -> dict[str, Any]:
    """Every process: `processes_seen` joins `summary` (and how far the weights of `compare`, and the
    `ema`, differ across processes). The main process: `save(state_dict)` writes the model and returns
    what it wrote, then `training_summary.json`; `push(repo_id, token)` uploads it with `--push_to_hub`.
    With an `ema`, the model holds its EMA weights while it is saved, drawn and pushed (so `state_dict`
    holds them only while `save` runs)."""
    summary.update(processes_agree(accelerator, compare))
    if ema is not None:
        summary["ema_max_abs_diff_across_processes"] = max_abs_diff_across_processes(accelerator, ema.shadow)
    with ema.averaged() if ema is not None else contextlib.nullcontext():
        state_dict = model_state_dict(accelerator, model)
        if accelerator.is_main_process:
            written = save(state_dict)
            (Path(args.output_dir) / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            accelerator.print(json.dumps(summary))
            accelerator.print("wrote " + ", ".join(str(p) for p in written))
            if args.push_to_hub:
                accelerator.print(f"pushed: {push(args.hub_model_id, args.hub_token)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def processes_agree(accelerator: Accelerator, modules: tuple[torch.nn.Module, ...]) -> dict[str, float]:
    """Every process contributes one row, so this both proves who took part and checks that the
    weights of `modules`, buffers included (a VQ codebook and its EMA statistics), agree."""
    states = [t for module in modules for t in module.state_dict().values()]
    flat = torch.cat([t.detach().float().flatten() for t in states]) if states else torch.ones(1, device=accelerator.device)
    rows = accelerator.gather(flat[None])
    agree = {"processes_seen": rows.shape[0]}
    if states:
        agree["weights_max_abs_diff_across_processes"] = (rows - rows[:1]).abs().max().item()
    return agree


def max_abs_diff_across_processes(accelerator: Accelerator, tensors: list[torch.Tensor]) -> float:
    """How far the processes' copies of `tensors` are apart (0.0: every process holds the same)."""
    rows = accelerator.gather(torch.cat([t.detach().float().flatten() for t in tensors])[None])
    return (rows - rows[:1]).abs().max().item()


def run_script(main: Callable[[list[str]], Any]) -> None:
    """A training script's entry point: a stop signal checkpoints and exits; unusable data exits with its message."""
    with stop_on_signals(), exit_on(*DATA_ERRORS):
        main(sys.argv[1:])
    leave_after_distributed_run()


def optimizer_step(accelerator: Accelerator, state: TrainingState, loss: torch.Tensor, max_grad_norm: float,
                   measure_norm: bool = False) -> torch.Tensor | None:
    """Backward, clip, step and zero, inside `accelerator.accumulate` by the caller. Returns the
    gradient norm before clipping where it clipped, or was asked to measure it (then an infinite
    bound clips nothing), at the micro-batch that steps; None elsewhere."""
    accelerator.backward(loss)
    grad_norm = None
    if accelerator.sync_gradients and (max_grad_norm > 0 or measure_norm):
        grad_norm = accelerator.clip_grad_norm_(state.model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad()
    return grad_norm


def auxiliary_step(accelerator: Accelerator, state: TrainingState, auxiliary_loss, step: int, max_grad_norm: float) -> None:
    """Step the auxiliary optimizers on their own loss, once per optimizer step (after `optimizer_step`).

    `auxiliary_loss()` computes it from the last micro-batch; it must judge detached model outputs
    (the model's graph is freed by then). What the model's backward left in the auxiliary
    parameters (a discriminator's gradient of the generator's loss) is dropped first: it belongs to
    the model's objective. Gradients are averaged over processes for every parameter (zeros where a
    process has none), so every rank reaches the same collectives.
    """
    if not state.auxiliary or not accelerator.sync_gradients:
        return
    for module, _ in state.auxiliary:
        module.zero_grad(set_to_none=True)
    loss = auxiliary_loss()
    if loss is None:
        return
    mean_finite_loss(accelerator, loss, step, what="auxiliary loss")
    loss.backward()
    for module, aux_optimizer in state.auxiliary:
        for parameter in module.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            if accelerator.num_processes > 1:
                parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
        aux_optimizer.step()
        aux_optimizer.zero_grad()


def model_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as the model itself names them, on every process (a collective under
    DeepSpeed/FSDP), without the `_orig_mod.` that compiled regions add to their keys."""
    return {k.replace("._orig_mod", "").replace("_orig_mod.", ""): v for k, v in accelerator.get_state_dict(model).items()}


def mean_finite_loss(accelerator: Accelerator, loss: torch.Tensor, step: int, what: str = "loss") -> float:
    """The loss averaged over processes; a non-finite one stops every process with the step named."""
    value = accelerator.reduce(loss.detach().float(), reduction="mean").item()
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{what} became {value} at step {step}; nothing was saved after the last checkpoint. Lower "
            "--learning_rate or use --mixed_precision no, then resume with --resume_from_checkpoint latest."
        )
    return value


class TrainingInterrupted(SystemExit):
    """Raised after SIGTERM/SIGINT once a checkpoint is saved; exits the script with status 0."""


_received_signal: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGTERM/SIGINT only set a flag: the step loop checkpoints at the next step and exits.

    Installed by the scripts' entry points only, so in-process callers keep their own handlers.
    """
    def remember(signum: int, frame: object) -> None:
        global _received_signal
        _received_signal = signum

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def finish_step(accelerator: Accelerator, args: argparse.Namespace, step: int, start: float, log) -> bool:
    """Checkpoint if due; True when the run should stop (max_steps or max_train_minutes reached).

    After a stop signal on any process, every process saves a checkpoint and raises
    `TrainingInterrupted`. The flags are reduced over processes so all of them take the same branch.
    """
    late = args.max_train_minutes is not None and time.time() - start > 60 * args.max_train_minutes
    flags = torch.tensor([float(_received_signal is not None), float(late)], device=accelerator.device)
    interrupted, late = (accelerator.reduce(flags, reduction="sum") > 0).tolist()
    if interrupted or (args.checkpointing_steps and step % args.checkpointing_steps == 0):
        checkpoint = save_checkpoint(accelerator, args.output_dir, step)
        if accelerator.is_main_process:
            prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
    log = log if accelerator.is_main_process else (lambda message: None)
    if interrupted:
        log(f"stopped by a signal at step {step}: saved {checkpoint}; continue with --resume_from_checkpoint latest")
        raise TrainingInterrupted(0)
    if late:
        log(f"stopping at step {step}: --max_train_minutes {args.max_train_minutes} reached")
        return True
    return step >= args.max_steps
