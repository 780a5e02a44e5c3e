"""`TwoStagePipeline`: a VQ-VAE tokenizer and the prior trained on its codes, saved and loaded as one.

On disk and on the Hub:

    pipeline_config.json   classes, image geometry, default sampling settings, evaluation numbers
    tokenizer/             the stage-1 VQ-VAE (config.json, model.safetensors, README.md)
    prior/                 the stage-2 causal LM (config.json, model.safetensors, README.md)
    samples.png            a grid of samples (seed 0), shown in the model card
    README.md              the model card

`pipeline_config.json` is written last, so a folder that has it is complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from stage1_tokenizer import VQVAE, ModelLoadError
from vqgen.atomic_io import atomic_write_text
from vqgen.pretrained import config_from_dict, push_saved_folder, resolve_model_folder
from stage2_prior import check_compatible, load_prior, save_prior
from stage2_prior.prior import PriorSpec

PIPELINE_CONFIG_NAME = "pipeline_config.json"
PIPELINE_FORMAT_VERSION = 1
SAMPLES_NAME = "samples.png"


@dataclass
class PipelineConfig:
    """What a user of the pipeline needs without opening either half, plus default sampling settings."""

    class_names: list[str] | None = None
    image_size: int = 28
    image_channels: int = 1
    guidance_scale: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)


class TwoStagePipeline:
    """A tokenizer (`VQVAE`) and a prior (a `transformers` causal LM) that belong together.

    >>> pipe = TwoStagePipeline.from_parts("runs/vqvae", "runs/prior")
    >>> images = pipelines.generate(pipe, num_samples=8, class_labels="7")
    """

    def __init__(self, tokenizer: VQVAE, prior: PreTrainedModel, config: PipelineConfig | None = None) -> None:
        if not isinstance(tokenizer, VQVAE):
            raise TypeError(f"the tokenizer must be a VQVAE, got {type(tokenizer).__name__}")
        self.spec: PriorSpec = check_compatible(prior, tokenizer)
        self.tokenizer = tokenizer.eval()
        self.prior = prior.eval()
        if config is None:
            config = PipelineConfig(
                class_names=self.spec.class_names,
                image_size=tokenizer.config.image_size,
                image_channels=tokenizer.config.image_channels,
                # class-conditional priors are trained with label dropout, so guidance is available
                guidance_scale=2.0 if self.spec.class_names else 1.0,
            )
        if config.class_names != self.spec.class_names:
            raise ValueError(
                f"pipeline classes {config.class_names} differ from the prior's {self.spec.class_names}: "
                "the config belongs to another prior."
            )
        self.config = config

    # -- properties ---------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        return self.config.class_names

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names or [])

    @property
    def device(self) -> torch.device:
        return next(self.prior.parameters()).device

    def to(self, device: str | torch.device) -> TwoStagePipeline:
        self.tokenizer.to(device)
        self.prior.to(device)
        return self

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, tokenizer: str | os.PathLike, prior: str | os.PathLike, **config: Any) -> TwoStagePipeline:
        """Load a tokenizer and a prior (folders or Hub ids) and check that they match.

        `config` overrides fields of the default `PipelineConfig` (e.g. `guidance_scale=3.0`).
        """
        pipe = cls(VQVAE.from_pretrained(tokenizer), load_prior(prior))
        if config:
            pipe = cls(pipe.tokenizer, pipe.prior, dataclasses.replace(pipe.config, **config))
        return pipe

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None
    ) -> TwoStagePipeline:
        """Load a folder written by `save_pretrained`, or a Hub repo with that layout."""
        folder = resolve_model_folder(name_or_path, (PIPELINE_CONFIG_NAME,), revision=revision, token=token)
        config = read_pipeline_config(folder / PIPELINE_CONFIG_NAME)
        if Path(name_or_path).is_dir():
            return cls(VQVAE.from_pretrained(folder / "tokenizer"), load_prior(folder / "prior"), config)
        tokenizer = VQVAE.from_pretrained(str(name_or_path), subfolder="tokenizer", revision=revision, token=token)
        prior = load_prior(str(name_or_path), subfolder="prior", revision=revision, token=token)
        return cls(tokenizer, prior, config)

    # -- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *, sample_grid: bool = True) -> Path:
        """Write both halves, a sample grid, the model card, and `pipeline_config.json` last."""
        from .generation import generate
        from vqgen.image_grid import save_image_grid

        folder = Path(save_directory)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        save_prior(self.prior, folder / "prior")
        if sample_grid:
            labels = [c for c in range(self.num_classes) for _ in range(8)] if self.num_classes else None
            images = generate(self, num_samples=len(labels) if labels else 64, class_labels=labels, seed=0,
                              output_type="pt", device=self.device, progress=False)
            save_image_grid(images, folder / SAMPLES_NAME, nrow=8)
        atomic_write_text(folder / "README.md", self.model_card(with_samples=sample_grid))
        data = {"format_version": PIPELINE_FORMAT_VERSION, **dataclasses.asdict(self.config)}
        atomic_write_text(folder / PIPELINE_CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return folder

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool | None = None,
                    revision: str | None = None) -> str:
        """Create `repo_id` if needed and upload the `save_pretrained` folder as one commit."""
        return push_saved_folder(self.save_pretrained, repo_id, token=token, private=private, revision=revision,
                                 commit_message="Upload vqgen two-stage pipeline")

    def model_card(self, with_samples: bool = True) -> str:
        spec, cfg = self.spec, self.config
        numbers = {**{f"tokenizer {k}": v for k, v in self.tokenizer.card_data.get("metrics", {}).items()},
                   **{f"prior {k}": v for k, v in spec.training.get("metrics", {}).items()},
                   **cfg.evaluation}
        rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in numbers.items())
        classes = ", ".join(cfg.class_names) if cfg.class_names else "none (unconditional)"
        return (
            "---\nlibrary_name: vqgen\ntags:\n- vqgen\n- image-generation\n- vq-vae\n- autoregressive-prior\n---\n\n"
            "# vqgen two-stage pipeline\n\n"
            f"A VQ-VAE tokenizer (codebook {spec.tokenizer.codebook_size}, {spec.tokenizer.grid_shape[0]}x"
            f"{spec.tokenizer.grid_shape[1]} codes per {cfg.image_channels}x{cfg.image_size}x{cfg.image_size} image) "
            f"and a {self.prior.config.model_type} prior over its codes. Classes: {classes}.\n\n"
            + (f"![samples]({SAMPLES_NAME})\n\n" if with_samples else "")
            + "```python\nimport pipelines\n"
            "images = pipelines.generate(\"<this folder or repo id>\", num_samples=16, seed=0)\n```\n\n"
            f"Default sampling: guidance scale {cfg.guidance_scale}, temperature {cfg.temperature}, "
            f"top-k {cfg.top_k}, top-p {cfg.top_p}.\n\n"
            f"## Evaluation\n\n| metric | value |\n|---|---|\n{rows or '| (not evaluated) | |'}\n"
        )


def read_pipeline_config(path: Path) -> PipelineConfig:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e}); the file is corrupt.") from e
    version = data.pop("format_version", None) if isinstance(data, dict) else None
    if not isinstance(version, int) or version > PIPELINE_FORMAT_VERSION:
        raise ModelLoadError(f"{path} has format_version {version!r}; this vqgen reads up to "
                             f"{PIPELINE_FORMAT_VERSION}. Upgrade vqgen (pip install -U vqgen).")
    return config_from_dict(PipelineConfig, data, source=str(path))
