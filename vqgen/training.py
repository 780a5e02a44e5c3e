"""What both training scripts (stage 1 and stage 2) share before the loop: options, the accelerator,
optimiser and schedule, seeded loaders, resumption and the order of the data.

The step loop itself, and how a run ends, is `vqgen.training_loop`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.data_loader import skip_first_batches
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, TorchDynamoPlugin, send_to_device, set_seed
from torch.utils.data import DataLoader

from .atomic_io import atomic_write_text
from .cli import add_dataclass_arguments, command_line_tokens, given_options, import_plugins, read_config_file
from .fields import option
from .checkpointing import find_checkpoint
from .ema import EMA
from .tracking import report_to
from .distributed import keep_process_group_alive


@dataclass
class TrainingArguments:
    """The options every training script has; a script passes the defaults that differ for it."""

    output_dir: str = option("runs/train", "where the final model, checkpoints and grids go")
    seed: int = option(0, "seed for weights, data order and sampling")
    max_train_samples: int | None = option(None, "use only the first N training examples")
    max_eval_samples: int | None = option(None, "evaluate on only the first N test examples")
    max_steps: int = option(2000, "optimizer steps to train for")
    max_train_minutes: float | None = option(None, "also stop (evaluate, save) once training has run this long")
    batch_size: int = option(128, "examples per process per micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(1e-3, "peak AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    lr_scheduler: str = option("cosine", "any transformers.get_scheduler name")
    warmup_steps: int = option(100, "linear learning-rate warm-up steps")
    max_grad_norm: float = option(1.0, "gradient clipping; 0 disables")
    use_ema: bool = option(False, "keep an exponential moving average of the trained weights; evaluation, grids and the "
                                  "saved model use it, checkpoints hold both")
    ema_max_decay: float = option(0.9999, "the EMA's decay once warmed up: update t decays by min(this, (1+t)/(10+t))")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = option(None, "overrides the accelerate config / launch flag")
    torch_compile: bool = option(False, "compile the model's repeated blocks with torch.compile (inductor, accelerate's "
                                        "regional compilation); the first steps pay the compilation")
    eval_steps: int = option(500, "evaluate on the test split every N steps")
    logging_steps: int = option(50, "log the training curves (loss terms, learning rate, gradient norm, throughput) "
                                    "to the --report_to trackers every N steps")
    report_to: Literal["tensorboard", "trackio", "wandb", "all", "none"] = option(
        "tensorboard", "experiment trackers: TensorBoard event files under --output_dir/logs (local, no account), "
                       "trackio or wandb (installed apart), all the installed ones, or none")
    eval_batch_size: int = option(256, "examples per process per evaluation batch")
    dataloader_num_workers: int = option(0, "DataLoader worker processes per training process that decode and "
                                            "transform images (0: in the training process)")
    checkpointing_steps: int = option(500, "save a resumable checkpoint every N steps; 0 disables")
    checkpoints_total_limit: int = option(2, "keep only the newest N checkpoints")
    resume_from_checkpoint: str | None = option(None, "a checkpoint folder, or 'latest' under --output_dir/checkpoints; "
                                                      "the run's other options come back from --output_dir/run_args.json")
    init_from: str | None = option(None, "a trained model (folder or Hub id: stage 1 a tokenizer, stage 2 a prior) whose "
                                         "weights start this run: fine-tuning, with a fresh optimizer from step 0")
    push_to_hub: bool = option(False, "push the final model to --hub_model_id")
    hub_model_id: str | None = option(None, "Hub repo id such as user/vqvae-mnist")
    hub_token: str | None = option(None, "Hub token (default: the logged-in one)")


def training_parser(module: str, description: str, argv: list[str] | None, **defaults: Any) -> argparse.ArgumentParser:
    """A training script's parser, holding the options of `TrainingArguments` with this script's `defaults`.
    `--plugins` are imported first, so what they register is among the choices of the options added next."""
    import_plugins(argv)
    import_plugins(["--plugins", *saved_plugins(argv, defaults.get("output_dir", TrainingArguments.output_dir))])
    p = argparse.ArgumentParser(prog=f"accelerate launch -m {module}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_arguments(p.add_argument_group("run, optimisation, evaluation, checkpoints, Hub"), TrainingArguments,
                            defaults=defaults)
    return p


def parse_training_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The command line (and any `--config` file), with what no run can do refused. Resuming, the saved run's
    options (`run_args.json`) are the defaults, and a flag that would change them is refused (`restore_run_args`)."""
    tokens = command_line_tokens(p, argv)
    args = p.parse_args(tokens)
    if args.resume_from_checkpoint:
        args = restore_run_args(p, tokens, args)
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id (e.g. --hub_model_id user/vqvae-mnist)")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_steps", "eval_batch_size",
                 "logging_steps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 <= args.ema_max_decay < 1:
        p.error(f"--ema_max_decay must lie in [0, 1), got {args.ema_max_decay}")
    if args.dataloader_num_workers < 0:
        p.error(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}")
    return args


