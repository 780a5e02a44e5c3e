"""Train a stage-1 model (VQ-VAE, VAE or CVAE) on 1..N processes.

    accelerate launch -m stage1_tokenizer.train --model vqvae --dataset embedded --output_dir runs/vqvae

The final model is written with `save_pretrained` into `--output_dir`; checkpoints go to
`--output_dir/checkpoints/checkpoint-STEP`, grids to `--output_dir/samples/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vqgen.cli import (add_dataclass_arguments, dataclass_from_arguments, exit_on, flag_name, import_plugins,
                       option, parse_arguments)

from . import CVAE, VAE, VQVAE, PretrainedModel, codebook_usage
from .configs import AutoencoderConfig, CVAEConfig, VAEConfig, VQVAEConfig
from .losses import LOSSES, LossConfigurationError, LossSum, build_loss
from .presets import add_preset_argument
from .quantizers import QUANTIZERS
from vqgen.checkpointing import isolated_rng
from vqgen.distributed import leave_after_distributed_run
from vqgen.data import (DATA_ERRORS, DEFAULT_DATASET, DataAugmentation, ImageDataset, images_to_tensor,
                        load_image_dataset, load_image_stream, spread_indices)
from vqgen.image_grid import class_grid_labels, save_image_grid, save_reconstruction_grid
from vqgen.image_metrics import psnr_from_mse
from vqgen.training import (
    add_training_args,
    check_training_args,
    finish_step,
    make_accelerator,
    mean_finite_loss,
    model_state_dict,
    auxiliary_step,
    optimizer_step,
    prepare_training,
    sharded_loader,
    stop_on_signals,
)

MODELS: dict[str, type[PretrainedModel]] = {"vqvae": VQVAE, "vae": VAE, "cvae": CVAE}


@dataclass
class Stage1Arguments:
    """What to train on what; the architecture, quantiser and loss options come from their own configs."""

    model: Literal["vqvae", "vae", "cvae"] = option("vqvae", "which stage-1 model to train")
    dataset: str = option(DEFAULT_DATASET, "'embedded' (5,000 MNIST digits shipped with the install), a folder of MNIST "
                                           "IDX files, an imagefolder tree, or a Hub dataset id such as ylecun/mnist")
    image_size: int | None = option(None, "resize images to this side (default: the dataset's)")
    channels_in: int | None = option(None, "convert images to 1 or 3 channels", choices=lambda: [1, 3])
    quantizer: str = option("vq", "the VQ-VAE's quantiser", choices=lambda: sorted(QUANTIZERS))
    extra_losses: list[str] = option(default_factory=list, help="losses added to the model's own",
                                     choices=lambda: sorted(LOSSES))
    streaming: bool = option(False, "stream the dataset (a Hub id, or a folder of Parquet / WebDataset shards) instead "
                                    "of indexing it: for data larger than the disk cache; needs --image_size and "
                                    "--channels_in")
    shuffle_buffer: int = option(10_000, "with --streaming: examples in the shuffle buffer (0: stream order)")
    skip_bad_images: bool = option(False, "leave out unusable image files (empty, not an image, cut short), with a "
                                          "warning naming them, instead of refusing the dataset")
    binarize: bool = option(False, "dynamic binarisation: every batch (train and test) becomes x ~ Bernoulli(pixel); the "
                                   "setting of the published MNIST likelihood tables (needs --likelihood bernoulli)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import_plugins(argv)
    p = argparse.ArgumentParser(
        prog="accelerate launch -m stage1_tokenizer.train",
        description="Train a VQ-VAE tokenizer, or a VAE/CVAE baseline, on an image dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(p, output_dir="runs/stage1", batch_size=128, learning_rate=1e-3, weight_decay=0.0)
    add_dataclass_arguments(p.add_argument_group("data and model"), Stage1Arguments)
    add_dataclass_arguments(p.add_argument_group("data augmentation (training only)"), DataAugmentation)
    geometry = ("image_size", "image_channels", "class_names")
    add_dataclass_arguments(p.add_argument_group("architecture (shared encoder/decoder)"), AutoencoderConfig,
                            exclude=geometry)
    add_dataclass_arguments(p.add_argument_group("VQ-VAE"), VQVAEConfig, exclude=(*geometry, *_base_fields(), "quantizer"))
    for name, quantizer in QUANTIZERS.items():
        add_dataclass_arguments(p.add_argument_group(f"quantizer {name}"), quantizer.config_class, exclude=("type",))
    vae_only = ("binarized",)
    add_dataclass_arguments(p.add_argument_group("VAE / CVAE"), CVAEConfig,
                            exclude=(*geometry, *_base_fields(), "num_classes", *vae_only))
    for name, loss in LOSSES.items():
        if dataclasses.fields(loss.config_class):
            add_dataclass_arguments(p.add_argument_group(f"loss {name}"), loss.config_class)

    add_preset_argument(p, argv)
    args = parse_arguments(p, argv)
    check_training_args(p, args)
    # A VQ-VAE given the options of a quantiser it does not use would silently ignore them: refuse.
    # (The VAE family has ignored the VQ options since vqgen 0.1, and still does.) Given means away from the
    # parser's default, which a --preset sets: `--preset cifar10 --quantizer fsq` leaves its VQ options unused.
    for name, quantizer in QUANTIZERS.items():
        changed = [f"--{flag_name(f)}" for f in dataclasses.fields(quantizer.config_class)
                   if f.name != "type" and getattr(args, flag_name(f)) != p.get_default(flag_name(f))]
        if changed and args.model == "vqvae" and name != args.quantizer:
            p.error(f"{', '.join(changed)} set(s) the {name!r} quantiser, but this run uses --quantizer {args.quantizer}")
    if args.model != "vqvae" and args.quantizer != "vq":
        p.error(f"--quantizer {args.quantizer} is for --model vqvae; a {args.model} has no quantiser")
    for name in args.extra_losses:
        if args.model not in LOSSES[name].models:
            p.error(f"--extra_losses {name} applies to {sorted(LOSSES[name].models)}, not --model {args.model}")
    if args.binarize and (args.model == "vqvae" or args.likelihood != "bernoulli"):
        p.error("--binarize is for the VAE family with --likelihood bernoulli (a binary image needs a binary likelihood)")
    return args


def _base_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(AutoencoderConfig))


def build_model(args: argparse.Namespace, image_size: int, image_channels: int, names: list[str] | None) -> PretrainedModel:
    geometry: dict[str, Any] = dict(image_size=image_size, image_channels=image_channels, class_names=names)
    if args.model == "vqvae":
        quantizer = dataclass_from_arguments(QUANTIZERS[args.quantizer].config_class, args)
        return VQVAE(dataclass_from_arguments(VQVAEConfig, args, quantizer=quantizer, **geometry))
    if args.model == "cvae":
        if names is None:
            raise SystemExit(f"--model cvae needs a labelled dataset; {args.dataset!r} has no labels.")
        return CVAE(dataclass_from_arguments(CVAEConfig, args, num_classes=len(names), binarized=args.binarize,
                                             **geometry))
    return VAE(dataclass_from_arguments(VAEConfig, args, binarized=args.binarize, **geometry))


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
    log = accelerator.print

    train_set, test_set = load_splits(args, accelerator)
    names = train_set.class_names
    c, h, _ = train_set.image_shape
    model = build_model(args, h, c, names)
    sizes = "streamed" if args.streaming else f"{len(train_set):,} train / {len(test_set):,} test images"
    log(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{sizes} of {c}x{h}x{h}; {accelerator.num_processes} process(es)")
    loss_fn = build_training_loss(args, model).to(accelerator.device)
    state = prepare_training(accelerator, model, train_set, None, args, auxiliary=loss_fn.optimizer_groups())
    model, step = state.model, state.step
    test_loader = sharded_loader(accelerator, test_set, args.eval_batch_size, args)
    grids_of = send_to_device(grid_batch(test_set), accelerator.device)

    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    evaluated_at = None
    model.train()
    start = time.time()
    for batch in state.batches(args.gradient_accumulation_steps) if step < args.max_steps else ():
        images, labels = batch_to_inputs(batch, args.binarize)
        with accelerator.accumulate(model):
            out = model(images, labels)
            terms = loss_fn(out, images, step)
            optimizer_step(accelerator, state, terms.loss, args.max_grad_norm)
            auxiliary_step(accelerator, state, lambda: loss_fn.auxiliary_loss(out, images, step), step,
                           args.max_grad_norm)
        if not accelerator.sync_gradients:
            continue
        step += 1
        loss = mean_finite_loss(accelerator, terms.loss, step)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4g}")
        if step % args.eval_steps == 0 or step == args.max_steps:
            with isolated_rng(accelerator.device):
                metrics, evaluated_at = evaluate(accelerator, model, loss_fn, test_loader, step, args.binarize), step
                if accelerator.is_main_process:
                    write_grids(accelerator, model, grids_of, output_dir / "samples", f"_step{step:07d}")
            record = {"step": step, "train/loss": loss, "elapsed_s": round(time.time() - start, 1), **metrics}
            if accelerator.is_main_process:
                with (output_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
            progress.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if finish_step(accelerator, args, step, start, progress.write):
            break
    progress.close()

    if evaluated_at != step:  # a run that stopped on time or signal; one that reached --max_steps just did
        metrics = evaluate(accelerator, model, loss_fn, test_loader, step, args.binarize)
    unwrapped = accelerator.unwrap_model(model)
    summary: dict[str, Any] = {"model": args.model, "dataset": args.dataset, "steps": step, **metrics,
                               "train_seconds": round(time.time() - start, 1)}
    # Every process contributes one row, so this both proves who took part and checks that their
    # weights, buffers included (a VQ codebook and its EMA statistics, a loss's own parameters), agree.
    states = [*unwrapped.state_dict().values(), *loss_fn.state_dict().values()]
    flat = torch.cat([t.detach().float().flatten() for t in states])
    rows = accelerator.gather(flat[None])
    summary["processes_seen"] = rows.shape[0]
    summary["weights_max_abs_diff_across_processes"] = (rows - rows[:1]).abs().max().item()
    state_dict = model_state_dict(accelerator, model)
    if accelerator.is_main_process:
        per_step = args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        unwrapped.card_data = {
            "dataset": args.dataset,
            "metrics": {k.removeprefix("test/"): v for k, v in metrics.items()},
            "training": {"steps": step, "batch_size": per_step, "learning_rate": args.learning_rate,
                         "processes": accelerator.num_processes, "seed": args.seed, "binarize": args.binarize,
                         # evaluation and encoding take the centre square at the config's image_size and channels
                         "augmentation": dataclasses.asdict(dataclass_from_arguments(DataAugmentation, args))},
        }
        unwrapped.save_pretrained(output_dir, state_dict=state_dict)
        grids = write_grids(accelerator, model, grids_of, output_dir, "")
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(json.dumps(summary))
        log("wrote " + ", ".join(str(p) for p in [output_dir / "model.safetensors", *grids]))
        if args.push_to_hub:
            log(f"pushed: {unwrapped.push_to_hub(args.hub_model_id, token=args.hub_token)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    with stop_on_signals(), exit_on(*DATA_ERRORS):
        main(sys.argv[1:])
    leave_after_distributed_run()
