"""The stage-1 training command line: its options, gathered from every config dataclass, the checks
across them, and the model they describe. `stage1_tokenizer.train` runs it; `stage1_tokenizer.presets`
builds models from it to count their parameters."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from vqgen.cli import add_dataclass_arguments, dataclass_from_arguments, flag_name
from vqgen.fields import option
from vqgen.data import DEFAULT_DATASET, DataAugmentation
from vqgen.pretrained import ModelLoadError
from vqgen.training import command_line_value, parse_training_args, training_parser

from . import CVAE, VAE, VQVAE, PretrainedModel, load_pretrained
from .configs import AutoencoderConfig, CVAEConfig, VAEConfig, VQVAEConfig
from .losses import LOSSES
from .presets import add_preset_argument
from .quantizers import QUANTIZERS


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
    p = training_parser("stage1_tokenizer.train", "Train a VQ-VAE tokenizer, or a VAE/CVAE baseline, on an image dataset.",
                        argv, output_dir="runs/stage1", batch_size=128, learning_rate=1e-3, weight_decay=0.0)
    add_dataclass_arguments(p.add_argument_group("data and model"), Stage1Arguments)
    add_dataclass_arguments(p.add_argument_group("data augmentation (training only)"), DataAugmentation)
    geometry = ("image_size", "image_channels", "class_names")
    base = tuple(f.name for f in dataclasses.fields(AutoencoderConfig))
    add_dataclass_arguments(p.add_argument_group("architecture (shared encoder/decoder)"), AutoencoderConfig,
                            exclude=geometry)
    add_dataclass_arguments(p.add_argument_group("VQ-VAE"), VQVAEConfig, exclude=(*geometry, *base, "quantizer"))
    for name, quantizer in QUANTIZERS.items():
        add_dataclass_arguments(p.add_argument_group(f"quantizer {name}"), quantizer.config_class, exclude=("type",))
    vae_only = ("binarized",)
    add_dataclass_arguments(p.add_argument_group("VAE / CVAE"), CVAEConfig,
                            exclude=(*geometry, *base, "num_classes", *vae_only))
    for name, loss in LOSSES.items():
        if dataclasses.fields(loss.config_class):
            add_dataclass_arguments(p.add_argument_group(f"loss {name}"), loss.config_class)

    add_preset_argument(p, argv)
    args = parse_training_args(p, argv)
    if args.init_from and not args.resume_from_checkpoint:  # resuming, the saved run's options already describe it
        take_architecture(p, args)
    check_stage1_args(p, args)
    return args


def architecture_options(model: PretrainedModel) -> dict[str, Any]:
    """The options of this script that describe `model` (its type, geometry, network, quantiser, likelihood)."""
    config = model.config
    data_defined = ("image_size", "image_channels", "class_names", "quantizer", "num_classes", "binarized")
    values = {"model": model.model_type, "image_size": config.image_size, "channels_in": config.image_channels,
              **{flag_name(f): getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in data_defined}}
    if model.is_discrete:
        values["quantizer"] = config.quantizer.type
        values.update({flag_name(f): getattr(config.quantizer, f.name) for f in dataclasses.fields(config.quantizer)
                       if f.name != "type"})
    else:
        values["binarize"] = config.binarized
    return values


def take_architecture(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--init_from: the model's architecture is the trained one's, so its options become this run's (what
    run_args.json records and the images are resized to). One set away from its default (or a preset's) to
    another value is refused: the weights could not fit it."""
    try:
        model = load_pretrained(args.init_from)
    except ModelLoadError as e:
        p.error(f"--init_from {args.init_from}: {e}")
    saved = architecture_options(model)
    conflicts = [f"--{name} {command_line_value(getattr(args, name))} (the model's: {command_line_value(value)})"
                 for name, value in saved.items() if getattr(args, name) not in (p.get_default(name), value)]
    if conflicts:
        p.error(f"--init_from {args.init_from} is a trained {model.model_type} whose architecture the run keeps; "
                f"{', '.join(conflicts)} would change it: leave them out, or train from scratch")
    for name, value in saved.items():
        setattr(args, name, value)


def check_stage1_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def build_model(args: argparse.Namespace, image_size: int, image_channels: int, names: list[str] | None) -> PretrainedModel:
    if args.init_from and not args.resume_from_checkpoint:  # resuming, the checkpoint holds the weights
        return trained_model(args.init_from, image_size, image_channels, names)
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


def trained_model(name_or_path: str, image_size: int, image_channels: int, names: list[str] | None) -> PretrainedModel:
    """--init_from: a trained stage-1 model to fine-tune on this dataset, every weight loaded (safetensors, strict);
    it takes the dataset's class names."""
    model = load_pretrained(name_or_path)
    config = model.config
    if (config.image_channels, config.image_size) != (image_channels, image_size):
        raise SystemExit(f"--init_from {name_or_path} takes {config.image_channels}x{config.image_size}² images; this "
                         f"dataset gives {image_channels}x{image_size}²: pass --image_size and --channels_in to match")
    if model.model_type == "cvae" and len(names or []) != config.num_classes:
        raise SystemExit(f"--init_from {name_or_path} is a CVAE of {config.num_classes} classes, its label embedding "
                         f"sized for them; this dataset has {len(names or [])}: a CVAE fine-tunes on as many classes")
    config.class_names = names
    return model.train()
