"""Save and push a prior: transformers' own `save_pretrained`, made atomic, plus vqgen's model card."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from transformers import PreTrainedModel

from vqgen.pretrained import CONFIG_NAME, MODEL_CARD_NAME, model_card, push_saved_folder

from .prior import prior_spec


def prior_model_card(prior: PreTrainedModel) -> str:
    spec = prior_spec(prior)
    tokenizer, training = spec.tokenizer, spec.training
    (h, w), size, channels = tokenizer.grid_shape, tokenizer.image_size, tokenizer.image_channels
    parameters = sum(p.numel() for p in prior.parameters())
    return model_card(
        title=f"vqgen prior ({prior.config.model_type})",
        tags=["image-generation", "autoregressive-prior"],
        description=(
            f"An autoregressive prior over the codes of the tokenizer `{tokenizer.name_or_path}` (codebook "
            f"{tokenizer.codebook_size}, grid {h}x{w}, images {channels}x{size}x{size}): a `transformers` "
            f"{prior.config.model_type} causal LM with {parameters:,} parameters."
        ),
        usage='from stage2_prior import load_prior, sample_codes\nprior = load_prior("<this folder or repo id>")\n'
              "codes = sample_codes(prior, 8)",
        sections={
            "Classes": ", ".join(spec.class_names) if spec.class_names else "none (unconditional)",
            "Training data": f"`{training.get('dataset', 'unknown')}`, {training.get('steps', '?')} steps.",
        },
        metrics_heading="Held-out metrics",
        metrics=training.get("metrics", {}),
    )


def save_prior(prior: PreTrainedModel, folder: str | os.PathLike, *, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """`prior.save_pretrained` plus a model card into `folder`, each file renamed into place, config.json last.

    A folder with a config.json is therefore complete, whatever interrupted an earlier save.
    Weights are safetensors only.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".save-") as tmp:
        prior.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        (Path(tmp) / MODEL_CARD_NAME).write_text(prior_model_card(prior))  # scratch folder: no need to be atomic
        for name in sorted(os.listdir(tmp), key=lambda n: n == CONFIG_NAME):
            os.replace(Path(tmp) / name, folder / name)
    return folder


def push_prior(prior: PreTrainedModel, repo_id: str, *, token: str | None = None, private: bool | None = None) -> str:
    """Upload the `save_prior` folder (weights, config, model card) as one commit."""
    return push_saved_folder(lambda d: save_prior(prior, d), repo_id, token=token, private=private,
                             commit_message="Upload vqgen prior")
