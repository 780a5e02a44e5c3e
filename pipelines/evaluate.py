"""Score any vqgen model the same way: reconstruction, likelihood, samples, anomaly detection.

    python -m pipelines.evaluate --model runs/quickstart/pipeline --dataset ../shared/data/mnist \\
        --classifier runs/classifier/mnist --anomaly_dataset ../shared/data/fashion_mnist --out results.json

`--model` is a two-stage pipeline, a VQ-VAE, a VAE or a CVAE (folder or Hub id); each gets what
applies to it:
- reconstruction of the test split: MSE, PSNR (capped at 100 dB), SSIM; a VQ-VAE's codebook
  usage and perplexity on that split;
- likelihood: a VAE/CVAE's importance-weighted bound (-L_k, nats per image; k = 1 is the ELBO) on the
  dynamically binarised test split when its likelihood is Bernoulli; a pipeline's prior in bits per
  pixel-dimension, and an upper bound on -log2 p(x) per dimension (see pipelines/likelihood.py);
- samples (needs `--classifier`, trained by benchmarks/feature_classifier.py): Fréchet distance and
  precision/recall in the classifier's feature space against the test split, with the same figures
  for N training images as the floor, and for a class-conditional model the share of samples the
  classifier puts in the requested class;
- anomaly detection (needs `--anomaly_dataset`): ROC-AUC of each anomaly score, test split normal.
Prints progress, one JSON object (also written to `--out`), and a one-line table last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from stage1_tokenizer import codebook_usage
from vqgen.atomic_io import atomic_write_text
from vqgen.data import image_tensors
from vqgen.image_metrics import mse, psnr, ssim
from vqgen.sampling_settings import SamplingSettings

from .feature_classifier import FeatureClassifier
from .generation import generate
from .latent_tools import anomaly_score, roc_auc
from .likelihood import (
    code_nll,
    discretized_gaussian_nll,
    fit_decoder_sigma,
    importance_weighted_bound,
)
from .loading import load_model
from .pipeline import TwoStagePipeline
from .protocols import Autoencoder, GenerativeModel
from .sample_quality import frechet_distance, precision_recall

# Training images the two-stage decoder's sigma is fitted on: fixed, so the bound does not move with --samples.
SIGMA_FIT_IMAGES = 2000


def has_code_prior(model: GenerativeModel) -> bool:
    """A discrete autoencoder that can sample does so through a prior over its codes: a two-stage pipeline."""
    return model.autoencoder.is_discrete and model.can_sample


def _check_geometry(model: GenerativeModel, images: torch.Tensor, spec: str) -> None:
    config = model.autoencoder.config
    want = (config.image_channels, config.image_size, config.image_size)
    if tuple(images.shape[1:]) != want:
        raise ValueError(f"{spec!r} holds images of shape {tuple(images.shape[1:])} but the model takes {want}: "
                         f"evaluate it on the kind of data it was trained on")


@dataclass
class Reconstructions:
    """One pass over the test split that later sections reuse: `n c h w` images and, for VQ, `n h w` codes."""

    metrics: dict[str, float]
    images: torch.Tensor
    codes: torch.Tensor | None


@torch.no_grad()
def reconstruct_split(model: GenerativeModel, images: torch.Tensor, labels: torch.Tensor | None,
                      batch_size: int = 256, progress: bool = True) -> Reconstructions:
    """Mean MSE, PSNR and SSIM of the reconstructions; a VQ-VAE's codebook usage and perplexity on `images`."""
    ae = model.autoencoder.eval()
    device = ae.device
    vq = ae.is_discrete
    labels = labels if ae.requires_labels else None
    recons, codes, per_image = [], [], []
    for i in tqdm(range(0, len(images), batch_size), desc="reconstruct", disable=not progress):
        x = images[i : i + batch_size]
        if vq:  # the codes are kept for the prior, so tokenize once and decode them
            codes.append(ae.tokenize(x.to(device)).cpu())
            recon = ae.detokenize(codes[-1].to(device)).cpu()
        else:
            recon = ae.reconstruct(x.to(device), None if labels is None else labels[i : i + batch_size].to(device)).cpu()
        recons.append(recon)
        per_image.append(torch.stack([mse(x, recon), psnr(x, recon), ssim(x, recon)], 1))
    metrics = dict(zip(["mse", "psnr_db", "ssim"], torch.cat(per_image).mean(0).tolist()))
    all_codes = torch.cat(codes) if vq else None
    if vq:
        counts = torch.bincount(all_codes.flatten(), minlength=ae.codebook_size)
        metrics["codebook_usage"], metrics["perplexity"] = codebook_usage(counts)
    return Reconstructions(metrics, torch.cat(recons), all_codes)


