"""The latent tools from the command line; every subcommand writes a PNG and prints its path.

    python -m pipelines.latent interpolate --model runs/vae --index 0 --index_b 1 --out interpolate.png
    python -m pipelines.latent anomaly --model runs/vae --ood_dataset ../shared/data/fashion_mnist
    python -m pipelines.latent edit --model runs/vae --with_class 1 --without_class 7

Images come from the test split of `--dataset`, resized and converted to what the model takes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqgen.atomic_io import atomic_path
from vqgen.data import DEFAULT_DATASET, image_tensors
from vqgen.image_grid import save_image_grid

from . import latent_tools as lt
from .loading import load_model
from .protocols import GenerativeModel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="folder or Hub id of a pipeline, VQ-VAE, VAE or CVAE")
    common.add_argument("--dataset", default=DEFAULT_DATASET, help="dataset spec the images come from (test split)")
    common.add_argument("--out", default=None, help="PNG to write (default: SUBCOMMAND.png)")
    common.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p = argparse.ArgumentParser(prog="python -m pipelines.latent",
                                description="Latent-space tools: each subcommand writes a PNG and prints its path.")
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    label_help = "class to condition on (id or name; default: the dataset label of --index for a conditional model)"
    s = add("interpolate", "decode a linear path between the latents of two images (originals at both ends)")
    s.add_argument("--index", type=int, default=0, help="test image at the start")
    s.add_argument("--index_b", type=int, default=1, help="test image at the end")
    s.add_argument("--steps", type=int, default=8, help="decoded images, endpoints included")
    s.add_argument("--label", default=None, help=label_help)

    s = add("traverse", "set one latent dimension of an image's latent to a range of values (a row per dim)")
    s.add_argument("--index", type=int, default=0, help="test image whose latent is traversed")
    s.add_argument("--dims", type=int, nargs="+", default=None, help="latent dimensions (default: the first 10)")
    s.add_argument("--values", type=float, nargs="+", default=np.linspace(-3, 3, 9).round(2).tolist(),
                   help="values each dimension is set to")
    s.add_argument("--label", default=None, help=label_help)

    s = add("anomaly", "score test images and out-of-distribution images; print the ROC-AUC as JSON, plot histograms")
    s.add_argument("--ood_dataset", required=True, help="dataset spec of the anomalies (test split)")
    s.add_argument("--num_images", type=int, default=500, help="images from each dataset")
    s.add_argument("--score", choices=["reconstruction", "negative_elbo"], default="reconstruction",
                   help="reconstruction MSE, or the negative ELBO (VAE/CVAE only)")
    s.add_argument("--batch_size", type=int, default=256, help="images per forward pass")

    s = add("augment", "variations of one image: z ~ q(z|x) (VAE/CVAE) or the prior completing its code grid (pipeline)")
    s.add_argument("--index", type=int, default=0, help="test image to vary (shown first)")
    s.add_argument("--n", type=int, default=15, help="number of variations")
    s.add_argument("--temperature", type=float, default=0.7, help="scales the posterior std / the prior's softmax")
    s.add_argument("--keep_rows", type=int, default=None, help="pipeline: code rows kept (default: half)")
    s.add_argument("--seed", type=int, default=0, help="variation i is drawn with seed (seed, i)")
    s.add_argument("--label", default=None, help=label_help)

    s = add("edit", "add an attribute direction (mean latent of one class minus another's) to images of the second class")
    s.add_argument("--with_class", type=int, required=True, help="class that has the attribute")
    s.add_argument("--without_class", type=int, required=True, help="class that lacks it; its images are edited")
    s.add_argument("--num_direction_images", type=int, default=100, help="up to N images of each class for the direction")
    s.add_argument("--num_images", type=int, default=8, help="images edited (a row each, original first)")
    s.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0], help="one column each")

    s = add("latent-map", "decode a grid over a 2-D latent (VAE/CVAE with latent='flat', latent_dim=2)")
    s.add_argument("--n", type=int, default=15, help="images per side")
    s.add_argument("--extent", type=float, default=3.0, help="z ranges over [-extent, extent] in both dimensions")
    s.add_argument("--label", default=None, help="CVAE: the class every cell is drawn with")

    s = add("scatter", "plot the posterior means of test images, coloured by label (2-D flat latent)")
    s.add_argument("--num_images", type=int, default=1000, help="test images plotted")
    return p.parse_args(argv)


def load_images(spec: str, model: GenerativeModel, num: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `num` test images of `spec` in the model's geometry (`b c h w` in [0, 1]) and their labels."""
    config = model.autoencoder.config
    return image_tensors(spec, "test", max_samples=num, image_size=config.image_size, channels=config.image_channels)


