"""Train a stage-1 model (VQ-VAE, VAE or CVAE) on 1..N processes.

    accelerate launch -m stage1_tokenizer.train --model vqvae --dataset embedded --output_dir runs/vqvae

The final model is written with `save_pretrained` into `--output_dir`; checkpoints go to
`--output_dir/checkpoints/checkpoint-STEP`, grids to `--output_dir/samples/`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import CVAE, VAE, VQVAE, PretrainedModel, codebook_usage
from .checkpointing import find_checkpoint, isolated_rng, out_of_time, prune_checkpoints, save_checkpoint
from .data import DEFAULT_DATASET, class_names, images_to_tensor, load_image_dataset
from .image_grid import save_image_grid, save_reconstruction_grid

MODELS: dict[str, type[PretrainedModel]] = {"vqvae": VQVAE, "vae": VAE, "cvae": CVAE}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="accelerate launch -m stage1_tokenizer.train",
        description="Train a VQ-VAE tokenizer, or a VAE/CVAE baseline, on an image dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--model", choices=sorted(MODELS), default="vqvae", help="which stage-1 model to train")
    g.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="'embedded' (5,000 MNIST digits shipped with the install), a folder of MNIST IDX files, "
                        "an imagefolder tree, or a Hub dataset id such as ylecun/mnist")
    g.add_argument("--output_dir", default="runs/stage1", help="where the final model, checkpoints and grids go")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order and sampling")
    g.add_argument("--image_size", type=int, default=None, help="resize images to this side (default: the dataset's)")
    g.add_argument("--channels_in", type=int, choices=[1, 3], default=None, help="convert images to 1 or 3 channels")
    g.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training images")
    g.add_argument("--max_eval_samples", type=int, default=None, help="evaluate on only the first N test images")

    g = p.add_argument_group("optimisation")
    g.add_argument("--max_steps", type=int, default=2000, help="optimizer steps to train for")
    g.add_argument("--max_train_minutes", type=float, default=None,
                   help="also stop (evaluate, save) once training has run this long")
    g.add_argument("--batch_size", type=int, default=128, help="images per process per micro-batch")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--learning_rate", type=float, default=1e-3, help="peak AdamW learning rate")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--lr_scheduler", default="cosine", help="any transformers.get_scheduler name")
    g.add_argument("--warmup_steps", type=int, default=100, help="linear learning-rate warm-up steps")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping; 0 disables")
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="overrides the accelerate config / launch flag")

    g = p.add_argument_group("architecture (shared encoder/decoder)")
    g.add_argument("--channels", type=int, default=64, help="conv channels of encoder and decoder")
    g.add_argument("--num_downsamples", type=int, default=2, help="stride-2 stages: latent side = image side / 2**n")
    g.add_argument("--num_res_blocks", type=int, default=2, help="residual blocks in encoder and in decoder")

    g = p.add_argument_group("VQ-VAE")
    g.add_argument("--codebook_size", type=int, default=512, help="number of codes K")
    g.add_argument("--code_dim", type=int, default=64, help="dimension of each code")
    g.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    g.add_argument("--ema_decay", type=float, default=0.99, help="EMA codebook decay; 0 = learn codebook by gradient")
    g.add_argument("--dead_code_threshold", type=float, default=1.0,
                   help="restart codes whose EMA count per step falls below this; 0 disables")
    g.add_argument("--codebook_init", choices=["kmeans", "data", "random"], default="kmeans", help="codebook initialisation")
    g.add_argument("--l2_normalize", action="store_true", help="l2-normalised (cosine) codes")

    g = p.add_argument_group("VAE / CVAE")
    g.add_argument("--latent", choices=["flat", "grid"], default="flat", help="latent as a vector or a spatial grid")
    g.add_argument("--latent_dim", type=int, default=32, help="size of z (flat) or its channels (grid)")
    g.add_argument("--kl_weight", type=float, default=1.0, help="beta of the beta-VAE")
    g.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli", help="p(x|z)")

    g = p.add_argument_group("evaluation, checkpoints, Hub")
    g.add_argument("--eval_steps", type=int, default=500, help="evaluate on the test split every N steps")
    g.add_argument("--eval_batch_size", type=int, default=256, help="images per process per evaluation batch")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="save a resumable checkpoint every N steps; 0 disables")
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep only the newest N checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None,
                   help="a checkpoint folder, or 'latest' for the newest complete one in --output_dir/checkpoints")
    g.add_argument("--push_to_hub", action="store_true", help="push the final model to --hub_model_id")
    g.add_argument("--hub_model_id", default=None, help="Hub repo id such as user/vqvae-mnist")
    g.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    args = p.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id (e.g. --hub_model_id user/vqvae-mnist)")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_steps", "eval_batch_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def build_model(args: argparse.Namespace, image_size: int, image_channels: int, names: list[str] | None) -> PretrainedModel:
    common: dict[str, Any] = dict(
        image_size=image_size, image_channels=image_channels, channels=args.channels,
        num_downsamples=args.num_downsamples, num_res_blocks=args.num_res_blocks, class_names=names,
    )
    if args.model == "vqvae":
        return VQVAE(
            codebook_size=args.codebook_size, code_dim=args.code_dim, beta=args.beta,
            ema_decay=args.ema_decay or None, dead_code_threshold=args.dead_code_threshold,
            codebook_init=args.codebook_init, l2_normalize=args.l2_normalize, **common,
        )
    vae: dict[str, Any] = dict(latent=args.latent, latent_dim=args.latent_dim, kl_weight=args.kl_weight, likelihood=args.likelihood)
    if args.model == "cvae":
        if names is None:
            raise SystemExit(f"--model cvae needs a labelled dataset; {args.dataset!r} has no labels.")
        return CVAE(num_classes=len(names), **vae, **common)
    return VAE(**vae, **common)


def batch_to_inputs(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    return images_to_tensor(batch["image"]), batch.get("label")


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    """Test-split metrics, combined over processes: MSE, PSNR, the loss terms, usage/perplexity for VQ."""
    unwrapped = accelerator.unwrap_model(model)
    model.eval()
    sums: dict[str, float] = {}
    per_image_mse, all_codes = [], []
    count = 0
    for batch in loader:
        images, labels = batch_to_inputs(batch)
        out = model(images, labels)
        recon = unwrapped.reconstruct(images, labels)
        mse = accelerator.gather_for_metrics((recon.float() - images.float()).pow(2).flatten(1).mean(1))
        per_image_mse.append(mse)
        n = mse.shape[0]
        for name, value in out.terms().items():
            sums[name] = sums.get(name, 0.0) + value * n
        count += n
        if out.codes is not None:
            all_codes.append(accelerator.gather_for_metrics(out.codes))
    model.train()
    mse = torch.cat(per_image_mse)
    metrics = {f"test/{k}": v / count for k, v in sums.items()}
    metrics["test/mse"] = mse.mean().item()
    metrics["test/psnr"] = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()
    if all_codes:
        counts = torch.bincount(torch.cat(all_codes).flatten(), minlength=unwrapped.codebook_size)
        metrics["test/codebook_usage"], metrics["test/perplexity"] = codebook_usage(counts)
    return metrics


@torch.no_grad()
def write_grids(accelerator: Accelerator, model: torch.nn.Module, batch: dict[str, torch.Tensor], folder: Path, tag: str) -> list[Path]:
    """Reconstructions of a fixed test batch, and for the VAE family samples from the prior."""
    unwrapped = accelerator.unwrap_model(model)
    images, labels = batch_to_inputs(batch)
    images, labels = images[:32], None if labels is None else labels[:32]
    was_training = model.training
    model.eval()
    paths = [save_reconstruction_grid(images, unwrapped.reconstruct(images, labels), folder / f"reconstructions{tag}.png")]
    if isinstance(unwrapped, VAE):
        num_classes = len(unwrapped.config.class_names or []) or 10
        sample_labels = torch.arange(num_classes, device=images.device).repeat_interleave(8)
        generator = torch.Generator(device=images.device).manual_seed(0)
        samples = unwrapped.sample(sample_labels.shape[0], sample_labels if isinstance(unwrapped, CVAE) else None, generator=generator)
        paths.append(save_image_grid(samples, folder / f"samples{tag}.png", nrow=8))
    model.train(was_training)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    log = accelerator.print

    with accelerator.main_process_first():
        train_set = load_image_dataset(args.dataset, "train", image_size=args.image_size, channels=args.channels_in,
                                       max_samples=args.max_train_samples, seed=args.seed)
        test_set = load_image_dataset(args.dataset, "test", image_size=args.image_size, channels=args.channels_in,
                                      max_samples=args.max_eval_samples, seed=args.seed)
    names = class_names(train_set)
    c, h, _ = train_set.features["image"].shape
    model = build_model(args, h, c, names)
    model.card_data = {"dataset": args.dataset}
    per_step = args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    if len(train_set) < per_step:
        raise SystemExit(f"{len(train_set)} training images are fewer than one step needs ({per_step}); lower --batch_size.")
    log(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(train_set):,} train / {len(test_set):,} test images of {c}x{h}x{h}; {accelerator.num_processes} process(es)")

    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_steps * accelerator.num_processes)
    train_loader = DataLoader(train_set.with_format("torch"), batch_size=args.batch_size, shuffle=True, drop_last=True,
                              # its own generator: starting an epoch must not draw from the global RNG,
                              # or a resumed run (which starts mid-epoch) would be one draw out of step
                              generator=torch.Generator().manual_seed(args.seed))
    test_loader = DataLoader(test_set.with_format("torch"), batch_size=args.eval_batch_size)
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, test_loader, scheduler
    )
    grid_batch = next(iter(test_loader))

    step = 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
        log(f"resumed from {checkpoint} at step {step}")

    steps_per_epoch = len(train_loader) // args.gradient_accumulation_steps
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    metrics_file = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    start = time.time()
    while step < args.max_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_loader.set_epoch(epoch)
        # Resumed mid-epoch: same permutation, skip what was already seen. Skipping by iterating
        # (rather than accelerate's skip_first_batches) keeps the DataLoader's own generator, so
        # the global RNG stream (dropout, restarts) continues exactly as in an uninterrupted run.
        loader = itertools.islice(train_loader, done_in_epoch * args.gradient_accumulation_steps, None)
        for batch in loader:
            images, labels = batch_to_inputs(batch)
            with accelerator.accumulate(model):
                out = model(images, labels)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            loss = accelerator.reduce(out.loss.detach().float(), reduction="mean").item()
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss} at step {step}; nothing was saved after the last checkpoint. "
                    "Lower --learning_rate or use --mixed_precision no, then resume with --resume_from_checkpoint latest."
                )
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4g}")
            if step % args.eval_steps == 0 or step == args.max_steps:
                with isolated_rng(accelerator.device):
                    metrics = evaluate(accelerator, model, test_loader)
                    if accelerator.is_main_process:
                        write_grids(accelerator, model, grid_batch, output_dir / "samples", f"_step{step:07d}")
                record = {"step": step, "train/loss": loss, "elapsed_s": round(time.time() - start, 1), **metrics}
                if accelerator.is_main_process:
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                progress.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, step)
                if accelerator.is_main_process:
                    prune_checkpoints(output_dir, args.checkpoints_total_limit)
            if args.max_train_minutes is not None and out_of_time(accelerator, start, args.max_train_minutes):
                progress.write(f"stopping at step {step}: --max_train_minutes {args.max_train_minutes} reached")
                args.max_steps = step
            if step >= args.max_steps:
                break
    progress.close()

    metrics = evaluate(accelerator, model, test_loader)
    unwrapped = accelerator.unwrap_model(model)
    summary: dict[str, Any] = {"model": args.model, "dataset": args.dataset, "steps": step, **metrics,
                               "train_seconds": round(time.time() - start, 1)}
    # Every process contributes one row, so this both proves who took part and checks they agree.
    if isinstance(unwrapped, VQVAE):
        codebooks = accelerator.gather(unwrapped.quantizer.codebook.detach()[None])
        summary["processes_seen"] = codebooks.shape[0]
        summary["codebook_max_abs_diff_across_processes"] = (codebooks - codebooks[:1]).abs().max().item()
    else:
        summary["processes_seen"] = accelerator.gather(torch.ones(1, device=accelerator.device)).shape[0]
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped.card_data = {
            "dataset": args.dataset,
            "metrics": {k.removeprefix("test/"): v for k, v in metrics.items()},
            "training": {"steps": step, "batch_size": per_step, "learning_rate": args.learning_rate,
                         "processes": accelerator.num_processes, "seed": args.seed},
        }
        unwrapped.save_pretrained(output_dir, state_dict=state_dict)
        grids = write_grids(accelerator, model, grid_batch, output_dir, "")
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(json.dumps(summary))
        log("wrote " + ", ".join(str(p) for p in [output_dir / "model.safetensors", *grids]))
        if args.push_to_hub:
            log(f"pushed: {unwrapped.push_to_hub(args.hub_model_id, token=args.hub_token)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
