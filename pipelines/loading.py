"""From whatever a user passes as `model` (an object, a folder, a Hub id) to a loaded model.

A folder or repo with `pipeline_config.json` is a `TwoStagePipeline`; one with a stage-1
`config.json` is a VQ-VAE, VAE or CVAE (the class comes from its `model_type`).
"""

from __future__ import annotations

import os
from pathlib import Path

from stage1_tokenizer import VQVAE, PretrainedModel, load_pretrained

from .pipeline import PIPELINE_CONFIG_NAME, TwoStagePipeline

GenerativeModel = TwoStagePipeline | PretrainedModel


def _is_pipeline(name_or_path: str) -> bool:
    path = Path(name_or_path)
    if path.is_dir():
        return (path / PIPELINE_CONFIG_NAME).is_file()
    from huggingface_hub import file_exists

    try:
        return file_exists(str(name_or_path), PIPELINE_CONFIG_NAME)
    except Exception:  # offline or unreachable: let the stage-1 loader give its clear error
        return False


def load_model(model: GenerativeModel | str | os.PathLike, *, generative: bool = False) -> GenerativeModel:
    """`model` itself if it is loaded already, else a pipeline or stage-1 model from a folder or Hub id.

    `generative=True` refuses a VQ-VAE on its own: without a prior it cannot sample.
    """
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model = TwoStagePipeline.from_pretrained(name) if _is_pipeline(name) else load_pretrained(name)
    if not isinstance(model, (TwoStagePipeline, PretrainedModel)):
        raise TypeError(f"model must be a TwoStagePipeline, a VQVAE/VAE/CVAE, or a folder/Hub id of one; "
                        f"got {type(model).__name__}")
    if generative and isinstance(model, VQVAE):
        raise ValueError("a VQ-VAE alone cannot sample images: it has no prior. Train one with "
                         "stage2_prior.train and use TwoStagePipeline.from_parts(tokenizer, prior).")
    return model
