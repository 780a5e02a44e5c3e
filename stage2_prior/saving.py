"""Save and push a prior: transformers' own `save_pretrained`, made atomic, plus a model card."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from transformers import PreTrainedModel

from vqgen.atomic_io import atomic_write_text
from vqgen.pretrained import push_saved_folder

from .prior import prior_spec


def prior_model_card(prior: PreTrainedModel) -> str:
    spec = prior_spec(prior)
    training = spec.training
    metrics = training.get("metrics", {})
    metric_rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in metrics.items()) or "| (not evaluated) | |"
    classes = ", ".join(spec.class_names) if spec.class_names else "none (unconditional)"
    return (
        "---\nlibrary_name: vqgen\ntags:\n- vqgen\n- image-generation\n- autoregressive-prior\n---\n\n"
        f"# vqgen prior ({prior.config.model_type})\n\n"
        f"An autoregressive prior over the codes of the tokenizer `{spec.tokenizer.name_or_path}` "
        f"(codebook {spec.tokenizer.codebook_size}, grid {spec.tokenizer.grid_shape[0]}x{spec.tokenizer.grid_shape[1]}, "
        f"images {spec.tokenizer.image_channels}x{spec.tokenizer.image_size}x{spec.tokenizer.image_size}).\n\n"
        f"Classes: {classes}.\n\nTraining data: `{training.get('dataset', 'unknown')}`, {training.get('steps', '?')} steps.\n\n"
        f"## Held-out metrics\n\n| metric | value |\n|---|---|\n{metric_rows}\n\n"
        "```python\nfrom stage2_prior import load_prior, sample_codes\nprior = load_prior(\"<this folder or repo id>\")\n```\n"
    )


def save_prior(prior: PreTrainedModel, folder: str | os.PathLike, *, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """`prior.save_pretrained` into `folder`, each file renamed into place, config.json last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".save-") as tmp:
        prior.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        names = sorted(os.listdir(tmp), key=lambda n: n == "config.json")
        for name in names:
            os.replace(Path(tmp) / name, folder / name)
    atomic_write_text(folder / "README.md", prior_model_card(prior))
    return folder


def push_prior(prior: PreTrainedModel, repo_id: str, *, token: str | None = None, private: bool | None = None) -> str:
    """Upload the `save_prior` folder (weights, config, model card) as one commit."""
    return push_saved_folder(lambda d: save_prior(prior, d), repo_id, token=token, private=private,
                             commit_message="Upload vqgen prior")
