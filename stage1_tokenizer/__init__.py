"""Stage 1 of vqgen: image tokenizers (VQ-VAE) and the continuous VAE/CVAE baselines.

Owns: the stage-1 models and their configs, quantisers (QUANTIZERS: vq, fsq), training losses (LOSSES),
encoder/decoder networks and their registry, presets, and `python -m stage1_tokenizer.train`. A tokenizer
turns pixels into a grid of codes (`tokenize`) and back (`detokenize`).

May import: vqgen (the core); never stage2_prior or pipelines (docs/architecture.md).
"""

from .architectures import ARCHITECTURES
from .configs import AutoencoderConfig, CVAEConfig, VAEConfig, VQVAEConfig
from .outputs import AutoencoderOutput
from .posterior import GaussianPosterior
from vqgen.pretrained import ModelLoadError, PretrainedModel
from .losses import LOSSES, LossTerms, TrainingLoss, build_loss
from .quantizers import QUANTIZERS, FiniteScalarQuantizer, FSQConfig, Quantizer, VectorQuantizer, VectorQuantizerConfig, codebook_usage
from .vae import CVAE, VAE
from .vqvae import VQVAE


def load_pretrained(name_or_path: str, **kwargs) -> PretrainedModel:
    """Load any stage-1 model from a folder or Hub id; the class comes from its config.json."""
    return PretrainedModel.from_pretrained(name_or_path, **kwargs)


__all__ = [
    "ARCHITECTURES", "AutoencoderConfig", "AutoencoderOutput", "CVAE", "CVAEConfig", "FSQConfig", "FiniteScalarQuantizer",
    "GaussianPosterior", "LOSSES", "LossTerms", "ModelLoadError", "PretrainedModel", "QUANTIZERS", "Quantizer",
    "TrainingLoss", "VAE", "VAEConfig", "VQVAE", "VQVAEConfig", "VectorQuantizer", "VectorQuantizerConfig",
    "build_loss", "codebook_usage", "load_pretrained",
]
