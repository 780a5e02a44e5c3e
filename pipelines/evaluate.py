"""Score any vqgen model the same way: reconstruction, likelihood, samples, anomaly detection.

    python -m pipelines.evaluate --model runs/quickstart/pipeline --dataset ../shared/data/mnist \\
        --classifier runs/classifier/mnist --anomaly_dataset ../shared/data/fashion_mnist --out results.json

`--model` is a two-stage pipeline, a VQ-VAE, a VAE or a CVAE (folder or Hub id); each gets what
applies to it:
- reconstruction of the test split: MSE, PSNR (capped at 100 dB), SSIM; a VQ-VAE's codebook
  usage and perplexity on that split; with `--classifier`, rFD (the reconstructions against the
  test images in the classifier's feature space); with the Inception weights, rFID;
- likelihood: a VAE/CVAE's importance-weighted bound (-L_k, nats per image; k = 1 is the ELBO) on the
  dynamically binarised test split when its likelihood is Bernoulli; a pipeline's prior in bits per
  pixel-dimension, and an upper bound on -log2 p(x) per dimension (see pipelines/likelihood.py);
- samples (`--classifier`, trained by `vqgen-feature-classifier`): Fréchet distance against the
  whole test split and precision/recall against as many test images, in the classifier's feature
  space, the same figures for as many training images as the floor, and for a class-conditional
  model the share of samples the classifier puts in the requested class; with the Inception
  weights (`--inception` for torch's hub cache, or `--inception_weights PATH`), FID and KID against
  the test split and IS (pipelines/inception_metrics.py);
- anomaly detection (needs `--anomaly_dataset`): ROC-AUC of each anomaly score, test split normal.
Everything streams: the test split, the samples and the anomalous split are read or drawn one batch
at a time, and metrics accumulate as sums (Fréchet statistics as float64 sums of features and of
their outer products); what is kept is per-image scalars, the classifier's features of the test
split, and a uniform random subset of training images (pipelines/subsets.py). Prints progress, one
JSON object (also written to `--out`), and a one-line table last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from stage1_tokenizer import codebook_usage
from vqgen.atomic_io import atomic_write_text
from vqgen.data import image_batches
from vqgen.image_metrics import mse, psnr, ssim
from vqgen.sampling_settings import SamplingSettings

from .feature_classifier import COMMAND as CLASSIFIER_COMMAND
from .feature_classifier import FeatureClassifier
from .inception_metrics import InceptionMetrics, find_inception_weights
from .latent_tools import anomaly_score, roc_auc
from .likelihood import (
    code_nll,
    discretized_gaussian_nll,
    fit_decoder_sigma,
    importance_weighted_bound,
)
from .loading import load_model
from .protocols import GenerativeModel
from .sample_quality import FrechetStatistics, frechet_distance_of_statistics, precision_recall
from .sampling import sample_images
from .subsets import random_subset

# Training images the two-stage decoder's sigma is fitted on: fixed, so the bound does not move with --samples.
SIGMA_FIT_IMAGES = 2000

Batches = Iterator[tuple[torch.Tensor, torch.Tensor | None]]


def has_code_prior(model: GenerativeModel) -> bool:
    """A discrete autoencoder that can sample does so through a prior over its codes: a two-stage pipeline."""
    return model.autoencoder.is_discrete and model.can_sample


def _check_geometry(model: GenerativeModel, images: torch.Tensor, spec: str) -> None:
    config = model.autoencoder.config
    want = (config.image_channels, config.image_size, config.image_size)
    if tuple(images.shape[1:]) != want:
        raise ValueError(f"{spec!r} holds images of shape {tuple(images.shape[1:])} but the model takes {want}: "
                         f"evaluate it on the kind of data it was trained on")


def _checked_batches(model: GenerativeModel, spec: str, batch_size: int, max_samples: int | None) -> Batches:
    """`spec`'s test split batch by batch; its first batch is read and checked against the model now."""
    batches = image_batches(spec, "test", batch_size=batch_size, max_samples=max_samples)
    first = next(batches)
    _check_geometry(model, first[0], spec)
    return itertools.chain([first], batches)


