"""Named starting points of `stage1_tokenizer.train --preset NAME`, as LlamaGen names its tokenizer sizes.

A preset is plain data: a description and a set of defaults for the training script's options (a flag on the
command line, or a value in `--config FILE`, overrides it). Every preset is a VQ-VAE tokenizer.
`python -m stage1_tokenizer.presets` prints each with the parameter count of the model it builds.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import torch

from vqgen.cli import dataclass_from_arguments, read_config_file

from .configs import VQVAEConfig
from .quantizers import QUANTIZERS
from .vqvae import VQVAE


@dataclass(frozen=True)
class Preset:
    description: str
    options: dict[str, Any]  # the training script's options (`--name` without the dashes) -> values


# The CIFAR-10 network and training recipe of the cifar10 presets.
# Sized by compute, not parameters: a 32² image makes every full-resolution conv costly, so the widths grow
# as the side shrinks (32, 64, 128 channels at 32², 16², 8²) with one residual block per level, which fits
# about two epochs into 30 minutes on 2 CPU cores (docs/training.md, presets).
CIFAR10_NETWORK: dict[str, Any] = {
    "model": "vqvae", "image_size": 32, "channels_in": 3,
    "architecture": "vqgan", "channels": 32, "channel_multipliers": [1, 2, 4], "num_downsamples": 2,
    "num_res_blocks": 1, "attention_resolutions": [8], "mid_attention": True,
    "batch_size": 64, "learning_rate": 5e-4,
    "horizontal_flip": True,  # natural images, unlike digits, mean the same mirrored
}

PRESETS: dict[str, Preset] = {
    "mnist": Preset(
        "MNIST digits, 28² grey -> 7x7 codes of 512: vqgen's default conv VQ-VAE, unchanged",
        {},
    ),
    # 1,024 low-dimensional l2-normalised codes follow LlamaGen's remedy for codebook usage at small budgets.
    "cifar10": Preset(
        "CIFAR-10, 32² RGB -> 8x8 codes of 1,024 (dim 16, l2): a small vqgan network for ~30 min on 2 CPU cores, "
        "with the adversarial loss",
        {
            **CIFAR10_NETWORK,
            "code_dim": 16, "codebook_size": 1024, "l2_normalize": True,
            "max_steps": 1000, "max_train_minutes": 30.0,
            "eval_steps": 1000,  # one pass over the 10,000 test images costs minutes here: once, at the end
            # After ~a third of the run, once reconstructions have formed (taming-transformers issue 44).
            "extra_losses": ["adversarial"], "discriminator_start_step": 300,
        },
    ),
    # The cifar10 network with FSQ and no discriminator: the best CIFAR-10 tokenizer measured on 2 CPU cores in 30
    # minutes (README, Results: 24.6 dB, every one of its 1,000 codes used, a third of the plain VQ-VAE's rFD). The
    # adversarial loss, started before reconstructions form, made rFD worse at this budget.
    "cifar10-fsq": Preset(
        "CIFAR-10, 32² RGB -> 8x8 FSQ codes, levels 8 5 5 5 (1,000 codes): the cifar10 network for 30 min on 2 CPU "
        "cores, without the adversarial loss",
        {
            **CIFAR10_NETWORK,
            "code_dim": 16, "quantizer": "fsq", "fsq_levels": [8, 5, 5, 5],
            "max_steps": 5000, "max_train_minutes": 30.0, "eval_steps": 5000,
        },
    ),
    # LlamaGen's VQ-16 (its tokenizer_image/vq_model.py VQ_16 and train_vq.py defaults): ~70 M parameters.
    # The optimiser settings are LlamaGen's per-GPU share (global batch 128 on 8 GPUs, lr 1e-4, weight decay
    # 0.05, discriminator from step 20,000); its LPIPS term needs VGG16 weights here: add
    # `--extra_losses adversarial lpips --lpips_weights PATH` where they exist. Set --max_steps for your data.
    "vq16-256": Preset(
        "256² RGB -> 16x16 codes of 16,384 (dim 8, l2): the LlamaGen VQ-16 tokenizer, for GPUs",
        {
            "model": "vqvae", "image_size": 256, "channels_in": 3,
            "architecture": "vqgan", "channels": 128, "channel_multipliers": [1, 1, 2, 2, 4], "num_downsamples": 4,
            "num_res_blocks": 2, "attention_resolutions": [16], "mid_attention": True,
            "code_dim": 8, "codebook_size": 16384, "l2_normalize": True,
            "batch_size": 16, "learning_rate": 1e-4, "weight_decay": 0.05,
            "extra_losses": ["adversarial"], "discriminator_start_step": 20000,
        },
    ),
}


def add_preset_argument(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Add `--preset NAME` to `parser` and, when `argv` (or its `--config` file) names one, make that preset's
    options the parser's defaults, so that every flag given still overrides them."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="defaults for a named model and training recipe (python -m stage1_tokenizer.presets "
                             "lists them); flags given override it")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    pre.add_argument("--config")
    known = pre.parse_known_args(sys.argv[1:] if argv is None else argv)[0]
    name = known.preset or (read_config_file(known.config).get("preset") if known.config else None)
    if name not in PRESETS:  # none, or a misspelling that the full parser reports with the choices
        return
    options = PRESETS[name].options
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(set(options) - set(actions))
    if unknown:
        parser.error(f"--preset {name} sets {unknown}, which this training script does not have: a loss or "
                     "quantiser the preset needs is not registered")
    for dest, value in options.items():
        choices = actions[dest].choices
        missing = [v for v in (value if isinstance(value, list) else [value]) if choices and v not in choices]
        if missing:
            parser.error(f"--preset {name} sets --{dest} {missing}, which this install does not offer ({choices})")
    parser.set_defaults(**options)


def preset_config(name: str) -> VQVAEConfig:
    """The config of the tokenizer `train --preset name` builds, at the preset's image size and channels (the
    config's defaults, the 28² grey digits of the default dataset, where it sets none)."""
    options = PRESETS[name].options
    values = argparse.Namespace(**options)
    quantizer = QUANTIZERS[options.get("quantizer") or VQVAEConfig().quantizer.type].config_class
    geometry = {"image_channels": options["channels_in"]} if "channels_in" in options else {}
    return dataclass_from_arguments(VQVAEConfig, values, quantizer=dataclass_from_arguments(quantizer, values),
                                    **geometry)


def parameter_count(name: str) -> int:
    """Parameters of the model `train --preset name` builds (on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model = VQVAE(preset_config(name))
    return sum(p.numel() for p in model.parameters())


def as_flags(options: dict[str, Any]) -> str:
    """Options as they would be typed after `stage1_tokenizer.train`."""
    def flag(key: str, value: Any) -> str:
        if isinstance(value, bool):
            return f"--{key}" if value else f"--no-{key}"
        return " ".join([f"--{key}", *map(str, value if isinstance(value, list) else [value])])

    return " ".join(flag(key, value) for key, value in options.items())


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m stage1_tokenizer.presets",
                            description="Print each preset of `stage1_tokenizer.train --preset`: its parameter "
                                        "count, what it is for, and the flags it sets.").parse_args(argv)
    for name, preset in PRESETS.items():
        print(f"{name}: {parameter_count(name) / 1e6:.2f} M parameters. {preset.description}")
        print(f"    {as_flags(preset.options) or '(the defaults)'}")


if __name__ == "__main__":
    main(sys.argv[1:])
