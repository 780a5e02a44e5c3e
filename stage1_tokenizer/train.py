"""Train a stage-1 model (VQ-VAE, VAE or CVAE) on 1..N processes.

    accelerate launch -m stage1_tokenizer.train --model vqvae --dataset embedded --output_dir runs/vqvae

The final model is written with `save_pretrained` into `--output_dir`; checkpoints go to
`--output_dir/checkpoints/checkpoint-STEP`, grids to `--output_dir/samples/`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import CVAE, VAE, VQVAE, PretrainedModel, codebook_usage
from vqgen.checkpointing import isolated_rng
from vqgen.data import DEFAULT_DATASET, class_names, images_to_tensor, load_image_dataset
from vqgen.image_grid import save_image_grid, save_reconstruction_grid
from vqgen.image_metrics import psnr_from_mse
from vqgen.training import (
    add_training_args,
    check_training_args,
    finish_step,
    make_accelerator,
    mean_finite_loss,
    optimizer_step,
    prepare_training,
    stop_on_signals,
)

MODELS: dict[str, type[PretrainedModel]] = {"vqvae": VQVAE, "vae": VAE, "cvae": CVAE}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="accelerate launch -m stage1_tokenizer.train",
        description="Train a VQ-VAE tokenizer, or a VAE/CVAE baseline, on an image dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(p, output_dir="runs/stage1", batch_size=128, learning_rate=1e-3, weight_decay=0.0)
    g = p.add_argument_group("data and model")
    g.add_argument("--model", choices=sorted(MODELS), default="vqvae", help="which stage-1 model to train")
    g.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="'embedded' (5,000 MNIST digits shipped with the install), a folder of MNIST IDX files, "
                        "an imagefolder tree, or a Hub dataset id such as ylecun/mnist")
    g.add_argument("--image_size", type=int, default=None, help="resize images to this side (default: the dataset's)")
    g.add_argument("--channels_in", type=int, choices=[1, 3], default=None, help="convert images to 1 or 3 channels")

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
    g.add_argument("--binarize", action="store_true",
                   help="dynamic binarisation: every batch (train and test) becomes x ~ Bernoulli(pixel); the "
                        "setting of the published MNIST likelihood tables (needs --likelihood bernoulli)")

    args = p.parse_args(argv)
    check_training_args(p, args)
    if args.binarize and (args.model == "vqvae" or args.likelihood != "bernoulli"):
        p.error("--binarize is for the VAE family with --likelihood bernoulli (a binary image needs a binary likelihood)")
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
    vae: dict[str, Any] = dict(latent=args.latent, latent_dim=args.latent_dim, kl_weight=args.kl_weight,
                               likelihood=args.likelihood, binarized=args.binarize)
    if args.model == "cvae":
        if names is None:
            raise SystemExit(f"--model cvae needs a labelled dataset; {args.dataset!r} has no labels.")
        return CVAE(num_classes=len(names), **vae, **common)
    return VAE(**vae, **common)


def batch_to_inputs(batch: dict[str, torch.Tensor], binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = images_to_tensor(batch["image"])
    # A fresh draw every time the batch is seen, so the model cannot overfit one binarisation.
    return (torch.bernoulli(images) if binarize else images), batch.get("label")


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader, binarize: bool = False) -> dict[str, float]:
    """Test-split metrics, combined over processes: MSE, PSNR, the loss terms, usage/perplexity for VQ."""
    unwrapped = accelerator.unwrap_model(model)
    model.eval()
    sums: dict[str, float] = {}
    per_image_mse, all_codes = [], []
    count = 0
    for batch in loader:
        images, labels = batch_to_inputs(batch, binarize)
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
    metrics["test/psnr"] = psnr_from_mse(mse).mean().item()
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
    accelerator = make_accelerator(args)
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
    log(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(train_set):,} train / {len(test_set):,} test images of {c}x{h}x{h}; {accelerator.num_processes} process(es)")
    state = prepare_training(accelerator, model, train_set, test_set, args)
    model, step = state.model, state.step
    grid_batch = next(iter(state.test_loader))

    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    model.train()
    start = time.time()
    for batch in state.batches(args.gradient_accumulation_steps) if step < args.max_steps else ():
        images, labels = batch_to_inputs(batch, args.binarize)
        with accelerator.accumulate(model):
            out = model(images, labels)
            optimizer_step(accelerator, state, out.loss, args.max_grad_norm)
        if not accelerator.sync_gradients:
            continue
        step += 1
        loss = mean_finite_loss(accelerator, out.loss, step)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4g}")
        if step % args.eval_steps == 0 or step == args.max_steps:
            with isolated_rng(accelerator.device):
                metrics = evaluate(accelerator, model, state.test_loader, args.binarize)
                if accelerator.is_main_process:
                    write_grids(accelerator, model, grid_batch, output_dir / "samples", f"_step{step:07d}")
            record = {"step": step, "train/loss": loss, "elapsed_s": round(time.time() - start, 1), **metrics}
            if accelerator.is_main_process:
                with (output_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
            progress.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if finish_step(accelerator, args, step, start, progress.write):
            break
    progress.close()

    metrics = evaluate(accelerator, model, state.test_loader, args.binarize)
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
        per_step = args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        unwrapped.card_data = {
            "dataset": args.dataset,
            "metrics": {k.removeprefix("test/"): v for k, v in metrics.items()},
            "training": {"steps": step, "batch_size": per_step, "learning_rate": args.learning_rate,
                         "processes": accelerator.num_processes, "seed": args.seed, "binarize": args.binarize},
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
    with stop_on_signals():
        main(sys.argv[1:])