def sample_settings(model: GenerativeModel, guidance_scale: float | None) -> SamplingSettings:
    """What `sample_metrics` draws with: the model's defaults and `guidance_scale` (None: the default).

    A conditional model's samples always have labels. Settings the model refuses raise here.
    """
    return model.sampling_settings(guidance_scale=guidance_scale, conditional=bool(model.class_names))


class EvaluationPass:
    """Everything measured on the test split, accumulated one batch at a time by `add`."""

    def __init__(self, model: GenerativeModel, *, judge: FeatureClassifier | None, inception: InceptionMetrics | None,
                 sigma: float | None, anomaly_scores: list[str], iwae_images: int, seed: int) -> None:
        self.model, self.ae = model, model.autoencoder
        self.judge, self.inception, self.sigma, self.anomaly_scores = judge, inception, sigma, anomaly_scores
        self.count = 0
        self.sums = torch.zeros(3, dtype=torch.float64)  # MSE, PSNR, SSIM
        self.code_counts = torch.zeros(self.ae.codebook_size, dtype=torch.long) if self.ae.is_discrete else None
        # two-stage likelihood: per-image code NLLs (also the anomaly score), and sums of the pixel NLLs
        self.code_nll: list[torch.Tensor] = []
        self.code_nll_prior_sum = self.pixel_nll_sum = 0.0
        self.conditional_prior = False
        # VAE likelihood: one fixed binarisation draw and the ELBO's noise, each from its own stream
        device = self.ae.device
        self.binarize = self.ae.has_elbo and self.ae.config.likelihood == "bernoulli"
        self.binarize_generator = torch.Generator().manual_seed(seed)
        self.elbo_generator = torch.Generator(device=device).manual_seed(seed)
        self.elbo_sum = 0.0
        self.iwae_images = iwae_images
        self.iwae_data: list[torch.Tensor] = []
        self.iwae_labels: list[torch.Tensor] = []
        # feature space of the classifier: the real features (for precision/recall), real and reconstructed statistics
        self.real_features: list[torch.Tensor] = []
        self.real_stats = FrechetStatistics(judge.config.feature_dim) if judge else None
        self.recon_stats = FrechetStatistics(judge.config.feature_dim) if judge else None
        self.normal_scores: dict[str, list[torch.Tensor]] = {s: [] for s in anomaly_scores}

    @torch.no_grad()
    def add(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        """One batch of `b c h w` test images and their `b` labels (None when unlabelled)."""
        ae, device = self.ae.eval(), self.ae.device
        x = images.to(device)
        y = labels.to(device) if labels is not None and ae.requires_labels else None
        if ae.is_discrete:  # the codes are kept for the prior, so tokenize once and decode them
            codes = ae.tokenize(x)
            recon = ae.detokenize(codes)
            self.code_counts += torch.bincount(codes.flatten().cpu(), minlength=len(self.code_counts))
        else:
            recon = ae.reconstruct(x, y)
        x, recon = x.cpu(), recon.cpu()
        self.sums += torch.stack([mse(x, recon), psnr(x, recon), ssim(x, recon)], 1).double().sum(0)
        self.count += len(x)
        if ae.has_elbo:
            self._add_elbo(x, y)
        elif has_code_prior(self.model):
            self._add_code_likelihood(x, labels, codes, recon)
        if self.judge is not None:
            real, _ = self.judge.embed(x)
            self.real_features.append(real)
            self.real_stats.update(real)
            self.recon_stats.update(self.judge.embed(recon)[0])
        if self.inception is not None:
            self.inception.add_real(x, recon)
        for score in self.anomaly_scores:
            # a CVAE scores each image under its best-fitting class: the labels of anomalies are unknown
            self.normal_scores[score].append(anomaly_score(self.model, x, score=score).cpu())

    def _add_elbo(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        data = torch.bernoulli(x, generator=self.binarize_generator) if self.binarize else x
        elbo, _ = importance_weighted_bound(self.ae, data, y, k=1, batch_size=256, generator=self.elbo_generator,
                                            progress=False)
        self.elbo_sum += elbo.sum().item()
        kept = sum(len(d) for d in self.iwae_data)
        if kept < self.iwae_images:  # the k-sample bound runs on the first images once the pass is over
            self.iwae_data.append(data[: self.iwae_images - kept])
            if y is not None:
                self.iwae_labels.append(y[: self.iwae_images - kept].cpu())

    def _add_code_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None, codes: torch.Tensor,
                             recon: torch.Tensor) -> None:
        prior = self.model.prior
        self.conditional_prior = self.model.num_classes > 0 and labels is not None
        unconditional = code_nll(prior, codes)
        self.code_nll.append(unconditional)
        self.code_nll_prior_sum += (code_nll(prior, codes, labels) if self.conditional_prior else unconditional).sum().item()
        self.pixel_nll_sum += discretized_gaussian_nll(x, recon, self.sigma).sum().item()

    def reconstruction(self) -> dict[str, Any]:
        metrics = dict(zip(["mse", "psnr_db", "ssim"], (self.sums / self.count).tolist()))
        if self.code_counts is not None:
            metrics["codebook_usage"], metrics["perplexity"] = codebook_usage(self.code_counts)
        if self.judge is not None:
            metrics["rfd"] = frechet_distance_of_statistics(self.real_stats, self.recon_stats)
            metrics["rfd_feature_space"] = self.judge.description
        if self.inception is not None:
            metrics["rfid"] = self.inception.reconstruction_fid()
            metrics["rfid_images"] = self.count
        return metrics

    def vae_likelihood(self, *, k: int, seed: int, progress: bool) -> dict[str, Any]:
        """The k-sample bound -L_k on the first `iwae_images` images and the one-sample ELBO on all, in nats."""
        conditional = self.ae.requires_labels
        data = torch.cat(self.iwae_data)
        labels = torch.cat(self.iwae_labels) if conditional else None
        n = len(data)
        bound, elbo_same = importance_weighted_bound(self.ae, data, labels, k=k,
                                                     generator=torch.Generator(device=self.ae.device).manual_seed(seed),
                                                     progress=progress)
        return {
            "data": (f"test split, dynamically binarised (one draw, seed {seed})" if self.binarize else
                     "test split as continuous pixels: a density under a Gaussian likelihood, not comparable "
                     "with the discrete NLL tables"),
            "trained_binarized": bool(getattr(self.ae.config, "binarized", False)),
            "bound_on": "-log p(x | y), y the true label" if conditional else "-log p(x)",
            "negative_elbo_nats": self.elbo_sum / self.count,
            "iwae_nats": bound.mean().item(),
            "iwae_nats_standard_error": (bound.std() / math.sqrt(n)).item() if n > 1 else None,
            "iwae_k": k,
            "iwae_images": n,
            "negative_elbo_nats_same_images": elbo_same.mean().item(),
        }

    def two_stage_likelihood(self, image_dims: int) -> dict[str, Any]:
        """The prior's bits per pixel-dimension, and the bound on -log2 p(x)."""
        per_dim = math.log(2) * image_dims * self.count
        unconditional = torch.cat(self.code_nll).sum().item()
        return {
            "prior_bits_per_pixel_dim": self.code_nll_prior_sum / per_dim,
            "prior_conditioned_on_class": self.conditional_prior,
            "prior_bits_per_pixel_dim_unconditional": unconditional / per_dim,
            "decoder_sigma": self.sigma,
            "decoder_bits_per_pixel_dim": self.pixel_nll_sum / per_dim,
            "nll_bound_bits_per_pixel_dim": (unconditional + self.pixel_nll_sum) / per_dim,
            "nll_bound_is": "an upper bound on -log2 p(x) per dimension of the 8-bit test images: -log2 p(c*) of the "
                            "unconditional prior plus a discretised Gaussian decoder (sigma fitted on training images)",
        }


@torch.no_grad()
def sample_metrics(model: GenerativeModel, test: EvaluationPass, train_images: torch.Tensor | None, *,
                   num_samples: int, guidance_scale: float | None, seed: int, batch_size: int = 256,
                   progress: bool = True) -> dict[str, Any]:
    """Draw `num_samples` images batch by batch and score them against the test split.

    In the classifier's space (when `test.judge`): Fréchet distance against the whole test split,
    precision/recall against as many random test images (both depend on set sizes, so the sets are
    equal), the same for `train_images` (uint8 `n c h w`, a random subset) as the floor, and class
    accuracy when conditional; with Inception, FID, IS and KID. A conditional model draws its classes in turn.
    """
    judge, inception = test.judge, test.inception
    num_classes = len(model.class_names or [])
    labels = torch.arange(num_samples) % num_classes if num_classes else None
    settings = sample_settings(model, guidance_scale)
    fake_stats = FrechetStatistics(judge.config.feature_dim) if judge else None
    fake_features, predicted = [], []
    seconds = 0.0
    starts = range(0, num_samples, batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress):
        indices = range(start, min(start + batch_size, num_samples))
        batch_labels = None if labels is None else labels[indices.start : indices.stop]
        began = time.perf_counter()
        samples = sample_images(model, indices, None if batch_labels is None else batch_labels.to(model.device),
                                settings, seed).float().clamp(0, 1).cpu()
        seconds += time.perf_counter() - began
        if judge is not None:
            features, classes = judge.embed(samples)
            fake_stats.update(features)
            fake_features.append(features)
            predicted.append(classes)
        if inception is not None:
            inception.add_samples(samples)
    result: dict[str, Any] = {"num_samples": num_samples, "images_per_second": num_samples / seconds}
    if labels is not None:
        result["guidance_scale"] = settings.guidance_scale
    if judge is not None:
        result.update(_classifier_sample_metrics(test, torch.cat(fake_features), fake_stats, train_images,
                                                 num_samples=num_samples, seed=seed))
        if labels is not None:
            result["class_accuracy"] = (torch.cat(predicted) == labels).double().mean().item()
    else:
        result["classifier"] = f"skipped: pass --classifier DIR (train one with `{CLASSIFIER_COMMAND} --dataset SPEC --out DIR`)"
    if inception is not None:
        result["inception"] = {**inception.sample_metrics(seed), "reference": "the test split"}
        result["inception_fid"] = result["inception"]["fid"]
    else:
        result["inception_fid"] = None
        result["inception_fid_note"] = ("not computed: pass --inception (weights in torch's hub cache) or "
                                        "--inception_weights PATH; the classifier's feature space stands in")
    return result


def _classifier_sample_metrics(test: EvaluationPass, fake: torch.Tensor, fake_stats: FrechetStatistics,
                               train_images: torch.Tensor, *, num_samples: int, seed: int) -> dict[str, Any]:
    judge = test.judge
    real_all = torch.cat(test.real_features)
    generator = torch.Generator().manual_seed(seed)
    real = real_all[torch.randperm(len(real_all), generator=generator)[:num_samples]]
    train = judge.embed(train_images.float().div(255))[0]
    precision, recall = precision_recall(real, fake)
    floor_precision, floor_recall = precision_recall(real, train)
    return {
        "real_images": len(real_all),
        "precision_recall_real_images": len(real),
        "frechet_distance": frechet_distance_of_statistics(test.real_stats, fake_stats),
        "precision": precision,
        "recall": recall,
        "floor": {"frechet_distance": frechet_distance_of_statistics(test.real_stats, FrechetStatistics.of(train)),
                  "precision": floor_precision, "recall": floor_recall,
                  "what": f"{len(train)} random training images against the test split"},
        "feature_space": judge.description,
        "classifier_test_accuracy": judge.config.test_accuracy,
    }


@torch.no_grad()
def anomaly_metrics(model: GenerativeModel, test: EvaluationPass, anomalous: Batches) -> dict[str, float]:
    """ROC-AUC of each anomaly score that applies: reconstruction error, negative ELBO, the prior's code NLL."""
    scores: dict[str, list[torch.Tensor]] = {s: [] for s in test.anomaly_scores}
    codes_nll = []
    for images, _ in anomalous:
        for score in test.anomaly_scores:
            scores[score].append(anomaly_score(model, images, score=score).cpu())
        if has_code_prior(model):
            tokenizer = model.autoencoder
            codes_nll.append(code_nll(model.prior, tokenizer.tokenize(images.to(tokenizer.device)).cpu()))
    auc = {s: roc_auc(torch.cat(test.normal_scores[s]), torch.cat(scores[s])) for s in test.anomaly_scores}
    if codes_nll:
        auc["code_nll"] = roc_auc(torch.cat(test.code_nll), torch.cat(codes_nll))
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
    inception: bool = False,
    inception_weights: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Every metric that applies to `model` on `dataset`'s test split, as a JSON-ready dict.

    `model` is loaded from a folder or Hub id, or any model with the interface of pipelines/protocols.py
    (ours, or another library's behind an adapter: benchmarks/peer_pythae.py). What applies follows
    from its capabilities, and `model_type` names its family in the result. `inception` (or a weights
    file in `inception_weights`) adds FID, IS, KID and rFID; missing weights are an error before any work.
    """
    name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    model = load_model(model)
    ae = model.autoencoder
    for n, value in (("num_samples", num_samples), ("iwae_k", iwae_k), ("iwae_images", iwae_images),
                     ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{n} must be at least 1, got {value}")
    if model.can_sample:
        sample_settings(model, guidance_scale)  # refuses settings the model does not take, before any work
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    start = time.time()
    judge = None
    if classifier is not None:
        judge = FeatureClassifier.load(classifier).to(device)
        config = ae.config
        if (judge.config.image_channels, judge.config.image_size) != (config.image_channels, config.image_size):
            raise ValueError(f"the classifier in {classifier} was trained on {judge.config.image_channels}x"
                             f"{judge.config.image_size}px images, not on {dataset!r}: train one on this dataset")
    metrics = InceptionMetrics(find_inception_weights(inception_weights), device) if (
        inception or inception_weights is not None) else None
    test_batches = _checked_batches(model, dataset, batch_size, max_test_samples)
    anomalous = None if anomaly_dataset is None else _checked_batches(model, anomaly_dataset, batch_size,
                                                                      max_test_samples)

    # A random subset of the training split: sigma of the two-stage decoder, and the floor of the sample metrics.
    wanted = max(SIGMA_FIT_IMAGES if has_code_prior(model) else 0, num_samples if judge and model.can_sample else 0)
    train_images = random_subset(image_batches(dataset, "train", batch_size=batch_size), wanted, seed) if wanted else None
    sigma = (fit_decoder_sigma(ae, train_images[:SIGMA_FIT_IMAGES].float().div(255))
             if has_code_prior(model) else None)

    test = EvaluationPass(model, judge=judge, inception=metrics, sigma=sigma,
                         anomaly_scores=[] if anomalous is None else
                         ["reconstruction"] + (["negative_elbo"] if ae.has_elbo else []),
                         iwae_images=iwae_images, seed=seed)
    for images, labels in tqdm(test_batches, desc="test split", disable=not progress):
        if ae.requires_labels and labels is None:
            raise ValueError(f"a {type(ae).__name__} is scored with the true labels, and {dataset!r} has none: "
                             f"evaluate it on the labelled dataset it was trained on")
        test.add(images, labels)
    result: dict[str, Any] = {"model": name, "family": model.model_type, "dataset": dataset, "test_images": test.count,
                              "reconstruction": test.reconstruction()}
    if ae.has_elbo:
        result["likelihood"] = test.vae_likelihood(k=iwae_k, seed=seed, progress=progress)
    elif has_code_prior(model):
        result["likelihood"] = test.two_stage_likelihood(ae.config.image_channels * ae.config.image_size ** 2)

    if not model.can_sample:
        result["samples"] = f"not applicable: a {type(model).__name__} alone has no prior to sample from"
    elif judge is None and metrics is None:
        result["samples"] = (f"skipped: pass --classifier DIR (train one with "
                             f"`{CLASSIFIER_COMMAND} --dataset SPEC --out DIR`) or the Inception weights")
    else:
        result["samples"] = {"classifier": classifier, **sample_metrics(
            model, test, train_images, num_samples=num_samples, guidance_scale=guidance_scale, seed=seed,
            batch_size=batch_size, progress=progress)}

    if anomalous is None:
        result["anomaly_detection"] = "skipped: pass --anomaly_dataset SPEC (e.g. Fashion-MNIST for an MNIST model)"
    else:
        result["anomaly_detection"] = {"normal": f"{dataset} (test)", "anomalous": f"{anomaly_dataset} (test)",
                                       "roc_auc": anomaly_metrics(model, test, anomalous)}
    result["seconds"] = round(time.time() - start, 1)
    return result


def table_line(result: dict[str, Any]) -> str:
    """One line: the headline figure of each section."""
    rec, lik, smp, ano = (result.get(k) for k in ("reconstruction", "likelihood", "samples", "anomaly_detection"))
    cells = [result["family"], f"PSNR {rec['psnr_db']:.2f} dB", f"SSIM {rec['ssim']:.3f}"]
    if "codebook_usage" in rec:
        cells.append(f"usage {rec['codebook_usage']:.0%} ppl {rec['perplexity']:.0f}")
    cells += [f"{key} {rec[key]:.2f}" for key in ("rfd", "rfid") if key in rec]
    if isinstance(lik, dict) and "iwae_k" in lik:
        cells.append(f"-L_{lik['iwae_k']} {lik['iwae_nats']:.2f} nats (ELBO {lik['negative_elbo_nats']:.2f})")
    elif isinstance(lik, dict):
        cells.append(f"prior {lik['prior_bits_per_pixel_dim']:.3f} b/dim, NLL <= {lik['nll_bound_bits_per_pixel_dim']:.3f} b/dim")
    if isinstance(smp, dict) and "frechet_distance" in smp:
        cells.append(f"FD {smp['frechet_distance']:.2f} (floor {smp['floor']['frechet_distance']:.2f}) "
                     f"P {smp['precision']:.2f} R {smp['recall']:.2f}")
    if isinstance(smp, dict) and "inception" in smp:
        inc = smp["inception"]
        cells.append(f"FID {inc['fid']:.2f} IS {inc['inception_score']:.2f} KID {inc['kid']:.4f}")
    if isinstance(smp, dict) and "class_accuracy" in smp:
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
    p.add_argument("--classifier", default=None, help=f"feature classifier folder (trained by `{CLASSIFIER_COMMAND}`)")
    p.add_argument("--inception", action="store_true",
                   help="add Inception FID, IS, KID and rFID, with the weights from torch's hub cache")
    p.add_argument("--inception_weights", default=None, metavar="PATH",
                   help="the same with torch-fidelity's weights-inception-2015-12-05-6726825d.pth (pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth is the same file) from this path; never downloaded")
    p.add_argument("--anomaly_dataset", default=None, help="dataset spec whose test split is the anomalous class")
    p.add_argument("--iwae_k", type=int, default=5000, help="importance samples of the VAE bound (1 = ELBO)")
    p.add_argument("--iwae_images", type=int, default=100, help="test images the k-sample bound averages over")
    p.add_argument("--guidance_scale", type=float, default=None, help="a pipeline's guidance (default: its own)")
    p.add_argument("--seed", type=int, default=0, help="seed of samples, binarisation and importance samples")
    p.add_argument("--max_test_samples", type=int, default=None, help="score only the first N test images")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch_size", type=int, default=256, help="images per batch of every pass")
    args = p.parse_args(argv)
    result = evaluate(args.model, args.dataset, classifier=args.classifier, anomaly_dataset=args.anomaly_dataset,
                      num_samples=args.samples, iwae_k=args.iwae_k, iwae_images=args.iwae_images,
                      guidance_scale=args.guidance_scale, seed=args.seed, max_test_samples=args.max_test_samples,
                      device=args.device, inception=args.inception, inception_weights=args.inception_weights,
                      batch_size=args.batch_size)
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
    print(table_line(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