RUN_ARGS_NAME = "run_args.json"
# What a resumed run may set anew: how long it runs, what it logs and evaluates and when, when it
# checkpoints, how fast it goes, where the model is pushed; never what it learns. Any other option given
# when resuming must equal the saved run's (docs/training.md, "Resuming a run").
CHANGEABLE_ON_RESUME = (
    "resume_from_checkpoint", "max_steps", "max_train_minutes",
    "logging_steps", "report_to",
    "eval_steps", "eval_batch_size", "max_eval_samples", "sample_steps",
    "checkpointing_steps", "checkpoints_total_limit",
    "dataloader_num_workers", "torch_compile",
    "push_to_hub", "hub_model_id", "hub_token",
)
# Never written: the token is a secret, the folder is where the file lies, a --config file's values are
# already in, and how this start began is no setting of the run.
NOT_SAVED = ("hub_token", "output_dir", "config", "resume_from_checkpoint")


def save_run_args(accelerator: Accelerator, args: argparse.Namespace) -> None:
    """The run's resolved options, into `--output_dir/run_args.json` (by the main process): what a resume restores."""
    if accelerator.is_main_process:
        values = {name: value for name, value in sorted(vars(args).items()) if name not in NOT_SAVED}
        atomic_write_text(Path(args.output_dir) / RUN_ARGS_NAME, json.dumps(values, indent=2) + "\n")


def read_run_args(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read the saved run's options ({e}); repair or delete the file") from None
    if not isinstance(values, dict):
        raise SystemExit(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    return values


def saved_plugins(argv: list[str] | None, output_dir: str) -> list[str]:
    """The `--plugins` of the run being resumed, imported before the parser is built so their options exist."""
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("--output_dir", "--resume_from_checkpoint", "--config"):
        pre.add_argument(name)
    known = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0]
    from_file = read_config_file(known.config) if known.config else {}
    path = Path(known.output_dir or from_file.get("output_dir") or output_dir) / RUN_ARGS_NAME
    if not (known.resume_from_checkpoint or from_file.get("resume_from_checkpoint")) or not path.is_file():
        return []
    return read_run_args(path).get("plugins", [])


def command_line_value(value: Any) -> str:
    """A value as it is typed on the command line."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    return str(value)


def restore_run_args(p: argparse.ArgumentParser, tokens: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """Resuming a run that saved its options: they become the parser's defaults, and an option given on the
    command line (or in --config) that differs from the saved run's is refused unless `CHANGEABLE_ON_RESUME`."""
    path = Path(args.output_dir) / RUN_ARGS_NAME
    if not path.is_file():  # a run from before run_args.json: every option as given
        return args
    saved = read_run_args(path)
    unknown = sorted(set(saved) - {a.dest for a in p._actions})
    if unknown:
        p.error(f"{path} holds option(s) {unknown} that {p.prog} does not have: it was written by another training "
                "script (or vqgen version); resume it with the script that wrote it")
    given = given_options(p, tokens)
    flags = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    conflicts = [f"{flags[name]} {command_line_value(getattr(args, name))} conflicts with the saved run's "
                 f"{command_line_value(saved[name])}"
                 for name in sorted(given & saved.keys())
                 if name not in CHANGEABLE_ON_RESUME and getattr(args, name) != saved[name]]
    if conflicts:
        changeable = ", ".join(f"--{name}" for name in CHANGEABLE_ON_RESUME if name in flags)
        p.error(f"{'; '.join(conflicts)} ({path}). A resumed run may change only {changeable}; to change anything "
                "else, start a new run in another --output_dir (with --init_from to start from this one's model)")
    p.set_defaults(**{name: value for name, value in saved.items() if name not in given})
    return p.parse_args(tokens)


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # Regional: each repeated block compiled once and reused; compiling the whole GPT-2 trips over
        # its tied embedding / output weights in torch 2.13's aot_autograd (aliased inputs).
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", use_regional_compilation=True) if args.torch_compile else None,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        log_with=report_to(args.report_to) or None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs")),
    )
    set_seed(args.seed)
    keep_process_group_alive()
    return accelerator


