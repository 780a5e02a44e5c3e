"""Tools that work in a model's latent space: interpolation, traversal, anomaly scores, augmentation,
attribute editing and (for 2-D VAEs) latent maps.

Every tool goes through the stage-1 model's `encode_latent` / `decode_latent` (pipelines/protocols.py):

    latent                                        decode
    VAE / CVAE  posterior mean of q(z|x)           model.decode(z, labels)
    VQ-VAE      pre-quantisation latent `b d h w`  nearest code, then detokenize

`model` is a `TwoStagePipeline` (its tokenizer is used, and its prior by `augment`), a `VQVAE`, a
`VAE`, a `CVAE`, a folder / Hub id of one, or another library's model behind the same interface.
Images are float `b c h w` in [0, 1]; a CVAE needs `labels` (one per image, or a single int for
all) wherever it encodes or decodes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from vqgen.atomic_io import atomic_path
from vqgen.validation import check_images

from .labels import Labels, resolve_labels
from .loading import load_model
from .protocols import Autoencoder, GenerativeModel
from .seeds import sample_generators

ModelLike = GenerativeModel | str | os.PathLike


# -- the shared pieces ---------------------------------------------------------------------------------
def _autoencoder(model: ModelLike) -> Autoencoder:
    return load_model(model).autoencoder.eval()


def _batch(images: torch.Tensor, ae: Autoencoder, name: str = "images", single: bool = False) -> torch.Tensor:
    """`c h w` or `b c h w` -> checked `b c h w` on the model's device (`single`: b must be 1)."""
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images.unsqueeze(0)
    try:
        check_images(images, ae.config)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None
    if single and images.shape[0] != 1:
        raise ValueError(f"{name} must be one image (`c h w` or `1 c h w`), got a batch of {images.shape[0]}")
    return images.to(ae.device)


def _labels(ae: Autoencoder, labels: Labels, n: int) -> torch.Tensor | None:
    """`n` labels for a CVAE (an int or a single label is repeated); None for the other models."""
    if labels is None:
        if ae.requires_labels:
            raise ValueError(f"this {type(ae).__name__} is class-conditional: pass labels (an int for all images, "
                             "or one per image)")
        return None
    # resolve_labels refuses labels for an unconditional model and accepts class names too
    return resolve_labels(ae, labels, n).to(ae.device)


def latent_shape(model: ModelLike) -> tuple[int, ...]:
    """Shape of one latent, no batch dim: `(latent_dim,)` (flat VAE) or `(d, h, w)` (grid VAE, VQ-VAE)."""
    return tuple(_autoencoder(model).latent_shape)


# -- 1. interpolation ------------------------------------------------------------------------------------
@torch.no_grad()
def interpolate(model: ModelLike, a: torch.Tensor, b: torch.Tensor, steps: int = 8, labels: Labels = None) -> torch.Tensor:
    """Decoded linear interpolation between the latents of images `a` and `b` (`c h w` or `1 c h w`).

    Returns `steps c h w`; the first and last are the reconstructions of `a` and `b`. A CVAE takes
    one label (an int) for both images and every step. VQ-VAE: the pre-quantisation latents are
    interpolated, then quantised.
    """
    ae = _autoencoder(model)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (the two endpoints included), got {steps!r}")
    x = torch.cat([_batch(a, ae, "a", single=True), _batch(b, ae, "b", single=True)])
    label = _labels(ae, labels, 1)
    za, zb = ae.encode_latent(x, None if label is None else label.expand(2))
    t = torch.linspace(0, 1, steps, device=za.device).view(-1, *[1] * za.ndim)
    z = (1 - t) * za + t * zb  # not lerp: this form hits both endpoints exactly
    return ae.decode_latent(z, None if label is None else label.expand(steps))


