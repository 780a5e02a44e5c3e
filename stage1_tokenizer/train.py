"""Train a stage-1 model (VQ-VAE, VAE or CVAE) on 1..N processes.

    accelerate launch -m stage1_tokenizer.train --model vqvae --dataset embedded --output_dir runs/vqvae

The final model is written with `save_pretrained` into `--output_dir`; checkpoints go to
`--output_dir/checkpoints/checkpoint-STEP`, grids to `--output_dir/samples/`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from vqgen.cli import dataclass_from_arguments
from vqgen.data import (DataAugmentation, ImageDataset, images_to_tensor, load_image_dataset, load_image_stream,
                        spread_indices)
from vqgen.image_grid import class_grid_labels, save_image_grid, save_reconstruction_grid
from vqgen.image_metrics import psnr_from_mse
from vqgen.tracking import TrainingWindow, log_images
from vqgen.training import make_accelerator, prepare_training, sharded_loader
from vqgen.training_loop import finish_training, run_script, train_loop

from . import PretrainedModel, codebook_usage
from .arguments import build_model, parse_args
from .losses import LOSSES, LossConfigurationError, LossSum, build_loss


def build_training_loss(args: argparse.Namespace, model: PretrainedModel) -> LossSum:
    options = {name: dataclass_from_arguments(loss.config_class, args) for name, loss in LOSSES.items()}
    try:
        return build_loss(model, args.extra_losses, options)
    except LossConfigurationError as e:  # the user's to fix (weights to provide, an option): the message, no traceback
        raise SystemExit(f"error: {e}") from None


def batch_to_inputs(batch: dict[str, torch.Tensor], binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = images_to_tensor(batch["image"])
    # A fresh draw every time the batch is seen, so the model cannot overfit one binarisation.
    return (torch.bernoulli(images) if binarize else images), batch.get("label")


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loss_fn: LossSum, loader: DataLoader, step: int,
             binarize: bool = False) -> dict[str, float]:
    """Test-split metrics over every process's part of the split: MSE, PSNR, the loss terms, usage/perplexity for VQ.

    Each process sums over its own batches (no collective inside the loop, so parts of unequal length are
    fine), and the sums are reduced once.
    """
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    loss_fn.eval()  # a loss with dropout or batch statistics of its own must not change while scoring
    sums: dict[str, float] = {}
    code_counts = torch.zeros(unwrapped.codebook_size if unwrapped.is_discrete else 0, dtype=torch.float64,
                              device=accelerator.device)
    for batch in loader:
        images, labels = batch_to_inputs(send_to_device(batch, accelerator.device), binarize)
        out = unwrapped(images, labels)
        terms = loss_fn(out, images, step)
        per_image_mse = (unwrapped.reconstruct(images, labels).float() - images.float()).pow(2).flatten(1).mean(1)
        parts = {**{name: value * images.shape[0] for name, value in terms.floats().items()},
                 "mse": per_image_mse.sum().item(), "psnr": psnr_from_mse(per_image_mse).sum().item(),
                 "count": float(images.shape[0])}
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value
        if out.codes is not None:
            code_counts += torch.bincount(out.codes.flatten(), minlength=code_counts.numel()).double()
    unwrapped.train()
    loss_fn.train()
    if not sums:
        raise SystemExit(f"process {accelerator.process_index} has no test images: evaluate on at least as many "
                         f"images as processes ({accelerator.num_processes}); raise --max_eval_samples")
    names = ["count", *sorted(k for k in sums if k != "count")]
    totals = accelerator.reduce(torch.tensor([sums.get(k, 0.0) for k in names], device=accelerator.device,
                                             dtype=torch.float64), reduction="sum").tolist()
    metrics = {f"test/{k}": v / max(totals[0], 1.0) for k, v in zip(names[1:], totals[1:])}
    if unwrapped.is_discrete:
        counts = accelerator.reduce(code_counts, reduction="sum")
        metrics["test/codebook_usage"], metrics["test/perplexity"] = codebook_usage(counts)
    return metrics


def grid_batch(test_set: ImageDataset | torch.utils.data.IterableDataset, n: int = 32) -> dict[str, torch.Tensor]:
    """The test images the grids show: a mix of classes (a class-sorted folder's first images are one class)."""
    if isinstance(test_set, ImageDataset):
        items = test_set.__getitems__(spread_indices(test_set.labels, len(test_set), n))
    else:
        items = [item for item, _ in zip(test_set, range(n))]
    return test_set.collate(items)


@torch.no_grad()
def write_grids(accelerator: Accelerator, model: torch.nn.Module, batch: dict[str, torch.Tensor], folder: Path, tag: str) -> list[Path]:
    """Reconstructions of a fixed test batch, and for the VAE family samples from the prior."""
    unwrapped = accelerator.unwrap_model(model)
    images, labels = batch_to_inputs(batch)
    images, labels = images[:32], None if labels is None else labels[:32]
    was_training = model.training
    model.eval()
    paths = [save_reconstruction_grid(images, unwrapped.reconstruct(images, labels), folder / f"reconstructions{tag}.png")]
    if unwrapped.can_sample:
        sample_labels = class_grid_labels(len(unwrapped.class_names or [])) if unwrapped.requires_labels else None
        num_samples = 64 if sample_labels is None else sample_labels.shape[0]
        generator = torch.Generator(device=images.device).manual_seed(0)
        samples = unwrapped.sample(num_samples, None if sample_labels is None else sample_labels.to(images.device),
                                   generator=generator)
        paths.append(save_image_grid(samples, folder / f"samples{tag}.png", nrow=8))
    model.train(was_training)
    return paths


def load_splits(args: argparse.Namespace, accelerator: Accelerator) -> tuple[ImageDataset, ImageDataset]:
    """The training split (augmented) and the test split (centre crops, at the training split's geometry);
    streamed, each process's part of the stream. Rank 0 builds any cached index first."""
    augmentation = dataclass_from_arguments(DataAugmentation, args)
    with accelerator.main_process_first():
        if args.streaming:
            stream = dict(image_size=args.image_size, channels=args.channels_in, seed=args.seed,
                          rank=accelerator.process_index, world_size=accelerator.num_processes)
            return (load_image_stream(args.dataset, "train", max_samples=args.max_train_samples,
                                      augmentation=augmentation, shuffle_buffer=args.shuffle_buffer, **stream),
                    load_image_stream(args.dataset, "test", max_samples=args.max_eval_samples, **stream))
        train_set = load_image_dataset(args.dataset, "train", image_size=args.image_size, channels=args.channels_in,
                                       max_samples=args.max_train_samples, augmentation=augmentation,
                                       skip_bad_images=args.skip_bad_images, seed=args.seed)
        test_set = load_image_dataset(args.dataset, "test", image_size=train_set.image_size, channels=train_set.channels,
                                      max_samples=args.max_eval_samples, skip_bad_images=args.skip_bad_images)
    return train_set, test_set


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    output_dir = Path(args.output_dir)

    train_set, test_set = load_splits(args, accelerator)
    names = train_set.class_names
    c, h, _ = train_set.image_shape
    model = build_model(args, h, c, names)
    sizes = "streamed" if args.streaming else f"{len(train_set):,} train / {len(test_set):,} test images"
    accelerator.print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters; "
                      f"{sizes} of {c}x{h}x{h}; {accelerator.num_processes} process(es)")
    loss_fn = build_training_loss(args, model).to(accelerator.device)
    state = prepare_training(accelerator, model, train_set, None, args, auxiliary=loss_fn.optimizer_groups())
    model, unwrapped = state.model, accelerator.unwrap_model(state.model)
    test_loader = sharded_loader(accelerator, test_set, args.eval_batch_size, args)
    grids_of = send_to_device(grid_batch(test_set), accelerator.device)

    def compute_loss(batch: dict[str, torch.Tensor], step: int):
        images, labels = batch_to_inputs(batch, args.binarize)
        out = model(images, labels)
        terms = loss_fn(out, images, step)
        window.add({"loss": terms.loss, **terms.terms}, images.shape[0], out.codes)
        # the discriminator (if any) judges this micro-batch once the model has stepped
        return terms.loss, lambda: loss_fn.auxiliary_loss(out, images, step)

    def grids(step: int, evaluated: bool) -> None:
        if evaluated:
            with state.averaged_weights():
                paths = write_grids(accelerator, model, grids_of, output_dir / "samples", f"_step{step:07d}")
            log_images(accelerator, {path.stem.partition("_step")[0]: path for path in paths}, step)

    # the training curves: every loss term, images/s, and for a VQ tokenizer the codes it picks
    window = TrainingWindow(accelerator, "images", unwrapped.codebook_size if unwrapped.is_discrete else 0,
                            codebook_usage)
    result = train_loop(accelerator, args, state, compute_loss, hook=grids, window=window,
                        project_name="stage1_tokenizer",
                        evaluate=lambda step: evaluate(accelerator, model, loss_fn, test_loader, step, args.binarize))

    def save(state_dict: dict[str, torch.Tensor]) -> list[Path]:
        per_step = args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        unwrapped.card_data = {
            "dataset": args.dataset,
            "metrics": {k.removeprefix("test/"): v for k, v in result.metrics.items()},
            "training": {"steps": result.step, "batch_size": per_step, "learning_rate": args.learning_rate,
                         "processes": accelerator.num_processes, "seed": args.seed, "binarize": args.binarize,
                         # evaluation and encoding take the centre square at the config's image_size and channels
                         "augmentation": dataclasses.asdict(dataclass_from_arguments(DataAugmentation, args))},
        }
        unwrapped.save_pretrained(output_dir, state_dict=state_dict)
        return [output_dir / "model.safetensors", *write_grids(accelerator, model, grids_of, output_dir, "")]

    summary = {"model": args.model, "dataset": args.dataset, **result.summary()}
    return finish_training(accelerator, args, model, summary, save, compare=(unwrapped, loss_fn), ema=state.ema,
                           push=lambda repo, token: unwrapped.push_to_hub(repo, token=token))


if __name__ == "__main__":
    run_script(main)
