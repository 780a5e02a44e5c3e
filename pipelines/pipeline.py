"""`TwoStagePipeline`: a VQ-VAE tokenizer and the prior trained on its codes, saved, loaded and called as one.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Unpack

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from stage1_tokenizer import VQVAE
from stage2_prior import check_compatible, load_prior, sample_codes, save_prior
from stage2_prior.prior import PriorSpec
from vqgen.atomic_io import atomic_write_text
from vqgen.image_grid import class_grid_labels, save_image_grid
from vqgen.pretrained import (
    config_from_dict,
    model_card,
    push_saved_folder,
    read_versioned_json,
    resolve_model_folder,
)
from vqgen.sampling_settings import SETTING_NAMES, SamplingKwargs, SamplingSettings

from .labels import Labels
from .outputs import ImageGenerationOutput
from .sampling import Generator, OutputType, StepCallback, sample

PIPELINE_CONFIG_NAME = "pipeline_config.json"
PIPELINE_FORMAT_VERSION = 2  # 2: the sampling settings in one sub-dict
SAMPLES_NAME = "samples.png"


@dataclass
class PipelineConfig:
    """What a user of the pipeline needs without opening either half, plus default sampling settings."""

    class_names: list[str] | None = None
    image_size: int = 28
    image_channels: int = 1
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, SamplingSettings):
            raise TypeError(f"sampling must be a SamplingSettings, got {type(self.sampling).__name__}")


class TwoStagePipeline:
    """A tokenizer (`VQVAE`) and a prior (a `transformers` causal LM) that belong together.

    >>> pipe = TwoStagePipeline.from_parts("runs/vqvae", "runs/prior")
    >>> images = pipe(num_samples=8, class_labels="7", seed=0).images
    """

    # The interface every model of the pipelines has (pipelines/protocols.py).
    model_type = "two-stage"  # the family name evaluation reports
    can_sample = True
    requires_labels = False  # no labels: unconditional samples (the null class of a conditional prior)

    def __init__(self, tokenizer: VQVAE, prior: PreTrainedModel, config: PipelineConfig | None = None) -> None:
        if not getattr(tokenizer, "is_discrete", False):
            raise TypeError(f"the tokenizer must map images to codes (a VQVAE), got {type(tokenizer).__name__}")
        self.spec: PriorSpec = check_compatible(prior, tokenizer)
        self.tokenizer = tokenizer.eval()
        self.prior = prior.eval()
        if config is None:
            config = PipelineConfig(
                class_names=self.spec.class_names,
                image_size=tokenizer.config.image_size,
                image_channels=tokenizer.config.image_channels,
                # class-conditional priors are trained with label dropout, so guidance is available
                sampling=SamplingSettings(guidance_scale=2.0 if self.spec.class_names else 1.0),
            )
        if config.class_names != self.spec.class_names:
            raise ValueError(
                f"pipeline classes {config.class_names} differ from the prior's {self.spec.class_names}: "
                "the config belongs to another prior."
            )
        self.config = config
        # How the prior decodes: None compiles its one-token step on CUDA in float32 only (`compiles`), True / False
        # force it. Not part of the config: it changes the speed, not the samples.
        self.compile_prior: bool | None = None

    # -- properties ---------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        return self.config.class_names

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names or [])

    @property
    def autoencoder(self) -> VQVAE:
        """The stage-1 model that encodes and decodes images: the tokenizer."""
        return self.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.prior.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.prior.parameters()).dtype

    def to(self, device: str | torch.device | torch.dtype | None = None,
           dtype: torch.dtype | None = None) -> TwoStagePipeline:
        """Move both halves, as diffusers' `pipe.to("cuda")`, `pipe.to(torch.bfloat16)`, `pipe.to("cuda", dtype)`."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
        for model in (self.tokenizer, self.prior):
            model.to(device=device, dtype=dtype)
        return self

    # -- sampling -----------------------------------------------------------------------------------
    def __call__(
        self,
        num_samples: int | None = None,
        class_labels: Labels = None,
        *,
        sampling: SamplingSettings | None = None,
        seed: int | None = None,
        generator: Generator = None,
        batch_size: int = 64,
        output_type: OutputType = "pil",
        device: str | torch.device | None = None,
        progress: bool = True,
        prompt_codes: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        **kwargs: Unpack[SamplingKwargs],
    ) -> ImageGenerationOutput:
        """Sample images: `pipe(class_labels=[1, 2, 3]).images` (3 PIL images); the arguments are those of
        `pipelines.generate`.

        `sampling` None takes this pipeline's defaults (`self.config.sampling`), whose guidance applies
        only with `class_labels`; keyword settings take the place of its fields. Sample i comes from seed (seed, i).
        `.codes` holds the code grids drawn (`b h w` long); `output_type="latent"` puts them in `.images` too.
        """
        return sample(self, num_samples, class_labels, sampling=sampling, seed=seed, generator=generator,
                      batch_size=batch_size, output_type=output_type, device=device, progress=progress,
                      prompt_codes=prompt_codes, callback_on_step_end=callback_on_step_end, **kwargs)

    def sampling_settings(self, sampling: SamplingSettings | None = None, *, conditional: bool = False,
                          **kwargs: Unpack[SamplingKwargs]) -> SamplingSettings:
        """`sampling` (None: the pipeline's defaults) with the keyword settings in place; what the prior refuses raises."""
        defaults = self.config.sampling
        if not conditional:  # the default guidance applies only when there is a class to guide towards
            defaults = dataclasses.replace(defaults, guidance_scale=1.0)
        settings = SamplingSettings.resolve(sampling, defaults, **kwargs)
        if settings.guidance_scale != 1.0 and self.num_classes and not conditional:
            raise ValueError("guidance_scale != 1 needs class_labels to guide towards; pass class_labels, "
                             "or guidance_scale=1.0 for unconditional samples.")
        return settings.check_for(codebook_size=self.spec.tokenizer.codebook_size, conditional=self.num_classes > 0)

    @torch.no_grad()
    def sample_latents(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                       settings: SamplingSettings, *, prompt_codes: torch.Tensor | None = None,
                       callback_on_step_end: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
        """One code grid per generator, `b h w` long; `prompt_codes` (`b t`) are kept as the first t codes.

        `callback_on_step_end(pipe, step, timestep, callback_kwargs)` runs once per drawn code: `step` counts the codes
        drawn in this batch from 0, `timestep` is the code's position in raster order (t + step), `callback_kwargs`
        is `{"codes": b timestep+1}` (the codes so far). Its return value is ignored: drawn codes stay as drawn.
        `progress` shows a bar over the code positions.
        """
        (h, w), done = self.spec.tokenizer.grid_shape, 0 if prompt_codes is None else prompt_codes.shape[1]
        with tqdm(total=h * w - done, desc="codes", unit="code", leave=False, disable=not progress) as bar:
            def on_code(position: int, codes: torch.Tensor) -> None:
                bar.update()
                if callback_on_step_end is not None:
                    callback_on_step_end(self, position - done, position, {"codes": codes})

            return sample_codes(self.prior, len(generators), settings, class_labels=labels, generator=generators,
                                prompt_codes=prompt_codes, compile=self.compiles(), callback=on_code)

    def compiles(self) -> bool | None:
        """`compile_prior`, but eager by default below float32: the compiled CUDA path repeats its codes from call
        to call in float32 only (`stage2_prior.sample_codes`), and a seed must give the same images."""
        return self.compile_prior if self.compile_prior is not None or self.dtype == torch.float32 else False

    def decode_latent(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Code grids `b h w` -> images `b c h w` in [0, 1] (the tokenizer takes no labels)."""
        return self.tokenizer.detokenize(codes.to(self.tokenizer.device))

    @torch.no_grad()
    def sample_batch(self, labels: torch.Tensor | None, generators: Sequence[torch.Generator],
                     settings: SamplingSettings) -> torch.Tensor:
        """One image per generator, `b c h w` in [0, 1]: the prior draws a code grid, the tokenizer decodes it."""
        return self.decode_latent(self.sample_latents(labels, generators, settings))

    @torch.no_grad()
    def complete_codes(self, prompt_codes: torch.Tensor, labels: torch.Tensor | None,
                       generators: Sequence[torch.Generator], temperature: float = 1.0) -> torch.Tensor:
        """Code grids `b h w` whose first codes in raster order are `prompt_codes` (`b t`), the rest from the prior.

        `labels`: `b` long, or None for the null class. Row i is drawn with `generators[i]`.
        """
        return self.sample_latents(labels, generators, SamplingSettings(temperature=temperature), prompt_codes=prompt_codes)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, tokenizer: str | os.PathLike, prior: str | os.PathLike, *, torch_dtype: torch.dtype | None = None,
                   **config: Any) -> TwoStagePipeline:
        """Load a tokenizer and a prior (folders or Hub ids) and check that they match.

        `torch_dtype` as in `from_pretrained`. `config` overrides fields of the default `PipelineConfig` (e.g. `sampling=SamplingSettings(...)`);
        a sampling setting given by name (e.g. `guidance_scale=3.0`) overrides that field of its `sampling`.
        """
        pipe = cls(VQVAE.from_pretrained(tokenizer), load_prior(prior))
        if config:
            settings = {name: config.pop(name) for name in SETTING_NAMES if name in config}
            sampling = SamplingSettings.resolve(config.pop("sampling", None), pipe.config.sampling, **settings)
            pipe = cls(pipe.tokenizer, pipe.prior, dataclasses.replace(pipe.config, sampling=sampling, **config))
        return pipe.to(dtype=torch_dtype)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> TwoStagePipeline:
        """Load a folder written by `save_pretrained`, or a Hub repo with that layout.

        `torch_dtype` (e.g. `torch.bfloat16` for sampling on a GPU) casts both halves; None keeps float32.
        """
        folder = resolve_model_folder(name_or_path, (PIPELINE_CONFIG_NAME,), revision=revision, token=token)
        config = read_pipeline_config(folder / PIPELINE_CONFIG_NAME)
        if Path(name_or_path).is_dir():
            pipe = cls(VQVAE.from_pretrained(folder / "tokenizer"), load_prior(folder / "prior"), config)
        else:
            tokenizer = VQVAE.from_pretrained(str(name_or_path), subfolder="tokenizer", revision=revision, token=token)
            prior = load_prior(str(name_or_path), subfolder="prior", revision=revision, token=token)
            pipe = cls(tokenizer, prior, config)
        return pipe.to(dtype=torch_dtype)

    # -- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *, sample_grid: bool = True) -> Path:
        """Write both halves, a sample grid, the model card, and `pipeline_config.json` last."""
        folder = Path(save_directory)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        save_prior(self.prior, folder / "prior")
        if sample_grid:  # one row of 8 per class (64 unconditional samples without classes), seed 0
            labels = class_grid_labels(self.num_classes)
            images = self(num_samples=64 if labels is None else len(labels), class_labels=labels, seed=0,
                          output_type="pt", progress=False).images
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
        spec, cfg, s = self.spec, self.config, self.config.sampling
        (h, w), size = spec.tokenizer.grid_shape, cfg.image_size
        classes = ", ".join(cfg.class_names) if cfg.class_names else "none (unconditional)"
        return model_card(
            title="vqgen two-stage pipeline",
            tags=["image-generation", "vq-vae", "autoregressive-prior"],
            description=(
                f"A VQ-VAE tokenizer (codebook {spec.tokenizer.codebook_size}, {h}x{w} codes per "
                f"{cfg.image_channels}x{size}x{size} image) and a {self.prior.config.model_type} prior over its codes. "
                f"Classes: {classes}." + (f"\n\n![samples]({SAMPLES_NAME})" if with_samples else "")
            ),
            usage=("from pipelines import TwoStagePipeline\n"
                   "pipe = TwoStagePipeline.from_pretrained(\"<this folder or repo id>\")\n"
                   "images = pipe(num_samples=16, seed=0).images  # or pipelines.generate(\"<this folder or repo id>\", ...)"),
            sections={"Default sampling": f"Guidance scale {s.guidance_scale}, temperature {s.temperature}, "
                                          f"top-k {s.top_k}, top-p {s.top_p}."},
            metrics={**{f"tokenizer {k}": v for k, v in self.tokenizer.card_data.get("metrics", {}).items()},
                     **{f"prior {k}": v for k, v in spec.training.get("metrics", {}).items()},
                     **cfg.evaluation},
            metrics_heading="Evaluation",
        )


def read_pipeline_config(path: Path) -> PipelineConfig:
    """`pipeline_config.json`, its format version checked, its fields matched strictly. Version 1 (vqgen 0.1)
    kept the sampling settings as top-level keys; version 2 keeps them in a `sampling` sub-dict."""
    data = read_versioned_json(path, PIPELINE_FORMAT_VERSION)
    if data.pop("format_version") < 2:
        data["sampling"] = {name: data.pop(name) for name in SETTING_NAMES if name in data}
    if isinstance(data.get("sampling"), dict):
        data["sampling"] = config_from_dict(SamplingSettings, data["sampling"], source=f"{path} (sampling)")
    return config_from_dict(PipelineConfig, data, source=str(path))
