"""Train a GPT-style prior over a tokenizer's code sequences on 1..N processes.

    accelerate launch -m stage2_prior.train --tokenizer runs/vqvae --dataset embedded --output_dir runs/prior

Images are encoded once into a cached code dataset; training reads only codes. The final prior is
written with `save_pretrained` into `--output_dir`; checkpoints go to `--output_dir/checkpoints/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from stage1_tokenizer import VQVAE
from vqgen.checkpointing import isolated_rng
from vqgen.distributed import leave_after_distributed_run
from vqgen.cli import (add_dataclass_arguments, dataclass_from_arguments, exit_on, import_plugins, option,
                       parse_arguments)
from vqgen.data import DATA_ERRORS, DEFAULT_DATASET, class_names
from vqgen.image_grid import class_grid_labels, save_image_grid
from vqgen.training import (add_training_args, check_training_args, finish_step, make_accelerator,
                                       mean_finite_loss, model_state_dict, optimizer_step, prepare_training, stop_on_signals)

from .architectures import ARCHITECTURES
from .codes import DEFAULT_CACHE_DIR, encode_dataset
from .prior import TokenizerSpec, build_prior, prior_spec
from .saving import push_prior, save_prior
from .sampling import sample_codes
from .scoring import sequence_nll
from .vocabulary import PriorVocabulary


@dataclass
class PriorDataArguments:
    tokenizer: str | None = option(None, "folder or Hub id of a trained VQ-VAE (stage1_tokenizer.train); required")
    dataset: str = option(DEFAULT_DATASET, "any dataset spec stage 1 accepts (see its --help)")
    cache_dir: str = option(str(DEFAULT_CACHE_DIR), "where encoded code datasets are cached")
    code_views: Literal["center", "flip", "ten_crop"] = option(
        "center", "training sequences per image: its centre crop; also its mirror image (2x); or LlamaGen's ten crops "
                  "of the image enlarged by 1/8 (10x). The test split is always the centre crop")
    unconditional: bool = option(False, "ignore the labels even if the dataset has them")
    label_dropout: float = option(0.1, "probability of replacing the class by the null class (enables "
                                       "classifier-free guidance)")
    sample_steps: int = option(1000, "decode a sample grid every N steps; 0 disables")


@dataclass
class PriorModelArguments:
    """The prior's shape on the command line, passed to `build_prior` as keywords."""

    architecture: str = option("gpt2", "transformers model family (stage2_prior.architectures)",
                               choices=lambda: sorted(ARCHITECTURES))
    num_layers: int = option(6, "transformer blocks")
    hidden_size: int = option(256, "model width")
    num_heads: int = option(8, "attention heads")
    dropout: float = option(0.1, "dropout in attention, residual and embeddings")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import_plugins(argv)
    p = argparse.ArgumentParser(
        prog="accelerate launch -m stage2_prior.train",
        description="Train an autoregressive prior (a transformers causal LM) over a VQ-VAE's codes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_training_args(p, output_dir="runs/prior", batch_size=64, learning_rate=5e-4, weight_decay=0.01)
    add_dataclass_arguments(p.add_argument_group("data"), PriorDataArguments)
    add_dataclass_arguments(p.add_argument_group("model"), PriorModelArguments)
    args = parse_arguments(p, argv)
    check_training_args(p, args)
    if not args.tokenizer:
        p.error("--tokenizer is required: the folder or Hub id of a trained VQ-VAE (stage1_tokenizer.train)")
    if not 0 <= args.label_dropout < 1:
        p.error(f"--label_dropout must lie in [0, 1), got {args.label_dropout}")
    return args


def drop_labels(labels: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """`b` labels with each replaced by -1 (the null class) with `probability`: what teaches guidance."""
    drop = torch.rand(labels.shape, generator=generator, device="cpu").to(labels.device) < probability
    return torch.where(drop, -1, labels)


@torch.no_grad()
def evaluate(accelerator: Accelerator, prior: torch.nn.Module, loader: DataLoader, vocab: PriorVocabulary, conditional: bool,
             pixels_per_image: int) -> dict[str, float]:
    """Held-out negative log-likelihood of the codes: nats and bits per token, bits per pixel-dimension."""
    prior.eval()
    total_nll, total_tokens, total_images = 0.0, 0, 0
    for batch in loader:
        ids = vocab.sequences(batch["codes"], batch.get("label") if conditional else None)
        nll = accelerator.gather_for_metrics(sequence_nll(prior, ids))
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
    labels = class_grid_labels(num_classes)
    n = labels.shape[0] if labels is not None else 64
    generator = torch.Generator().manual_seed(seed)
    codes = sample_codes(prior, n, class_labels=labels, generator=generator,
                         guidance_scale=2.0 if num_classes else 1.0)
    return save_image_grid(tokenizer.detokenize(codes), path, nrow=8)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    output_dir = Path(args.output_dir)
    log = accelerator.print

    tokenizer = VQVAE.from_pretrained(args.tokenizer).to(accelerator.device)
    spec = TokenizerSpec.from_tokenizer(tokenizer, args.tokenizer)
    # every process encodes its part of each split into a shard of the cache (see encode_dataset)
    train_codes = encode_dataset(tokenizer, args.dataset, "train", state=accelerator, cache_dir=args.cache_dir,
                                 num_workers=args.dataloader_num_workers, views=args.code_views,
                                 max_samples=args.max_train_samples)
    test_codes = encode_dataset(tokenizer, args.dataset, "test", state=accelerator, cache_dir=args.cache_dir,
                                num_workers=args.dataloader_num_workers,
                                max_samples=args.max_eval_samples)
    names = None if args.unconditional else class_names(train_codes)
    if names is None:
        train_codes = train_codes.remove_columns([c for c in ["label"] if c in train_codes.column_names])
        test_codes = test_codes.remove_columns([c for c in ["label"] if c in test_codes.column_names])
    prior = build_prior(spec, names, **dataclasses.asdict(dataclass_from_arguments(PriorModelArguments, args)))
    vocab = prior_spec(prior).vocabulary
    pixels = spec.image_channels * spec.image_size**2
    log(f"prior: {sum(p.numel() for p in prior.parameters()):,} parameters, vocabulary {vocab.size}, sequence "
        f"1+{spec.num_codes}; {len(train_codes):,} train / {len(test_codes):,} test sequences; "
        f"{'classes ' + str(len(names)) if names else 'unconditional'}; {accelerator.num_processes} process(es)")
    state = prepare_training(accelerator, prior, train_codes, test_codes, args)
    prior, step = state.model, state.step
    unwrapped = accelerator.unwrap_model(prior)

    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train prior")
    evaluated_at = None
    start, tokens_seen = time.time(), 0
    prior.train()
    for batch in state.batches(args.gradient_accumulation_steps) if step < args.max_steps else ():
        # label dropout draws from a generator keyed by (seed, step, rank): a resumed run drops the same labels
        dropout_generator = torch.Generator().manual_seed((args.seed * 1_000_003 + step) * 1_009 + accelerator.process_index)
        labels = drop_labels(batch["label"], args.label_dropout, dropout_generator) if names else None
        ids = vocab.sequences(batch["codes"], labels)
        with accelerator.accumulate(prior):
            loss = prior(input_ids=ids, labels=ids).loss
            optimizer_step(accelerator, state, loss, args.max_grad_norm)
        tokens_seen += (ids.shape[1] - 1) * ids.shape[0] * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        step += 1
        mean_loss = mean_finite_loss(accelerator, loss, step)
        progress.update(1)
        progress.set_postfix(loss=f"{mean_loss:.4f}")
        if step % args.eval_steps == 0 or step == args.max_steps:
            with isolated_rng(accelerator.device):
                metrics, evaluated_at = evaluate(accelerator, prior, state.test_loader, vocab, bool(names), pixels), step
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
        if finish_step(accelerator, args, step, start, progress.write):
            break
    progress.close()
    train_seconds = time.time() - start

    if evaluated_at != step:  # a run that stopped on time or signal; one that reached --max_steps just did
        metrics = evaluate(accelerator, prior, state.test_loader, vocab, bool(names), pixels)
    summary: dict[str, Any] = {"tokenizer": args.tokenizer, "dataset": args.dataset, "steps": step, **metrics,
                               "train_seconds": round(train_seconds, 1),
                               "train_tokens_per_second": round(tokens_seen / max(train_seconds, 1e-9), 1),
                               "processes_seen": accelerator.gather(torch.ones(1, device=accelerator.device)).shape[0]}
    state_dict = model_state_dict(accelerator, prior)
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
    with stop_on_signals(), exit_on(*DATA_ERRORS):
        main(sys.argv[1:])
    leave_after_distributed_run()
