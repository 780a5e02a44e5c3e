"""From whatever a user passes as `model` (an object, a folder, a Hub id) to a loaded model.

A folder or repo with `pipeline_config.json` is a `TwoStagePipeline`; one with a stage-1
`config.json` is a VQ-VAE, VAE or CVAE (the class comes from its `model_type`).
"""

from __future__ import annotations

import os
from pathlib import Path

from stage1_tokenizer import load_pretrained

from .pipeline import PIPELINE_CONFIG_NAME, TwoStagePipeline
from .protocols import GenerativeModel


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

    A loaded model is anything with the interface of pipelines/protocols.py (ours, or another
    library's behind an adapter). `generative=True` refuses a model that cannot sample (a VQ-VAE
    on its own, which has no prior).
    """
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        model = TwoStagePipeline.from_pretrained(name) if _is_pipeline(name) else load_pretrained(name)
    if not hasattr(model, "autoencoder") or not hasattr(model, "can_sample"):
        raise TypeError(f"model must be a TwoStagePipeline, a VQVAE/VAE/CVAE, or a folder/Hub id of one; "
                        f"got {type(model).__name__}")
    if generative and not model.can_sample:
        raise ValueError(f"a {type(model).__name__} alone cannot sample images: it has no prior over its codes. "
                         "Train one with stage2_prior.train and use TwoStagePipeline.from_parts(tokenizer, prior).")
    return model
