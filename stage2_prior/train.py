"""Train a GPT-style prior over a tokenizer's code sequences on 1..N processes.

    accelerate launch -m stage2_prior.train --tokenizer runs/vqvae --dataset embedded --output_dir runs/prior

Images are encoded once into a cached code dataset; training reads only codes. The final prior is
written with `save_pretrained` into `--output_dir`; checkpoints go to `--output_dir/checkpoints/`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from stage1_tokenizer import VQVAE
from vqgen.cli import add_dataclass_arguments, dataclass_from_arguments
from vqgen.fields import option
from vqgen.data import DEFAULT_DATASET, class_names
from vqgen.image_grid import class_grid_labels, save_image_grid
from vqgen.tracking import TrainingWindow, log_images
from vqgen.training import make_accelerator, parse_training_args, prepare_training, training_parser
from vqgen.training_loop import finish_training, run_script, train_loop

from .architectures import ARCHITECTURES
from .codes import DEFAULT_CACHE_DIR, encode_dataset
from .prior import TokenizerSpec, build_prior, finetuning_prior, prior_spec
from .saving import push_prior, save_prior
from .sampling import sample_codes
from .scoring import held_out_nll


TRACKED_SAMPLE_ROWS = 4  # of the sample grid logged to the trackers at each evaluation


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
    p = training_parser("stage2_prior.train", "Train an autoregressive prior (a transformers causal LM) over a VQ-VAE's "
                        "codes.", argv, output_dir="runs/prior", batch_size=64, learning_rate=5e-4, weight_decay=0.01)
    add_dataclass_arguments(p.add_argument_group("data"), PriorDataArguments)
    add_dataclass_arguments(p.add_argument_group("model"), PriorModelArguments)
    args = parse_training_args(p, argv)
    if not args.tokenizer:
        p.error("--tokenizer is required: the folder or Hub id of a trained VQ-VAE (stage1_tokenizer.train)")
    if not 0 <= args.label_dropout < 1:
        p.error(f"--label_dropout must lie in [0, 1), got {args.label_dropout}")
    shape = [f"--{f.name}" for f in dataclasses.fields(PriorModelArguments) if getattr(args, f.name) != p.get_default(f.name)]
    if args.init_from and shape:
        p.error(f"{', '.join(shape)}: with --init_from the prior's architecture is the trained one's (its config.json); "
                "leave them out")
    return args


def drop_labels(labels: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """`b` labels with each replaced by -1 (the null class) with `probability`: what teaches guidance."""
    drop = torch.rand(labels.shape, generator=generator, device="cpu").to(labels.device) < probability
    return torch.where(drop, -1, labels)


@torch.no_grad()
def write_samples(prior: torch.nn.Module, tokenizer: VQVAE, path: Path, num_classes: int, seed: int,
                  rows: int | None = None) -> Path:
    """A grid of samples, 8 a row: a row per class on a conditional prior (or `rows` classes spread
    over them), else 8 rows (or `rows`); `prior` is left in training mode."""
    prior.eval()
    labels = class_grid_labels(num_classes)
    if labels is not None and rows is not None and rows < num_classes:
        labels = torch.linspace(0, num_classes - 1, rows).round().long().repeat_interleave(8)
    n = labels.shape[0] if labels is not None else 8 * (rows or 8)
    generator = torch.Generator().manual_seed(seed)
    codes = sample_codes(prior, n, class_labels=labels, generator=generator,
                         guidance_scale=2.0 if num_classes else 1.0)
    prior.train()
    return save_image_grid(tokenizer.detokenize(codes), path, nrow=8)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    output_dir = Path(args.output_dir)

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
    if args.init_from:  # resuming too: the same prior is rebuilt, then the checkpoint's weights replace its own
        try:
            prior = finetuning_prior(args.init_from, tokenizer, spec, names, accelerator.print)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--init_from {args.init_from}: {e}") from None
    else:
        prior = build_prior(spec, names, **dataclasses.asdict(dataclass_from_arguments(PriorModelArguments, args)))
    vocab = prior_spec(prior).vocabulary
    pixels = spec.image_channels * spec.image_size**2
    accelerator.print(
        f"prior: {sum(p.numel() for p in prior.parameters()):,} parameters, vocabulary {vocab.size}, sequence "
        f"1+{spec.num_codes}; {len(train_codes):,} train / {len(test_codes):,} test sequences; "
        f"{'classes ' + str(len(names)) if names else 'unconditional'}; {accelerator.num_processes} process(es)")
    state = prepare_training(accelerator, prior, train_codes, test_codes, args)
    prior, unwrapped = state.model, accelerator.unwrap_model(state.model)
    tokens_seen = 0

    def compute_loss(batch: dict[str, torch.Tensor], step: int):
        nonlocal tokens_seen
        # label dropout draws from a generator keyed by (seed, step, rank): a resumed run drops the same labels
        dropout_generator = torch.Generator().manual_seed((args.seed * 1_000_003 + step) * 1_009 + accelerator.process_index)
        labels = drop_labels(batch["label"], args.label_dropout, dropout_generator) if names else None
        ids = vocab.sequences(batch["codes"], labels)
        tokens_seen += (ids.shape[1] - 1) * ids.shape[0] * accelerator.num_processes
        loss = prior(input_ids=ids, labels=ids).loss
        window.add({"nats_per_token": loss}, (ids.shape[1] - 1) * ids.shape[0])
        return loss, None

    def samples(step: int, evaluated: bool) -> None:
        due = args.sample_steps and step % args.sample_steps == 0
        if due:
            with state.averaged_weights():
                path = write_samples(unwrapped, tokenizer, output_dir / "samples" / f"samples_step{step:07d}.png",
                                     vocab.num_classes, args.seed)
        if evaluated and window.active:  # the trackers see a few rows at every evaluation
            if not due:
                with state.averaged_weights():
                    path = write_samples(unwrapped, tokenizer, output_dir / "samples" / f"eval_step{step:07d}.png",
                                         vocab.num_classes, args.seed, rows=TRACKED_SAMPLE_ROWS)
            log_images(accelerator, {"samples": path}, step)

    window = TrainingWindow(accelerator, "tokens")

    result = train_loop(accelerator, args, state, compute_loss, hook=samples, desc="train prior", window=window,
                        project_name="stage2_prior",
                        evaluate=lambda step: held_out_nll(accelerator, prior, state.test_loader, vocab, bool(names), pixels),
                        loss_name="train/nats_per_token",
                        record_extras=lambda seconds: {"train/tokens_per_second": round(tokens_seen / seconds, 1)})

    def save(state_dict: dict[str, torch.Tensor]) -> list[Path]:
        unwrapped.config.vqgen["training"] = {
            "dataset": args.dataset, "steps": result.step, "seed": args.seed, "label_dropout": args.label_dropout,
            "metrics": {k.removeprefix("test/"): v for k, v in result.metrics.items()},
        }
        save_prior(unwrapped, output_dir, state_dict=state_dict)
        return [output_dir / "model.safetensors",
                write_samples(unwrapped, tokenizer, output_dir / "samples.png", vocab.num_classes, args.seed)]

    summary = {"tokenizer": args.tokenizer, "dataset": args.dataset, **result.summary(),
               "train_tokens_per_second": round(tokens_seen / max(result.seconds, 1e-9), 1)}
    return finish_training(accelerator, args, prior, summary, save, ema=state.ema,
                           push=lambda repo, token: push_prior(unwrapped, repo, token=token))


if __name__ == "__main__":
    run_script(main)
