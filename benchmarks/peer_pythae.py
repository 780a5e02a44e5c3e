"""Peer baseline: pythae's VAE and VQ-VAE, trained under our stage-1 budget and scored like ours.

    python benchmarks/peer_pythae.py --dataset ../shared/data/mnist --out benchmarks/results/peer_pythae_mnist.json
    python benchmarks/peer_pythae.py --dataset ../shared/data/cifar10 --steps 2000 --max_minutes 30 \
        --codebook_size 1024 --out benchmarks/results/peer_pythae_cifar10.json

pythae (PyPI `pythae`, https://github.com/clementchadebec/benchmark_VAE) is not a dependency of
vqgen: run this with a Python that has it (`pip install --no-deps pythae imageio` beside our
packages, or a venv made with `--system-site-packages`).

What is trained, for `--steps` optimizer steps of `--batch_size` images (the budget of
benchmarks/quality.py: 600 x 128), or until `--max_minutes` of training have passed if that comes
first (the steps actually taken are recorded), with plain Adam at `--lr` and our own loop (not
pythae's trainer, so the budget is exactly ours). pythae's benchmark networks are chosen by the
images' shape: its MNIST ResNets for 1 x 28 x 28 (MNIST, Fashion-MNIST), its CIFAR ResNets for
3 x 32 x 32 (CIFAR-10 as an image folder).

- `vae`: pythae `VAE`, `latent_dim` 50, nets `Encoder_ResNet_VAE_{MNIST,CIFAR}` /
  `Decoder_ResNet_AE_{MNIST,CIFAR}`. On digits `reconstruction_loss="bce"` (Bernoulli) on dynamically
  binarised images (every batch a fresh x ~ Bernoulli(pixels)), the setting of the published
  likelihood tables; on natural images pythae's `"mse"`, 0.5 ||x - x'||^2, which is a Gaussian
  likelihood with std 1 on pixels in [0, 1] (and is scored as one).
- `vqvae`, `vqvae_ema`: pythae `VQVAE` (`--codebook_size` codes, MSE; pythae's default
  gradient-learned codebook, and its `use_ema=True` option), nets
  `Encoder_ResNet_VQVAE_{MNIST,CIFAR}` / `Decoder_ResNet_VQVAE_{MNIST,CIFAR}` (a 4x4 code grid for
  28 x 28 digits, 8x8 for 32 x 32 images).

The training split is read once through `vqgen.data.image_batches` and held as uint8 (CIFAR-10's
50,000 images: 150 MB); `--max_train_samples` and `--max_test_samples` cut both splits for a
smoke test.

Each model is saved under WORKDIR/DATASET/{vae,vqvae} as `model.safetensors` + `config.json` (no
pickle; pythae's own `save()` would cloudpickle the custom nets) and reused on the next run when its
training settings match. Each is then wrapped in an adapter with the interface of our models
(pipelines/protocols.py; see `PythaeVAEAdapter`, `PythaeVQVAEAdapter`) and scored by
`pipelines.evaluate`, exactly as ours are: the library has no branch for them. Prints one JSON
object; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import emit, header  # noqa: E402

from pipelines.evaluate import evaluate  # noqa: E402
from stage1_tokenizer import GaussianPosterior  # noqa: E402
from stage1_tokenizer.likelihood import pixel_log_likelihood  # noqa: E402
from vqgen.atomic_io import atomic_directory  # noqa: E402
from vqgen.data import image_batches  # noqa: E402
from vqgen.sampling_settings import SamplingSettings, gaussian_latent_settings  # noqa: E402

try:
    from importlib.metadata import version as _dist_version

    from pythae.data.datasets import DatasetOutput
    from pythae.models import VAE, VQVAE, VAEConfig, VQVAEConfig
    from pythae.models.nn.benchmarks.cifar import (
        Decoder_ResNet_AE_CIFAR,
        Decoder_ResNet_VQVAE_CIFAR,
        Encoder_ResNet_VAE_CIFAR,
        Encoder_ResNet_VQVAE_CIFAR,
    )
    from pythae.models.nn.benchmarks.mnist import (
        Decoder_ResNet_AE_MNIST,
        Decoder_ResNet_VQVAE_MNIST,
        Encoder_ResNet_VAE_MNIST,
        Encoder_ResNet_VQVAE_MNIST,
    )

    PYTHAE_VERSION = _dist_version("pythae")
except ImportError as e:  # pragma: no cover - depends on the environment
    raise SystemExit(
        f"benchmarks/peer_pythae.py needs pythae ({e}). It is not a vqgen dependency; install it beside ours "
        "without touching torch: pip install --no-deps pythae imageio"
    ) from e

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
KINDS = ("vae", "vqvae", "vqvae_ema")
MODELS = {"vae": (VAE, VAEConfig), "vqvae": (VQVAE, VQVAEConfig), "vqvae_ema": (VQVAE, VQVAEConfig)}


@dataclass(frozen=True)
class Benchmark:
    """pythae's benchmark networks for one image shape, and the VAE likelihood that fits its images."""

    shape: tuple[int, int, int]  # c h w, fixed by the networks
    vae_nets: tuple[type, type]  # encoder, decoder
    vqvae_nets: tuple[type, type]
    vae_loss: str  # pythae's reconstruction_loss: "bce" on binarised digits, "mse" on natural images

    def nets(self, kind: str) -> tuple[type, type]:
        return self.vae_nets if kind == "vae" else self.vqvae_nets