@dataclass
class TrainingState:
    """The prepared objects of a run and the step it starts from (0, or the resumed checkpoint's)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    test_loader: DataLoader | None  # None where the script evaluates through its own (sharded) loader
    step: int
    # Modules trained beside the model by optimizers of their own (a discriminator), prepared and
    # checkpointed with it: (module, optimizer) pairs.
    auxiliary: list[tuple[torch.nn.Module, torch.optim.Optimizer]] = field(default_factory=list)
    device: torch.device | None = None  # where a streamed (unprepared) loader's batches go
    ema: EMA | None = None  # the average of the model's weights, with --use_ema

    def averaged_weights(self) -> contextlib.AbstractContextManager:
        """Inside: the model holds its EMA weights (with --use_ema; without, its own)."""
        return self.ema.averaged() if self.ema is not None else contextlib.nullcontext()

    def batches(self, gradient_accumulation_steps: int) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches from `step` on, forever, epoch after epoch, in the order an uninterrupted run sees.

        A resumed run skips what its epoch already saw at the sampler (accelerate's
        `skip_first_batches`): no skipped image is read or decoded. The loaders carry generators of
        their own and augmentation is keyed by (seed, epoch, index), so the global RNG stream (dropout,
        code restarts) and every batch continue exactly as they would have. A stream has no sampler:
        there the skipped batches are read again.
        """
        if isinstance(self.train_loader.dataset, torch.utils.data.IterableDataset):
            yield from self._streamed_batches(gradient_accumulation_steps)
            return
        steps_per_epoch = len(self.train_loader) // gradient_accumulation_steps
        epoch, done = divmod(self.step, steps_per_epoch)
        while True:
            self.train_loader.set_epoch(epoch)
            loader = skip_first_batches(self.train_loader, done * gradient_accumulation_steps) if done else self.train_loader
            yield from loader
            epoch, done = epoch + 1, 0

    def _streamed_batches(self, gradient_accumulation_steps: int) -> Iterator[dict[str, torch.Tensor]]:
        epoch, skip = 0, self.step * gradient_accumulation_steps
        while True:
            self.train_loader.dataset.set_epoch(epoch)
            seen = 0
            for batch in self.train_loader:
                seen += 1
                if skip:
                    skip -= 1
                    continue
                yield send_to_device(batch, self.device, non_blocking=True)
            if not seen:
                raise ValueError("the training stream is empty for this process; stream more data or fewer processes")
            epoch += 1


def _torch_dataset(dataset: datasets.Dataset | torch.utils.data.Dataset) -> torch.utils.data.Dataset:
    return dataset.with_format("torch") if isinstance(dataset, datasets.Dataset) else dataset


def loader_options(args: argparse.Namespace, accelerator: Accelerator, dataset: object) -> dict[str, Any]:
    """Workers, pinned memory and the dataset's own collation (images: `vqgen.data.images.collate`)."""
    return {"num_workers": args.dataloader_num_workers, "pin_memory": accelerator.device.type == "cuda",
            "collate_fn": getattr(dataset, "collate", None),
            "persistent_workers": False}  # fresh workers per epoch: they must see the dataset's new epoch