def vae_likelihood(model: Autoencoder, images: torch.Tensor, labels: torch.Tensor | None, *, k: int, num_images: int,
                   seed: int, progress: bool = True) -> dict[str, Any]:
    """The k-sample bound -L_k on the first `num_images` images and the one-sample ELBO on all, in nats.

    `model` has an ELBO (`has_elbo`).
    """
    conditional = model.requires_labels
    labels = labels if conditional else None
    binary = model.config.likelihood == "bernoulli"
    # One fixed draw of the binarised test set, so every k and every model sees the same images.
    data = torch.bernoulli(images, generator=torch.Generator().manual_seed(seed)) if binary else images
    device = model.device

    def fresh() -> torch.Generator:  # each figure its own stream: none depends on the other's settings
        return torch.Generator(device=device).manual_seed(seed)

    n = min(num_images, len(data))
    bound, elbo_same = importance_weighted_bound(model, data[:n], None if labels is None else labels[:n], k=k,
                                                 generator=fresh(), progress=progress)
    elbo, _ = importance_weighted_bound(model, data, labels, k=1, batch_size=256, generator=fresh(), progress=progress)
    return {
        "data": (f"test split, dynamically binarised (one draw, seed {seed})" if binary else
                 "test split as continuous pixels: a density under a Gaussian likelihood, not comparable "
                 "with the discrete NLL tables"),
        "trained_binarized": bool(getattr(model.config, "binarized", False)),
        "bound_on": "-log p(x | y), y the true label" if conditional else "-log p(x)",
        "negative_elbo_nats": elbo.mean().item(),
        "iwae_nats": bound.mean().item(),
        "iwae_nats_standard_error": (bound.std() / math.sqrt(n)).item() if n > 1 else None,
        "iwae_k": k,
        "iwae_images": n,
        "negative_elbo_nats_same_images": elbo_same.mean().item(),
    }