BENCHMARKS = {
    (1, 28, 28): Benchmark((1, 28, 28), (Encoder_ResNet_VAE_MNIST, Decoder_ResNet_AE_MNIST),
                           (Encoder_ResNet_VQVAE_MNIST, Decoder_ResNet_VQVAE_MNIST), "bce"),
    (3, 32, 32): Benchmark((3, 32, 32), (Encoder_ResNet_VAE_CIFAR, Decoder_ResNet_AE_CIFAR),
                           (Encoder_ResNet_VQVAE_CIFAR, Decoder_ResNet_VQVAE_CIFAR), "mse"),
}


def benchmark_for(shape: Sequence[int]) -> Benchmark:
    if tuple(shape) not in BENCHMARKS:
        raise SystemExit(f"images of shape {tuple(shape)}: pythae's benchmark networks take "
                         f"{' or '.join(str(s) for s in BENCHMARKS)} (MNIST-like digits or CIFAR-10)")
    return BENCHMARKS[tuple(shape)]


# -- data ----------------------------------------------------------------------------------------
def load_split(spec: str, split: str, max_samples: int | None = None) -> torch.Tensor:
    """A split as uint8 `n c h w`: a quarter of the memory of float images (CIFAR-10's train split: 150 MB)."""
    batches = [(x * 255).round_().to(torch.uint8) for x, _ in
               image_batches(spec, split, batch_size=1024, max_samples=max_samples)]
    return torch.cat(batches)


# -- pythae models: build, train, save, load -----------------------------------------------------
def build(kind: str, model_config: dict) -> nn.Module:
    """A pythae model with pythae's benchmark ResNets for its `input_dim`, from a plain-dict config."""
    model_cls, config_cls = MODELS[kind]
    encoder_cls, decoder_cls = benchmark_for(model_config["input_dim"]).nets(kind)
    config = config_cls(**{k: v for k, v in model_config.items() if k != "name"})
    return model_cls(config, encoder=encoder_cls(config), decoder=decoder_cls(config))


def model_config_for(kind: str, benchmark: Benchmark, args: argparse.Namespace) -> dict:
    if kind == "vae":
        return {"input_dim": list(benchmark.shape), "latent_dim": args.latent_dim,
                "reconstruction_loss": benchmark.vae_loss}
    # vqvae_ema: pythae's own EMA codebook option, the fairer match for ours (its default learns the
    # codebook by gradient and collapses to a handful of codes in this budget)
    return {"input_dim": list(benchmark.shape), "latent_dim": args.code_dim,
            "num_embeddings": args.codebook_size, "use_ema": kind == "vqvae_ema"}