def sharded_loader(accelerator: Accelerator, dataset: torch.utils.data.Dataset, batch_size: int,
                   args: argparse.Namespace) -> DataLoader:
    """This process's contiguous part of an evaluation set, in order and unpadded (sizes may differ by one
    item, so metrics are summed per process and reduced once; nothing is gathered per batch). A stream
    is already this process's part."""
    if not isinstance(dataset, torch.utils.data.IterableDataset):
        dataset = dataset.shard(accelerator.num_processes, accelerator.process_index)
    return DataLoader(dataset, batch_size=batch_size, generator=torch.Generator(), **loader_options(args, accelerator, dataset))


def prepare_training(accelerator: Accelerator, model: torch.nn.Module,
                     train_set: datasets.Dataset | torch.utils.data.Dataset,
                     test_set: datasets.Dataset | None, args: argparse.Namespace,
                     auxiliary: list[tuple[torch.nn.Module, float | None]] = ()) -> TrainingState:
    """AdamW, a transformers schedule, seeded loaders, `accelerate.prepare`, and resumption.

    `train_set` may be a `datasets.Dataset`, a torch map-style dataset (sharded over processes by
    accelerate) or an `IterableDataset` already split by node (a stream: not prepared; its batches are
    moved to the device by `TrainingState.batches`). `test_set` None: the script evaluates through its
    own loader (`sharded_loader`). `auxiliary` lists modules that get an AdamW of their own, at their
    learning rate (None: the run's); they are prepared, so `save_state`/`load_state` checkpoint them
    and their optimizers too.
    """
    from transformers import get_scheduler

    per_step = args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    streamed = isinstance(train_set, torch.utils.data.IterableDataset)
    if not streamed and len(train_set) < per_step:
        raise SystemExit(f"{len(train_set)} training examples are fewer than one step needs ({per_step}); "
                         "lower --batch_size.")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    # the prepared scheduler steps once per process each step, hence the factor
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_steps * accelerator.num_processes)
    # Loaders with their own generators: starting an epoch must not draw from the global RNG, or a
    # resumed run (which starts mid-epoch) would be one draw out of step.
    train_set = _torch_dataset(train_set)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=not streamed, drop_last=True,
                              generator=torch.Generator().manual_seed(args.seed),
                              **loader_options(args, accelerator, train_set))
    test_loader = None
    if test_set is not None:
        test_set = _torch_dataset(test_set)
        test_loader = DataLoader(test_set, batch_size=args.eval_batch_size,
                                 generator=torch.Generator().manual_seed(args.seed),
                                 **loader_options(args, accelerator, test_set))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if not streamed:
        train_loader = accelerator.prepare(train_loader)
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    prepared_auxiliary = []
    if auxiliary and accelerator.mixed_precision == "fp16":
        # fp16's loss scaler is shared by every prepared optimizer; the auxiliary step runs its own backward.
        raise SystemExit("a loss with its own optimizer needs --mixed_precision bf16 or no, not fp16")
    for module, lr in auxiliary:
        aux_optimizer = torch.optim.AdamW(module.parameters(), lr=lr or args.learning_rate, weight_decay=0.0)
        # Prepared so that save_state/load_state checkpoint both (the module as safetensors). The
        # module itself is called unwrapped, so its gradients are averaged by hand in auxiliary_step.
        _, aux_optimizer = accelerator.prepare(module, aux_optimizer)
        prepared_auxiliary.append((module, aux_optimizer))
    # Built from the prepared model's parameters (they are the ones the optimizer steps) and hooked into
    # save_state/load_state before any resumption.
    ema = EMA(accelerator.unwrap_model(model), args.ema_max_decay) if args.use_ema else None
    if ema is not None:
        ema.checkpoint_with(accelerator)
    step = 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
        try:
            accelerator.load_state(str(checkpoint))  # torch.load(weights_only=True) under the hood
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{checkpoint} holds training state that is more than tensors and numbers, and vqgen never "
                f"unpickles code ({str(e).splitlines()[0]}). Resume from a checkpoint you trust."
            ) from e
        step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    if accelerator.is_main_process:  # the run is accepted: its folder and options, nothing before a refusal
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    save_run_args(accelerator, args)
    return TrainingState(model, optimizer, scheduler, train_loader, test_loader, step, prepared_auxiliary,
                         device=accelerator.device, ema=ema)