def pick(spec: str, model: GenerativeModel, *indices: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if min(indices) < 0:
        raise ValueError(f"image indices must be >= 0, got {list(indices)}")
    images, labels = load_images(spec, model, max(indices) + 1)
    if max(indices) >= len(images):
        raise ValueError(f"{spec!r} has {len(images)} test images; index {max(indices)} is out of range")
    idx = list(indices)
    return images[idx], None if labels is None else labels[idx]


def default_label(model: GenerativeModel, given: str | None, labels: torch.Tensor | None) -> int | str | None:
    """--label (a number is a class id, as in vqgen 0.1, anything else a class name), else the dataset's
    label for a class-conditional model (None when the dataset has no labels)."""
    if given is not None:
        return int(given) if given.lstrip("-").isdigit() else given
    return int(labels[0]) if model.class_names and labels is not None else None


def save_histogram(normal: np.ndarray, anomalous: np.ndarray, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(np.concatenate([normal, anomalous]), bins=40)
    ax.hist(normal, bins=bins, alpha=0.6, label="normal (--dataset)")
    ax.hist(anomalous, bins=bins, alpha=0.6, label="anomalous (--ood_dataset)")
    ax.set(xlabel="anomaly score", ylabel="images", title=title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out or f"{args.command}.png")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model).to(device)
    result: dict[str, Any] = {"image": str(out)}

    if args.command == "interpolate":
        images, labels = pick(args.dataset, model, args.index, args.index_b)
        path = lt.interpolate(model, images[0], images[1], args.steps, default_label(model, args.label, labels))
        save_image_grid(torch.cat([images[:1], path.cpu(), images[1:]]), out, nrow=args.steps + 2)
    elif args.command == "traverse":
        images, labels = pick(args.dataset, model, args.index)
        label = default_label(model, args.label, labels)
        dims = args.dims if args.dims is not None else range(min(10, lt.latent_shape(model)[0]))
        rows = [lt.traverse(model, images[0], d, args.values, label).cpu() for d in dims]
        save_image_grid(torch.cat(rows), out, nrow=len(args.values))
    elif args.command == "anomaly":
        normal, _ = load_images(args.dataset, model, args.num_images)
        anomalous, _ = load_images(args.ood_dataset, model, args.num_images)
        s_normal, s_anomalous = (lt.anomaly_score(model, x, score=args.score, batch_size=args.batch_size).cpu().numpy()
                                 for x in (normal, anomalous))
        auc = lt.roc_auc(s_normal, s_anomalous)
        save_histogram(s_normal, s_anomalous, out, f"{args.score}: ROC-AUC {auc:.3f}")
        result = {"roc_auc": auc, "score": args.score, "num_normal": len(s_normal), "num_anomalous": len(s_anomalous),
                  "mean_normal": float(s_normal.mean()), "mean_anomalous": float(s_anomalous.mean()),
                  "image": str(out)}
    elif args.command == "augment":
        images, labels = pick(args.dataset, model, args.index)
        variations = lt.augment(model, images[0], args.n, default_label(model, args.label, labels), args.temperature,
                                args.keep_rows, args.seed)
        save_image_grid(torch.cat([images, variations.cpu()]), out)
    elif args.command == "edit":
        images, labels = load_images(args.dataset, model)
        if labels is None:
            raise ValueError(f"{args.dataset!r} has no labels: edit picks its two groups by class")
        groups = []
        for c in (args.with_class, args.without_class):
            members = (labels == c).nonzero().flatten()
            if not len(members):
                raise ValueError(f"{args.dataset!r} has no test images of class {c}")
            groups.append(members)
        n = args.num_direction_images
        y = model.autoencoder.class_names is not None  # only a class-conditional autoencoder is told the classes
        direction = lt.attribute_direction(model, images[groups[0][:n]], images[groups[1][:n]],
                                           args.with_class if y else None, args.without_class if y else None)
        originals = images[groups[1][: args.num_images]]
        columns = [lt.edit(model, originals, direction, s, args.without_class if y else None).cpu() for s in args.strengths]
        grid = torch.stack([originals, *columns], dim=1).flatten(0, 1)  # a row per image
        save_image_grid(grid, out, nrow=len(args.strengths) + 1)
    elif args.command == "latent-map":
        label = default_label(model, args.label, None)
        save_image_grid(lt.latent_map(model, args.n, args.extent, label).cpu(), out, nrow=args.n)
    elif args.command == "scatter":
        images, labels = load_images(args.dataset, model, args.num_images)
        lt.plot_posterior_means(model, images, labels, out)

    print(json.dumps(result) if args.command == "anomaly" else out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