@torch.no_grad()
def two_stage_likelihood(pipe: TwoStagePipeline, images: torch.Tensor, labels: torch.Tensor | None,
                         recon: Reconstructions, train_images: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """The prior's bits per pixel-dimension, and the bound on -log2 p(x); also returns per-image code NLLs."""
    conditional = pipe.num_classes > 0 and labels is not None
    nll_uncond = code_nll(pipe.prior, recon.codes)
    nll_prior = code_nll(pipe.prior, recon.codes, labels) if conditional else nll_uncond
    sigma = fit_decoder_sigma(pipe.autoencoder, train_images[:SIGMA_FIT_IMAGES])
    pixel_nll = discretized_gaussian_nll(images, recon.images, sigma)
    per_dim = math.log(2) * images[0].numel()
    result = {
        "prior_bits_per_pixel_dim": nll_prior.mean().item() / per_dim,
        "prior_conditioned_on_class": conditional,
        "prior_bits_per_pixel_dim_unconditional": nll_uncond.mean().item() / per_dim,
        "decoder_sigma": sigma,
        "decoder_bits_per_pixel_dim": pixel_nll.mean().item() / per_dim,
        "nll_bound_bits_per_pixel_dim": (nll_uncond + pixel_nll).mean().item() / per_dim,
        "nll_bound_is": "an upper bound on -log2 p(x) per dimension of the 8-bit test images: -log2 p(c*) of the "
                        "unconditional prior plus a discretised Gaussian decoder (sigma fitted on training images)",
    }
    return result, nll_uncond


def sample_settings(model: GenerativeModel, guidance_scale: float | None) -> SamplingSettings:
    """What `sample_metrics` draws with: the model's defaults and `guidance_scale` (None: the default).

    A conditional model's samples always have labels. Settings the model refuses raise here.
    """
    return model.sampling_settings(guidance_scale=guidance_scale, conditional=bool(model.class_names))


@torch.no_grad()
def sample_metrics(model: GenerativeModel, classifier: FeatureClassifier, test_images: torch.Tensor,
                   train_images: torch.Tensor, *, num_samples: int, guidance_scale: float | None, seed: int,
                   progress: bool = True) -> dict[str, Any]:
    """Fréchet distance, precision and recall of samples against test images in the classifier's
    feature space, the same for training images (the floor), and class accuracy when conditional.

    A conditional model draws its classes in turn.
    """
    num_classes = len(model.class_names or [])
    labels = torch.arange(num_samples) % num_classes if num_classes else None
    settings = sample_settings(model, guidance_scale)
    start = time.perf_counter()
    samples = generate(model, num_samples=num_samples, class_labels=labels, guidance_scale=guidance_scale, seed=seed,
                       output_type="pt", progress=progress, device=model.device)
    seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(seed)
    # Equal-sized sets: precision/recall depend on the set sizes, and so does the Fréchet distance's bias.
    real = test_images[torch.randperm(len(test_images), generator=generator)[:num_samples]]
    train = train_images[torch.randperm(len(train_images), generator=generator)[:num_samples]]
    real_f, _ = classifier.embed(real)
    fake_f, predicted = classifier.embed(samples)
    train_f, _ = classifier.embed(train)
    precision, recall = precision_recall(real_f, fake_f)
    floor_precision, floor_recall = precision_recall(real_f, train_f)
    result: dict[str, Any] = {
        "num_samples": num_samples,
        "real_images": len(real),
        "images_per_second": num_samples / seconds,
        "frechet_distance": frechet_distance(real_f, fake_f),
        "precision": precision,
        "recall": recall,
        "floor": {"frechet_distance": frechet_distance(real_f, train_f), "precision": floor_precision,
                  "recall": floor_recall, "what": f"{num_samples} training images against the test split"},
        "feature_space": f"penultimate layer of the feature classifier (test accuracy {classifier.config.test_accuracy})",
        "inception_fid": None,
        "inception_fid_note": "not computed: Inception weights cannot be downloaded on every machine and do not "
                              "fit 28x28 grey images; the classifier's feature space stands in",
    }
    if labels is not None:
        result["guidance_scale"] = settings.guidance_scale
        result["class_accuracy"] = (predicted == labels).double().mean().item()
    return result


@torch.no_grad()
def anomaly_metrics(model: GenerativeModel, normal: torch.Tensor, anomalous: torch.Tensor,
                    code_nll_normal: torch.Tensor | None = None, progress: bool = True) -> dict[str, float]:
    """ROC-AUC of each anomaly score that applies: reconstruction error, negative ELBO, the prior's code NLL."""
    scores = ["reconstruction"] + (["negative_elbo"] if model.autoencoder.has_elbo else [])
    auc = {}
    for score in tqdm(scores, desc="anomaly scores", disable=not progress):
        # a CVAE scores each image under its best-fitting class: the labels of anomalies are unknown
        auc[score] = roc_auc(anomaly_score(model, normal, score=score), anomaly_score(model, anomalous, score=score))
    if code_nll_normal is not None:
        tokenizer = model.autoencoder
        codes = torch.cat([tokenizer.tokenize(x.to(tokenizer.device)).cpu() for x in anomalous.split(256)])
        auc["code_nll"] = roc_auc(code_nll_normal, code_nll(model.prior, codes))
    return auc


def evaluate(
    model: GenerativeModel | str | os.PathLike,
    dataset: str,
    *,
    classifier: str | None = None,
    anomaly_dataset: str | None = None,
    num_samples: int = 1000,
    iwae_k: int = 5000,
    iwae_images: int = 100,
    guidance_scale: float | None = None,
    seed: int = 0,
    max_test_samples: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every metric that applies to `model` on `dataset`'s test split, as a JSON-ready dict.

    `model` is loaded from a folder or Hub id, or any model with the interface of pipelines/protocols.py
    (ours, or another library's behind an adapter: benchmarks/peer_pythae.py). What applies follows
    from its capabilities, and `model_type` names its family in the result.
    """
    name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    model = load_model(model)
    ae = model.autoencoder
    for n, value in (("num_samples", num_samples), ("iwae_k", iwae_k), ("iwae_images", iwae_images)):
        if value < 1:
            raise ValueError(f"{n} must be at least 1, got {value}")
    if model.can_sample:
        sample_settings(model, guidance_scale)  # refuses settings the model does not take, before any work
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    start = time.time()
    test_images, test_labels = image_tensors(dataset, "test", max_test_samples)
    _check_geometry(model, test_images, dataset)
    if ae.requires_labels and test_labels is None:
        raise ValueError(f"a {type(ae).__name__} is scored with the true labels, and {dataset!r} has none: "
                         f"evaluate it on the labelled dataset it was trained on")
    judge = None
    if classifier is not None and model.can_sample:
        judge = FeatureClassifier.load(classifier).to(device)
        if (judge.config.image_channels, judge.config.image_size) != tuple(test_images.shape[1:3]):
            raise ValueError(f"the classifier in {classifier} was trained on {judge.config.image_channels}x"
                             f"{judge.config.image_size}px images, not on {dataset!r}: train one on this dataset")
    train_images, _ = image_tensors(dataset, "train", max(num_samples, SIGMA_FIT_IMAGES))
    result: dict[str, Any] = {"model": name, "family": model.model_type, "dataset": dataset,
                              "test_images": len(test_images)}
    recon = reconstruct_split(model, test_images, test_labels, progress=progress)
    result["reconstruction"] = recon.metrics

    code_nll_normal = None
    if ae.has_elbo:
        result["likelihood"] = vae_likelihood(ae, test_images, test_labels, k=iwae_k, num_images=iwae_images,
                                              seed=seed, progress=progress)
    elif has_code_prior(model):
        result["likelihood"], code_nll_normal = two_stage_likelihood(model, test_images, test_labels, recon,
                                                                     train_images)

    if not model.can_sample:
        result["samples"] = f"not applicable: a {type(model).__name__} alone has no prior to sample from"
    elif judge is None:
        result["samples"] = ("skipped: pass --classifier DIR (train one with "
                             "`python benchmarks/feature_classifier.py --dataset SPEC --out DIR`)")
    else:
        result["samples"] = {"classifier": classifier, **sample_metrics(
            model, judge, test_images, train_images, num_samples=num_samples, guidance_scale=guidance_scale,
            seed=seed, progress=progress)}

    if anomaly_dataset is None:
        result["anomaly_detection"] = "skipped: pass --anomaly_dataset SPEC (e.g. Fashion-MNIST for an MNIST model)"
    else:
        anomalous, _ = image_tensors(anomaly_dataset, "test", max_test_samples)
        _check_geometry(model, anomalous, anomaly_dataset)
        result["anomaly_detection"] = {"normal": f"{dataset} (test)", "anomalous": f"{anomaly_dataset} (test)",
                                       "roc_auc": anomaly_metrics(model, test_images, anomalous, code_nll_normal,
                                                                  progress)}
    result["seconds"] = round(time.time() - start, 1)
    return result


def table_line(result: dict[str, Any]) -> str:
    """One line: the headline figure of each section."""
    rec, lik, smp, ano = (result.get(k) for k in ("reconstruction", "likelihood", "samples", "anomaly_detection"))
    cells = [result["family"], f"PSNR {rec['psnr_db']:.2f} dB", f"SSIM {rec['ssim']:.3f}"]
    if "codebook_usage" in rec:
        cells.append(f"usage {rec['codebook_usage']:.0%} ppl {rec['perplexity']:.0f}")
    if isinstance(lik, dict) and "iwae_k" in lik:
        cells.append(f"-L_{lik['iwae_k']} {lik['iwae_nats']:.2f} nats (ELBO {lik['negative_elbo_nats']:.2f})")
    elif isinstance(lik, dict):
        cells.append(f"prior {lik['prior_bits_per_pixel_dim']:.3f} b/dim, NLL <= {lik['nll_bound_bits_per_pixel_dim']:.3f} b/dim")
    if isinstance(smp, dict):
        cells.append(f"FD {smp['frechet_distance']:.2f} (floor {smp['floor']['frechet_distance']:.2f}) "
                     f"P {smp['precision']:.2f} R {smp['recall']:.2f}")
        if "class_accuracy" in smp:
            cells.append(f"class acc {smp['class_accuracy']:.1%}")
    if isinstance(ano, dict):
        cells.append("AUC " + " ".join(f"{k} {v:.4f}" for k, v in ano["roc_auc"].items()))
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline, VQ-VAE, VAE or CVAE: a folder or Hub id")
    p.add_argument("--dataset", required=True, help="dataset spec whose test split is scored (see stage1 --help)")
    p.add_argument("--samples", type=int, default=1000, help="generated images for the sample metrics")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--classifier", default=None, help="feature classifier folder (benchmarks/feature_classifier.py)")
    p.add_argument("--anomaly_dataset", default=None, help="dataset spec whose test split is the anomalous class")
    p.add_argument("--iwae_k", type=int, default=5000, help="importance samples of the VAE bound (1 = ELBO)")
    p.add_argument("--iwae_images", type=int, default=100, help="test images the k-sample bound averages over")
    p.add_argument("--guidance_scale", type=float, default=None, help="a pipeline's guidance (default: its own)")
    p.add_argument("--seed", type=int, default=0, help="seed of samples, binarisation and importance samples")
    p.add_argument("--max_test_samples", type=int, default=None, help="score only the first N test images")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    result = evaluate(args.model, args.dataset, classifier=args.classifier, anomaly_dataset=args.anomaly_dataset,
                      num_samples=args.samples, iwae_k=args.iwae_k, iwae_images=args.iwae_images,
                      guidance_scale=args.guidance_scale, seed=args.seed, max_test_samples=args.max_test_samples,
                      device=args.device)
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
    print(table_line(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