# -- 2. traversal ----------------------------------------------------------------------------------------
@torch.no_grad()
def traverse(
    model: ModelLike, image_or_z: torch.Tensor, dim: int, values: Sequence[float] | torch.Tensor, labels: Labels = None
) -> torch.Tensor:
    """Decode one latent with dimension `dim` set to each of `values` in turn: `len(values) c h w`.

    `image_or_z` is an image (`c h w` or `1 c h w`, encoded first) or a latent of the model's latent
    shape (with or without a batch dim of 1); a tensor of the image shape counts as an image. For a
    grid latent (`d h w`) `dim` is a channel, set at every position. A CVAE takes one label (an int).
    """
    ae = _autoencoder(model)
    shape = tuple(ae.latent_shape)
    image_shape = (ae.config.image_channels, ae.config.image_size, ae.config.image_size)
    if not isinstance(image_or_z, torch.Tensor):
        raise TypeError(f"image_or_z must be a tensor (an image or a latent), got {type(image_or_z).__name__}")
    x = image_or_z[0] if image_or_z.ndim in (len(shape) + 1, 4) and len(image_or_z) == 1 else image_or_z
    is_latent = tuple(x.shape) == shape and shape != image_shape
    if not is_latent and tuple(x.shape) != image_shape:
        raise ValueError(f"image_or_z must be an image {image_shape} or a latent {shape} (optionally with a batch "
                         f"dim of 1), got {tuple(image_or_z.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"image_or_z must be a float tensor, got dtype {x.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < shape[0]:
        raise ValueError(f"dim {dim!r} is out of range: this model's latent has {shape[0]} dimensions "
                         f"(shape {shape}); pick dim in [0, {shape[0] - 1}]")
    values = torch.as_tensor(values, dtype=torch.float32).flatten()
    if values.numel() == 0 or not torch.isfinite(values).all():
        raise ValueError(f"values must be a non-empty sequence of finite numbers, got {values.tolist()}")
    label = _labels(ae, labels, 1)
    z = x[None].float().to(ae.device) if is_latent else ae.encode_latent(_batch(x, ae, "image_or_z", single=True), label)
    z = z.repeat(len(values), *[1] * len(shape))
    z[:, dim] = values.to(z.device).view(-1, *[1] * (len(shape) - 1))
    return ae.decode_latent(z, None if label is None else label.expand(len(values)))


# -- 3. anomaly scores -----------------------------------------------------------------------------------
Score = Literal["reconstruction", "negative_elbo"]


def _score(ae: Autoencoder, images: torch.Tensor, labels: torch.Tensor | None, score: Score) -> torch.Tensor:
    if score == "reconstruction":
        return (ae.reconstruct(images, labels) - images).pow(2).flatten(1).mean(1)
    return ae.negative_elbo(images, labels)


@torch.no_grad()
def anomaly_score(
    model: ModelLike, images: torch.Tensor, labels: Labels = None, score: Score = "reconstruction", batch_size: int = 256
) -> torch.Tensor:
    """Per-image anomaly scores `b` (higher = more anomalous) for images `b c h w`.

    score="reconstruction": mean squared error of the reconstruction, per pixel.
    score="negative_elbo" (VAE/CVAE only), in nats: KL(q(z|x) || N(0, I)) in closed form plus
    -log p(x|z) evaluated at the posterior mean z (deterministic, no sampled z).
    A CVAE given labels=None scores each image under every class and keeps the minimum (the class
    that explains the image best).
    """
    ae = _autoencoder(model)
    if score not in ("reconstruction", "negative_elbo"):
        raise ValueError(f"score must be 'reconstruction' or 'negative_elbo', got {score!r}")
    if score == "negative_elbo" and not ae.has_elbo:
        raise ValueError("score='negative_elbo' needs a VAE or CVAE (a VQ-VAE has no likelihood); "
                         "use score='reconstruction'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    images = _batch(images, ae)
    n = images.shape[0]
    if ae.requires_labels and labels is None:
        per_class = [torch.full((n,), c, dtype=torch.long, device=images.device) for c in range(len(ae.class_names))]
    else:
        per_class = [_labels(ae, labels, n)]
    scores = []
    for start in range(0, n, batch_size):
        chunk = slice(start, start + batch_size)
        scores.append(torch.stack([_score(ae, images[chunk], None if y is None else y[chunk], score)
                                   for y in per_class]).amin(0))
    return torch.cat(scores) if scores else images.new_zeros(0)


def roc_auc(scores_normal: torch.Tensor | Sequence[float], scores_anomalous: torch.Tensor | Sequence[float]) -> float:
    """Area under the ROC curve of separating anomalies (the positive class) by their higher scores."""
    from sklearn.metrics import roc_auc_score

    normal = torch.as_tensor(scores_normal, dtype=torch.float64).flatten().cpu()
    anomalous = torch.as_tensor(scores_anomalous, dtype=torch.float64).flatten().cpu()
    if not len(normal) or not len(anomalous):
        raise ValueError(f"ROC-AUC needs scores of both groups, got {len(normal)} normal and {len(anomalous)} anomalous")
    scores = torch.cat([normal, anomalous])
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf values")
    truth = torch.cat([torch.zeros(len(normal)), torch.ones(len(anomalous))])
    return float(roc_auc_score(truth.numpy(), scores.numpy()))


# -- 4. augmentation -------------------------------------------------------------------------------------
@torch.no_grad()
def augment(
    model: ModelLike,
    image: torch.Tensor,
    n: int,
    labels: Labels = None,
    temperature: float = 0.7,
    keep_rows: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """`n` variations of one image (`c h w` or `1 c h w`): `n c h w`.

    VAE/CVAE: z ~ q(z|x) with its standard deviation scaled by `temperature`, decoded. Two-stage
    pipeline: the first `keep_rows` rows of the image's code grid (default: half) are kept and the
    prior resamples the rest at `temperature` (`labels`: the class to sample with, None for
    unconditional). Variation i comes from its own generator seeded from (seed, i).
    """
    model = load_model(model)
    ae = model.autoencoder.eval()
    if ae.is_discrete and not model.can_sample:
        raise ValueError("augmenting with a VQ-VAE needs a prior to resample codes from: use a TwoStagePipeline "
                         "(TwoStagePipeline.from_parts(tokenizer, prior)) or a VAE/CVAE")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = _batch(image, ae, "image", single=True)
    generators = sample_generators(seed, range(n))
    if ae.is_discrete:  # a code grid: the pipeline's prior completes it
        h, w = ae.grid_shape
        keep_rows = h // 2 if keep_rows is None else keep_rows
        if isinstance(keep_rows, bool) or not isinstance(keep_rows, int) or not 0 <= keep_rows < h:
            raise ValueError(f"keep_rows must be an integer in [0, {h - 1}] (the code grid has {h} rows), got {keep_rows!r}")
        class_labels = None if labels is None else resolve_labels(model, labels, n)
        prompt = ae.tokenize(x)[:, :keep_rows].flatten(1).expand(n, -1)
        return ae.detokenize(model.complete_codes(prompt, class_labels, generators, temperature))
    if keep_rows is not None:
        raise ValueError("keep_rows applies to a two-stage pipeline's code grid, not to a VAE/CVAE")
    label = _labels(ae, labels, 1)
    z = ae.encode(x, label).sample_seeded(generators, temperature)  # z ~ q(z|x), its std scaled by temperature
    return ae.decode_latent(z, None if label is None else label.expand(n))


# -- 5. attribute directions -----------------------------------------------------------------------------
@torch.no_grad()
def attribute_direction(
    model: ModelLike,
    images_with: torch.Tensor,
    images_without: torch.Tensor,
    labels_with: Labels = None,
    labels_without: Labels = None,
) -> torch.Tensor:
    """Mean latent of `images_with` minus mean latent of `images_without` (each `b c h w`).

    Returns one latent (the model's latent shape, no batch dim), to pass to `edit`.
    """
    ae = _autoencoder(model)
    xw, xo = _batch(images_with, ae, "images_with"), _batch(images_without, ae, "images_without")
    if not len(xw) or not len(xo):
        raise ValueError(f"both groups need images, got {len(xw)} with and {len(xo)} without")
    yw, yo = _labels(ae, labels_with, len(xw)), _labels(ae, labels_without, len(xo))
    return ae.encode_latent(xw, yw).mean(0) - ae.encode_latent(xo, yo).mean(0)


@torch.no_grad()
def edit(model: ModelLike, images: torch.Tensor, direction: torch.Tensor, strength: float = 1.0,
         labels: Labels = None) -> torch.Tensor:
    """decode(latent(images) + strength * direction): `b c h w`. Strength 0 gives the reconstructions."""
    ae = _autoencoder(model)
    shape = tuple(ae.latent_shape)
    if not isinstance(direction, torch.Tensor) or tuple(direction.shape) != shape:
        got = tuple(direction.shape) if isinstance(direction, torch.Tensor) else type(direction).__name__
        raise ValueError(f"direction must be a tensor of this model's latent shape {shape} "
                         f"(as attribute_direction returns), got {got}")
    x = _batch(images, ae)
    y = _labels(ae, labels, len(x))
    return ae.decode_latent(ae.encode_latent(x, y) + strength * direction.to(x.device, torch.float32), y)


# -- 6. two-dimensional latents --------------------------------------------------------------------------
def _flat_2d(model: ModelLike, tool: str) -> Autoencoder:
    ae = _autoencoder(model)
    if tuple(ae.latent_shape) != (2,):
        got = f"a {type(ae).__name__} with latent shape {tuple(ae.latent_shape)}"
        raise ValueError(f"{tool} needs a VAE or CVAE with latent='flat' and latent_dim=2, got {got}; train one with "
                         "`python -m stage1_tokenizer.train --model vae --latent flat --latent_dim 2`")
    return ae


@torch.no_grad()
def latent_map(model: ModelLike, n: int = 15, extent: float = 3.0, label: int | str | None = None) -> torch.Tensor:
    """Decoded `n x n` grid over z in [-extent, extent]^2: `n*n c h w`, rows z2 descending, columns z1 ascending.

    Needs a flat 2-D latent; a CVAE draws every cell with class `label`.
    """
    ae = _flat_2d(model, "latent_map")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not extent > 0:
        raise ValueError(f"extent must be > 0, got {extent}")
    labels = _labels(ae, label, n * n)
    axis = torch.linspace(-extent, extent, n, device=ae.device)
    z = torch.cartesian_prod(axis.flip(0), axis).flip(1)  # row-major over (z2 descending, z1 ascending) -> (z1, z2)
    return ae.decode_latent(z, labels)


@torch.no_grad()
def plot_posterior_means(model: ModelLike, images: torch.Tensor, labels: Labels, path: str | os.PathLike) -> Path:
    """Scatter plot PNG of the posterior means of `images` (`b c h w`) coloured by `labels`; returns `path`.

    Needs a flat 2-D latent. `labels` (one per image) colour the points and, for a CVAE, condition
    the encoder; None plots every point in one colour.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ae = _flat_2d(model, "plot_posterior_means")
    x = _batch(images, ae)
    if ae.requires_labels or labels is None:
        y = _labels(ae, labels, len(x))
    else:  # an unconditional model takes no labels, but they still colour the plot
        y = torch.as_tensor(labels, dtype=torch.long).flatten()
        if y.shape != (len(x),):
            raise ValueError(f"labels must have shape [{len(x)}] (one per image), got {tuple(y.shape)}")
    mean = ae.encode_latent(x, y).cpu()
    fig = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no global backend state
    ax = fig.add_subplot()
    points = ax.scatter(mean[:, 0], mean[:, 1], c=None if y is None else y.cpu(), cmap="tab10", s=6, alpha=0.8)
    if y is not None:
        names = ae.config.class_names or []
        classes = y.unique().tolist()
        ax.legend(points.legend_elements()[0], [names[c] if c < len(names) else str(c) for c in classes], title="class",
                  fontsize="small", loc="best")
    ax.set(xlabel="z1", ylabel="z2", title="posterior means")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
