"""Train a GPT-style prior over a tokenizer's code sequences on 1..N processes.

    accelerate launch -m stage2_prior.train --tokenizer runs/vqvae --dataset embedded --output_dir runs/prior

Images are encoded once into a cached code dataset; training reads only codes. The final prior is
written with `save_pretrained` into `--output_dir`; checkpoints go to `--output_dir/checkpoints/`.
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

from stage1_tokenizer import VQVAE
from stage1_tokenizer.checkpointing import find_checkpoint, isolated_rng, out_of_time, prune_checkpoints, save_checkpoint
from stage1_tokenizer.data import DEFAULT_DATASET, class_names
from stage1_tokenizer.image_grid import save_image_grid

from .codes import DEFAULT_CACHE_DIR, encode_dataset
from .prior import TokenizerSpec, build_prior, prior_spec
from .saving import push_prior, save_prior
from .sampling import sample_codes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="accelerate launch -m stage2_prior.train",
        description="Train an autoregressive prior (a transformers causal LM) over a VQ-VAE's codes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("run")
    g.add_argument("--tokenizer", required=True, help="folder or Hub id of a trained VQ-VAE (stage1_tokenizer.train)")
    g.add_argument("--dataset", default=DEFAULT_DATASET, help="any dataset spec stage 1 accepts (see its --help)")
    g.add_argument("--output_dir", default="runs/prior", help="where the final prior, checkpoints and grids go")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, data order, label dropout and sampling")
    g.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training images")
    g.add_argument("--max_eval_samples", type=int, default=None, help="evaluate on only the first N test images")
    g.add_argument("--cache_dir", default=str(DEFAULT_CACHE_DIR), help="where encoded code datasets are cached")
    g.add_argument("--unconditional", action="store_true", help="ignore the labels even if the dataset has them")
    g.add_argument("--label_dropout", type=float, default=0.1,
                   help="probability of replacing the class by the null class (enables classifier-free guidance)")

    g = p.add_argument_group("model")
    g.add_argument("--architecture", choices=["gpt2", "llama"], default="gpt2", help="transformers model family")
    g.add_argument("--num_layers", type=int, default=6, help="transformer blocks")
    g.add_argument("--hidden_size", type=int, default=256, help="model width")
    g.add_argument("--num_heads", type=int, default=8, help="attention heads")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout in attention, residual and embeddings")

    g = p.add_argument_group("optimisation")
    g.add_argument("--max_steps", type=int, default=2000, help="optimizer steps")
    g.add_argument("--max_train_minutes", type=float, default=None,
                   help="also stop (evaluate, save) once training has run this long")
    g.add_argument("--batch_size", type=int, default=64, help="sequences per process per micro-batch")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--learning_rate", type=float, default=5e-4, help="peak AdamW learning rate")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--lr_scheduler", default="cosine", help="any transformers.get_scheduler name")
    g.add_argument("--warmup_steps", type=int, default=100, help="linear warm-up steps")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping; 0 disables")
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="overrides the accelerate config / launch flag")

    g = p.add_argument_group("evaluation, checkpoints, Hub")
    g.add_argument("--eval_steps", type=int, default=500, help="held-out loss every N steps")
    g.add_argument("--eval_batch_size", type=int, default=256, help="sequences per process per evaluation batch")
    g.add_argument("--sample_steps", type=int, default=1000, help="decode a sample grid every N steps; 0 disables")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="resumable checkpoint every N steps; 0 disables")
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep only the newest N checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--push_to_hub", action="store_true", help="push the final prior to --hub_model_id")
    g.add_argument("--hub_model_id", default=None, help="Hub repo id such as user/prior-mnist")
    g.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    args = p.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        p.error("--push_to_hub needs --hub_model_id")
    if not 0 <= args.label_dropout < 1:
        p.error(f"--label_dropout must lie in [0, 1), got {args.label_dropout}")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_steps", "eval_batch_size"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def input_ids(codes: torch.Tensor, labels: torch.Tensor | None, vocab: Any, label_dropout: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """`b L` codes -> `b 1+L` prefix + codes; with `label_dropout` some classes become the null class."""
    if labels is not None and label_dropout > 0:
        drop = torch.rand(labels.shape, generator=generator, device="cpu").to(labels.device) < label_dropout
        labels = torch.where(drop, -1, labels)
    return torch.cat([vocab.prefix(labels, codes.shape[0], codes.device), codes.long()], dim=1)


@torch.no_grad()
def evaluate(accelerator: Accelerator, prior: torch.nn.Module, loader: DataLoader, vocab: Any, conditional: bool,
             pixels_per_image: int) -> dict[str, float]:
    """Held-out negative log-likelihood of the codes: nats and bits per token, bits per pixel-dimension."""
    prior.eval()
    total_nll, total_tokens, total_images = 0.0, 0, 0
    for batch in loader:
        ids = input_ids(batch["codes"], batch.get("label") if conditional else None, vocab)
        logits = prior(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1)
        nll = accelerator.gather_for_metrics(nll)
        total_nll += nll.sum().item()
        total_images += nll.shape[0]
        total_tokens += nll.shape[0] * (ids.shape[1] - 1)
    prior.train()
    nats = total_nll / total_tokens
    return {
        "test/nats_per_token": nats,
        "test/bits_per_token": nats / math.log(2),
        "test/bits_per_pixel_dim": total_nll / total_images / math.log(2) / pixels_per_image,
    }


@torch.no_grad()
def write_samples(prior: torch.nn.Module, tokenizer: VQVAE, path: Path, num_classes: int, seed: int) -> Path:
    labels = torch.arange(num_classes).repeat_interleave(8) if num_classes else None
    n = labels.shape[0] if labels is not None else 64
    generator = torch.Generator().manual_seed(seed)
    codes = sample_codes(prior, n, class_labels=labels, generator=generator,
                         guidance_scale=2.0 if num_classes else 1.0)
    return save_image_grid(tokenizer.detokenize(codes.to(next(tokenizer.parameters()).device)), path, nrow=8)


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

    tokenizer = VQVAE.from_pretrained(args.tokenizer).to(accelerator.device)
    spec = TokenizerSpec.from_tokenizer(tokenizer, args.tokenizer)
    # every process encodes its share; rank 0 writes the cache (see encode_dataset)
    train_codes = encode_dataset(tokenizer, args.dataset, "train", state=accelerator, cache_dir=args.cache_dir,
                                 max_samples=args.max_train_samples)
    test_codes = encode_dataset(tokenizer, args.dataset, "test", state=accelerator, cache_dir=args.cache_dir,
                                max_samples=args.max_eval_samples)
    names = None if args.unconditional else class_names(train_codes)
    if names is None:
        train_codes = train_codes.remove_columns([c for c in ["label"] if c in train_codes.column_names])
        test_codes = test_codes.remove_columns([c for c in ["label"] if c in test_codes.column_names])
    prior = build_prior(spec, names, architecture=args.architecture, num_layers=args.num_layers,
                        hidden_size=args.hidden_size, num_heads=args.num_heads, dropout=args.dropout)
    vocab = prior_spec(prior).vocabulary
    pixels = spec.image_channels * spec.image_size**2
    log(f"prior: {sum(p.numel() for p in prior.parameters()):,} parameters, vocabulary {vocab.size}, sequence "
        f"1+{spec.num_codes}; {len(train_codes):,} train / {len(test_codes):,} test sequences; "
        f"{'classes ' + str(len(names)) if names else 'unconditional'}; {accelerator.num_processes} process(es)")

    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(prior.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_steps * accelerator.num_processes)
    train_loader = DataLoader(train_codes.with_format("torch"), batch_size=args.batch_size, shuffle=True, drop_last=True,
                              # its own generator: starting an epoch must not draw from the global RNG,
                              # or a resumed run (which starts mid-epoch) would be one draw out of step
                              generator=torch.Generator().manual_seed(args.seed))
    test_loader = DataLoader(test_codes.with_format("torch"), batch_size=args.eval_batch_size)
    if len(train_loader) < accelerator.num_processes * args.gradient_accumulation_steps:
        raise SystemExit(f"{len(train_codes)} training sequences are fewer than one step needs; lower --batch_size.")
    prior, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        prior, optimizer, train_loader, test_loader, scheduler
    )

    step = 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
        log(f"resumed from {checkpoint} at step {step}")

    steps_per_epoch = len(train_loader) // args.gradient_accumulation_steps
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train prior")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    unwrapped = accelerator.unwrap_model(prior)
    start, tokens_seen = time.time(), 0
    prior.train()
    while step < args.max_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        train_loader.set_epoch(epoch)
        # Resumed mid-epoch: same permutation, skip what was already seen. Skipping by iterating
        # (rather than accelerate's skip_first_batches) keeps the DataLoader's own generator, so
        # the global RNG stream (dropout, restarts) continues exactly as in an uninterrupted run.
        loader = itertools.islice(train_loader, done_in_epoch * args.gradient_accumulation_steps, None)
        for batch in loader:
            # label dropout draws from a generator keyed by (seed, step, rank): a resumed run drops the same labels
            dropout_generator = torch.Generator().manual_seed(
                (args.seed * 1_000_003 + step) * 1_009 + accelerator.process_index)
            ids = input_ids(batch["codes"], batch.get("label") if names else None, vocab, args.label_dropout,
                            dropout_generator)
            with accelerator.accumulate(prior):
                loss = prior(input_ids=ids, labels=ids).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(prior.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            tokens_seen += (ids.shape[1] - 1) * ids.shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"loss became {mean_loss} at step {step}; nothing was saved after the last "
                                         "checkpoint. Lower --learning_rate, then --resume_from_checkpoint latest.")
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            if step % args.eval_steps == 0 or step == args.max_steps:
                with isolated_rng(accelerator.device):
                    metrics = evaluate(accelerator, prior, test_loader, vocab, bool(names), pixels)
                record = {"step": step, "train/nats_per_token": mean_loss,
                          "train/tokens_per_second": round(tokens_seen / (time.time() - start), 1), **metrics}
                if accelerator.is_main_process:
                    with (output_dir / "metrics.jsonl").open("a") as f:
                        f.write(json.dumps(record) + "\n")
                progress.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            if args.sample_steps and step % args.sample_steps == 0 and accelerator.is_main_process:
                unwrapped.eval()
                with isolated_rng(accelerator.device):
                    write_samples(unwrapped, tokenizer, output_dir / "samples" / f"samples_step{step:07d}.png",
                                  vocab.num_classes, args.seed)
                unwrapped.train()
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
    train_seconds = time.time() - start

    metrics = evaluate(accelerator, prior, test_loader, vocab, bool(names), pixels)
    summary: dict[str, Any] = {"tokenizer": args.tokenizer, "dataset": args.dataset, "steps": step, **metrics,
                               "train_seconds": round(train_seconds, 1),
                               "train_tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1),
                               "processes_seen": accelerator.gather(torch.ones(1, device=accelerator.device)).shape[0]}
    state_dict = accelerator.get_state_dict(prior)
    if accelerator.is_main_process:
        unwrapped.config.vqgen["training"] = {
            "dataset": args.dataset, "steps": step, "seed": args.seed, "label_dropout": args.label_dropout,
            "metrics": {k.removeprefix("test/"): v for k, v in metrics.items()},
        }
        save_prior(unwrapped, output_dir, state_dict=state_dict)
        unwrapped.eval()
        grid = write_samples(unwrapped, tokenizer, output_dir / "samples.png", vocab.num_classes, args.seed)
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(json.dumps(summary))
        log(f"wrote {output_dir / 'model.safetensors'} and {grid}")
        if args.push_to_hub:
            log(f"pushed: {push_prior(unwrapped, args.hub_model_id, token=args.hub_token)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