def train(model: nn.Module, images: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
          binarize: bool, max_minutes: float | None = None) -> dict:
    """Adam steps on batches drawn without replacement (reshuffled every epoch) from the uint8 `images`:
    `steps` of them, or fewer if `max_minutes` of training pass first."""
    torch.manual_seed(seed)  # pythae draws its reparameterisation noise from the global generator
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    order, cursor, losses = torch.randperm(len(images), generator=gen), 0, []
    start = time.perf_counter()
    deadline = math.inf if max_minutes is None else start + 60 * max_minutes
    for _ in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=gen), 0
        x = images[order[cursor : cursor + batch_size]].float().div_(255.0)  # as vqgen.data scales them
        cursor += batch_size
        if binarize:
            x = torch.bernoulli(x, generator=gen)
        out = model(DatasetOutput(data=x))  # pythae's input convention: inputs["data"]
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        if time.perf_counter() >= deadline:
            break
    seconds = time.perf_counter() - start
    model.eval()
    tail = losses[-min(20, len(losses)):]
    return {"steps_taken": len(losses), "train_seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / len(losses), 4), "final_train_loss": sum(tail) / len(tail)}


def save(model: nn.Module, folder: Path, meta: dict) -> None:
    """`model.safetensors` (the state dict) and `config.json`, written as one atomic directory."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(folder) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load(folder: Path) -> tuple[nn.Module, dict]:
    """Rebuild from `config.json` and load `model.safetensors`: no pickle, no torch.load."""
    meta = json.loads((folder / "config.json").read_text())
    model = build(meta["kind"], meta["model_config"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), meta


def trained_model(kind: str, folder: Path, train_images: torch.Tensor, args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """Reuse `folder` if it was trained with these settings, else train (and save) a new model."""
    benchmark = benchmark_for(train_images.shape[1:])
    model_config = model_config_for(kind, benchmark, args)
    binarize = model_config.get("reconstruction_loss") == "bce"
    training = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "Adam",
                "seed": args.seed, "binarize": binarize, "dataset": str(args.dataset)}
    # only when set, so that models saved before these options existed are still found
    training.update({k: v for k, v in (("max_minutes", args.max_minutes), ("max_train_samples", args.max_train_samples))
                     if v is not None})
    wanted = {"kind": kind, "model_config": model_config, "training": training}
    if not args.retrain and (folder / "model.safetensors").exists() and (folder / "config.json").exists():
        model, meta = load(folder)
        if all(meta.get(k) == v for k, v in wanted.items()):
            return model, {**meta["timing"], "reused": True}
    model = build(kind, model_config)
    timing = train(model, train_images, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed, binarize=binarize, max_minutes=args.max_minutes)
    encoder_cls, decoder_cls = benchmark.nets(kind)
    save(model, folder, {**wanted, "timing": timing, "pythae_version": PYTHAE_VERSION,
                         "pythae_model": type(model).__name__, "pythae_model_config": model.model_config.to_dict(),
                         "encoder": encoder_cls.__name__, "decoder": decoder_cls.__name__})
    return model, {**timing, "reused": False}


# -- adapters: pythae models behind the interface of ours (pipelines/protocols.py) ------------------
def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _geometry(model: nn.Module) -> dict:
    """The image geometry fields of our configs, from a pythae model's `input_dim` (c, h, w)."""
    channels, size, _ = model.model_config.input_dim
    return {"image_channels": channels, "image_size": size}


class PythaeVAEAdapter(nn.Module):
    """A pythae `VAE` with the interface of `stage1_tokenizer.VAE`.

    Its capabilities (`has_elbo`, `can_sample`) decide what `pipelines.evaluate` scores; `model_type`
    only names the family in the result.

    pythae's decoder ends in a Sigmoid and returns probabilities under "reconstruction". Trained with
    `reconstruction_loss="bce"` it is a Bernoulli decoder (our `likelihood="bernoulli"`, on binarised
    images): logits are taken exactly, from the output of the layer before that Sigmoid (a forward
    hook), so no clamping bounds the log-likelihood; for a decoder that does not end in a Sigmoid
    they fall back to torch.logit(p.clamp(1e-6, 1 - 1e-6)), which caps every pixel's -log p at 13.8
    nats. Trained with `"mse"` (0.5 ||x - x'||^2) it is a Gaussian decoder with std 1 (our
    `likelihood="gaussian", gaussian_std=1.0`) whose mean is the Sigmoid's output.
    """

    model_type = "vae"
    is_discrete = False
    has_elbo = True
    can_sample = True
    requires_labels = False
    class_names = None  # unconditional

    def __init__(self, model: VAE) -> None:
        super().__init__()
        loss = model.model_config.reconstruction_loss
        if loss not in ("bce", "mse"):
            raise ValueError(f"PythaeVAEAdapter takes a pythae VAE trained with reconstruction_loss 'bce' or 'mse', "
                             f"not {loss!r}")
        self.model = model
        bernoulli = loss == "bce"
        self.config = SimpleNamespace(likelihood="bernoulli" if bernoulli else "gaussian", gaussian_std=1.0,
                                      **_geometry(model), class_names=None, latent="flat",
                                      latent_dim=model.model_config.latent_dim,
                                      binarized=bernoulli)  # train() binarises every Bernoulli VAE's batches
        last = list(model.decoder.modules())[-1]
        self.exact_logits = bernoulli and isinstance(last, nn.Sigmoid)
        self._pre_sigmoid: torch.Tensor | None = None
        if self.exact_logits:
            last.register_forward_hook(self._keep_sigmoid_input)

    def _keep_sigmoid_input(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._pre_sigmoid = inputs[0]

    @property
    def autoencoder(self) -> PythaeVAEAdapter:
        return self

    @property
    def device(self) -> torch.device:
        return _device(self)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    def encode(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> GaussianPosterior:
        """q(z|x) for images `b c h w` in [0, 1]; pythae's log_covariance is the log-variance."""
        out = self.model.encoder(images)
        return GaussianPosterior(out.embedding, out.log_covariance)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Parameters `b c h w` of p(x|z): Bernoulli logits, or Gaussian means (as ours)."""
        probs = self.model.decoder(z)["reconstruction"]
        if self.config.likelihood == "gaussian":
            return probs
        if self.exact_logits:
            logits, self._pre_sigmoid = self._pre_sigmoid, None
            return logits
        return torch.logit(probs.clamp(1e-6, 1 - 1e-6))

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = self.model.decoder(z)["reconstruction"]
        self._pre_sigmoid = None
        return images

    def encode_latent(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior means `b latent_dim`."""
        return self.encode(images).mean

    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(z)

    def log_likelihood(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, in nats: `b` (our VAE's formula, so both are scored alike)."""
        return pixel_log_likelihood(logits, images, self.config.likelihood, self.config.gaussian_std)

    def negative_elbo(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """KL in closed form plus -log p(x|z) at the posterior mean, in nats: `b` (as ours)."""
        posterior = self.encode(images)
        return posterior.kl() - self.log_likelihood(self.decode_logits(posterior.mean), images)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean; images in [0, 1]."""
        return self.decode(self.encode(images).mean)

    def sampling_settings(self, sampling: SamplingSettings | None = None, *, conditional: bool = False,
                          **kwargs) -> SamplingSettings:
        return gaussian_latent_settings("pythae VAE", sampling, **kwargs)

    def sample_latents(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                       settings: SamplingSettings) -> torch.Tensor:
        """z ~ N(0, temperature^2 I), one per generator (as ours)."""
        return GaussianPosterior.standard_normal(self.latent_shape, self.device).sample_seeded(generators,
                                                                                              settings.temperature)

    @torch.no_grad()
    def sample_batch(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                     settings: SamplingSettings) -> torch.Tensor:
        """`sample_latents` decoded -> images `b c h w` in [0, 1] (as ours)."""
        return self.decode(self.sample_latents(labels, generators, settings))


class PythaeVQVAEAdapter(nn.Module):
    """A pythae `VQVAE` with the interface of `stage1_tokenizer.VQVAE` (tokenize/detokenize/reconstruct)."""

    model_type = "vqvae"
    is_discrete = True
    has_elbo = False
    can_sample = False  # no prior over its codes
    requires_labels = False
    class_names = None

    def __init__(self, model: VQVAE) -> None:
        super().__init__()
        self.model = model
        cfg = model.model_config
        self.config = SimpleNamespace(**_geometry(model), class_names=None, codebook_size=cfg.num_embeddings,
                                      code_dim=cfg.embedding_dim)
        with torch.no_grad():  # the code grid of pythae's nets (4 x 4 for 28 x 28 images, 8 x 8 for 32 x 32)
            probe = model.encoder(torch.zeros(1, *cfg.input_dim, device=_device(model)))
        self._grid = tuple(probe.embedding.shape[2:])

    @property
    def autoencoder(self) -> PythaeVQVAEAdapter:
        return self

    @property
    def device(self) -> torch.device:
        return _device(self)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.code_dim, *self._grid)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self._grid

    def _codebook(self) -> torch.Tensor:
        emb = self.model.quantizer.embeddings  # nn.Embedding, or a buffer under use_ema
        return emb.weight if isinstance(emb, nn.Embedding) else emb

    @torch.no_grad()
    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `b d h w` -> `b h w` long codes, by pythae's own quantizer (eval mode: no EMA update)."""
        quantizer = self.model.quantizer
        was_training = quantizer.training
        quantizer.eval()
        try:
            return quantizer(z.permute(0, 2, 3, 1)).quantized_indices.squeeze(1).long()  # b h w d, as pythae's forward
        finally:
            quantizer.train(was_training)

    def encode_latent(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`b c H W` images in [0, 1] -> pre-quantisation latents `b d h w`."""
        return self.model.encoder(images).embedding.float()

    @torch.no_grad()
    def decode_latent(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Nearest codes of the latents `b d h w`, detokenized."""
        return self.detokenize(self._nearest(z))

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """`b c H W` images in [0, 1] -> `b h w` long codes."""
        return self._nearest(self.encode_latent(images))

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor) -> torch.Tensor:
        """`b h w` long codes -> `b c H W` images in [0, 1]."""
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid_shape:
            raise ValueError(f"codes must have shape [b, {self.grid_shape[0]}, {self.grid_shape[1]}], got {tuple(codes.shape)}")
        quantized = F.embedding(codes.to(_device(self)), self._codebook()).permute(0, 3, 1, 2)
        return self.model.decoder(quantized).reconstruction.clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.detokenize(self.tokenize(images))


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


ADAPTERS = {"vae": PythaeVAEAdapter, "vqvae": PythaeVQVAEAdapter, "vqvae_ema": PythaeVQVAEAdapter}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DEFAULT_DATA),
                   help="folder of MNIST-format IDX files, or an image-folder tree of 32x32 RGB images (CIFAR-10)")
    p.add_argument("--workdir", default="runs/quality_pythae", help="models go to WORKDIR/DATASET/{vae,vqvae}")
    p.add_argument("--models", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per model (the shared budget)")
    p.add_argument("--max_minutes", type=float, default=None,
                   help="also stop each model's training after this many minutes (the steps taken are recorded)")
    p.add_argument("--max_train_samples", type=int, default=None, help="train on the first N images (smoke tests)")
    p.add_argument("--max_test_samples", type=int, default=None, help="score on the first N test images (smoke tests)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="constant Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent_dim", type=int, default=50, help="VAE latent size (ours: --latent_dim 50)")
    p.add_argument("--code_dim", type=int, default=64, help="VQ-VAE code vector size (ours: code_dim 64)")
    p.add_argument("--codebook_size", type=int, default=512)
    p.add_argument("--retrain", action="store_true", help="train even if WORKDIR holds a matching model")
    p.add_argument("--train_only", action="store_true", help="train (or find) the models and stop")
    p.add_argument("--classifier", default=None, help="feature classifier folder for the sample metrics "
                   "(benchmarks/quality.py trains one per dataset in runs/quality/DATASET/classifier)")
    p.add_argument("--anomaly_dataset", default=None, help="dataset spec whose test split is anomalous")
    p.add_argument("--samples", type=int, default=2000, help="generated images for the sample metrics")
    p.add_argument("--iwae_k", type=int, default=5000)
    p.add_argument("--iwae_images", type=int, default=32, help="as in benchmarks/quality.py")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if not Path(args.dataset).is_dir():
        raise SystemExit(f"{args.dataset} does not exist: pass --dataset with a folder of MNIST IDX files "
                         f"or of CIFAR-10 images")
    if args.steps <= 0 or args.batch_size <= 0:
        raise SystemExit("--steps and --batch_size must be positive")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise SystemExit("--max_minutes must be positive")

    name = Path(args.dataset).resolve().name
    train_images = load_split(args.dataset, "train", args.max_train_samples)
    benchmark = benchmark_for(train_images.shape[1:])
    results: dict = {**header("peer_pythae"), "pythae_version": PYTHAE_VERSION, "dataset": args.dataset,
                     "train_images": len(train_images), "steps": args.steps, "max_minutes": args.max_minutes,
                     "batch_size": args.batch_size, "optimizer": f"Adam(lr={args.lr})", "models": {}}
    for kind in args.models:
        folder = Path(args.workdir) / name / kind
        model, timing = trained_model(kind, folder, train_images, args)
        if args.train_only:
            continue
        adapter = ADAPTERS[kind](model)
        encoder_cls, decoder_cls = benchmark.nets(kind)
        results["models"][kind] = {
            "pythae_model": type(model).__name__, "encoder": encoder_cls.__name__, "decoder": decoder_cls.__name__,
            "model_config": model_config_for(kind, benchmark, args), "saved_to": str(folder), **timing,
            "num_parameters": num_parameters(model),
            "tokens_per_image": math.prod(adapter.grid_shape) if kind != "vae" else None,
            "evaluation": evaluate(adapter, args.dataset, classifier=args.classifier,
                                   anomaly_dataset=args.anomaly_dataset, num_samples=args.samples,
                                   iwae_k=args.iwae_k, iwae_images=args.iwae_images, seed=args.seed,
                                   max_test_samples=args.max_test_samples),
        }
        print(json.dumps({kind: results["models"][kind]}), file=sys.stderr)
    emit(results, args.out)
    return results


if __name__ == "__main__":
    main()
