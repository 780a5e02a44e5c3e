"""Save, load and push every vqgen model the same way (diffusers' ModelMixin/ConfigMixin idea).

A model folder holds `config.json` (the config dataclass, a `model_type` and a format version),
`model.safetensors` and a `README.md` model card. Loading never runs code: weights come only from
safetensors, the model type maps to a fixed table of classes, and keys are matched strictly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic_io import atomic_path, atomic_write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
# The newest format any model type writes. Each config class writes its own `format_version` (1 unless
# it says otherwise), so a change to one model type does not make older vqgens refuse the others.
FORMAT_VERSION = 2

ConfigT = TypeVar("ConfigT")
ModelT = TypeVar("ModelT", bound="PretrainedModel")


class ModelLoadError(OSError):
    """A model folder or Hub repo that cannot be loaded; the message says why and what to do."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """The fields config.json holds: a config's own `to_dict` where it has one (to leave out fields an older
    vqgen would refuse while they are at the value that vqgen implied), else every field."""
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if to_dict is not None else dataclasses.asdict(config)


def config_from_dict(config_class: type[ConfigT], data: dict[str, Any], source: str = "config") -> ConfigT:
    """Build a config dataclass, refusing fields it does not know instead of silently dropping them."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ModelLoadError(
            f"{source} has field(s) {unknown} that {config_class.__name__} does not know; it was probably written "
            "by a newer vqgen: upgrade vqgen (pip install -U vqgen)."
        )
    try:
        return config_class(**data)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{source} is not a valid {config_class.__name__}: {e}") from e


def resolve_model_folder(
    name_or_path: str | os.PathLike,
    filenames: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME),
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local folder holding `filenames`: `name_or_path` itself, or a Hub download of it."""
    local = Path(name_or_path)
    if subfolder:
        local = local / subfolder
    if local.is_dir():
        missing = [f for f in filenames if not (local / f).is_file()]
        if missing:
            raise ModelLoadError(
                f"{local} is missing {missing}: it is not a folder written by save_pretrained (or the save was "
                "interrupted). Point to the folder that holds config.json and model.safetensors."
            )
        return local
    if local.exists():
        raise ModelLoadError(f"{local} is a file; pass the folder written by save_pretrained instead.")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = str(name_or_path)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelLoadError(
            f"{repo_id!r} is neither an existing local folder nor a valid Hub repo id (like 'user/model'). "
            "Check the path."
        ) from None
    try:
        paths = [
            hf_hub_download(repo_id, f, subfolder=subfolder, revision=revision, token=token, library_name="vqgen")
            for f in filenames
        ]
    except Exception as e:  # offline, unknown repo, missing file, HTTP failure: one clear message for all
        raise ModelLoadError(
            f"{repo_id!r} is not a local folder, and fetching it from the Hub failed ({type(e).__name__}: {e}). "
            "If you are offline (HF_HUB_OFFLINE=1 or no network), pass the path of a folder written by "
            "save_pretrained, or download the repo once while online."
        ) from e
    return Path(paths[0]).parent


def push_saved_folder(
    save: Callable[[Path], Any],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload with vqgen",
) -> str:
    """Run `save(folder)` into a scratch folder and upload that folder as one commit to `repo_id`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp))
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return str(info)


def read_versioned_json(path: Path, max_version: int) -> dict[str, Any]:
    """A JSON object with its `format_version` popped and checked: the one reader of every saved config."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e}); the file is corrupt.") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object.")
    version = data.pop("format_version", None)
    if not isinstance(version, int) or version > max_version:
        raise ModelLoadError(
            f"{path} has format_version {version!r}; this vqgen reads up to {max_version}. "
            "Upgrade vqgen (pip install -U vqgen)."
        )
    data["format_version"] = version
    return data


def model_card(*, title: str, tags: list[str], description: str, usage: str, metrics: dict[str, Any],
               metrics_heading: str = "Final metrics (test split)", sections: dict[str, str] | None = None,
               datasets: list[str] | None = None) -> str:
    """The one model card of every saved vqgen thing: YAML front matter, description, usage, metrics."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="vqgen", tags=["vqgen", *tags], datasets=datasets or None)
    rows = "\n".join(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    extra = "".join(f"## {heading}\n\n{body}\n\n" for heading, body in (sections or {}).items())
    return (
        f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{description}\n\n```python\n{usage}\n```\n\n{extra}"
        f"## {metrics_heading}\n\n| metric | value |\n|---|---|\n{rows or '| (not evaluated) | |'}\n"
    )


class PretrainedModel(nn.Module):
    """Base of every vqgen model saved as config.json + model.safetensors: `save_pretrained`,
    `from_pretrained`, `push_to_hub`. A package's models say where they come from (`package`, used in
    the model card's usage line and in error messages).

    Subclasses set `model_type` and `config_class`; they register themselves in a fixed table, which
    is the only way a `config.json` selects a class.
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    package: ClassVar[str] = "vqgen"
    _registry: ClassVar[dict[str, type[PretrainedModel]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model_type" in cls.__dict__:
            PretrainedModel._registry[cls.model_type] = cls

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        # Filled by the training script; becomes the model card's "training data" and "metrics".
        self.card_data: dict[str, Any] = {}

    # -- saving ---------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write config.json, model.safetensors and README.md into `save_directory`.

        Each file is written atomically and config.json last, so a folder with a config is complete.
        `state_dict` lets a distributed trainer pass `accelerator.get_state_dict(model)`.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt", "model_type": self.model_type})
        atomic_write_text(folder / MODEL_CARD_NAME, self.model_card())
        version = getattr(self.config_class, "format_version", 1)
        config = {"model_type": self.model_type, "format_version": version, **config_to_dict(self.config)}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return folder

    def model_card(self) -> str:
        dataset = self.card_data.get("dataset")
        name = type(self).__name__
        training = self.card_data.get("training", {})
        training_rows = "\n".join(f"- {k}: `{v}`" for k, v in training.items())
        config_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in config_to_dict(self.config).items())
        return model_card(
            title=f"vqgen {name}",
            tags=[self.model_type, "image-tokenizer" if hasattr(self, "tokenize") else "vae"],
            datasets=[dataset] if dataset and "/" in dataset and not Path(dataset).exists() else None,
            description=f"A model of [vqgen](https://github.com/vqgen/vqgen) (`model_type: {self.model_type}`).",
            usage=f"from {self.package} import {name}\nmodel = {name}.from_pretrained(\"<this folder or repo id>\")",
            sections={
                "Training data": f"{dataset or f'unknown (not trained with {self.package}.train)'}\n\n{training_rows}",
                "Config": f"| field | value |\n|---|---|\n{config_rows}",
            },
            metrics=self.card_data.get("metrics", {}),
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
    ) -> str:
        """Create `repo_id` if needed and upload the `save_pretrained` folder; returns the commit URL."""
        return push_saved_folder(self.save_pretrained, repo_id, token=token, private=private, revision=revision,
                                 commit_message=commit_message or f"Upload vqgen {type(self).__name__}")

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        name_or_path: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        map_location: str | torch.device = "cpu",
    ) -> ModelT:
        """Load a model from a local folder or a Hub repo id, strictly (every key must match).

        Called on `PretrainedModel` itself, the class is chosen from `config.json`'s `model_type`.
        """
        folder = resolve_model_folder(name_or_path, subfolder=subfolder, revision=revision, token=token)
        data = read_versioned_json(folder / CONFIG_NAME, FORMAT_VERSION)
        version = data.pop("format_version")
        model_type = data.pop("model_type", None)
        model_class = cls._registry.get(model_type) if isinstance(model_type, str) else None
        if model_class is None:
            raise ModelLoadError(
                f"{folder / CONFIG_NAME} has model_type {model_type!r}; this loader knows "
                f"{sorted(cls._registry)}. Is this a stage-2 prior or a pipeline folder? Load it with its own class."
            )
        if cls is not PretrainedModel and not issubclass(model_class, cls):
            raise ModelLoadError(
                f"{folder} holds a {model_class.__name__} (model_type {model_type!r}), not a {cls.__name__}: "
                f"load it with {model_class.__name__}.from_pretrained(...)."
            )
        upgrade = getattr(model_class.config_class, "upgrade", None)
        if upgrade is not None:
            data = upgrade(data, version)
        config = config_from_dict(model_class.config_class, data, source=str(folder / CONFIG_NAME))
        model = model_class(config)
        try:
            state = load_file(folder / WEIGHTS_NAME, device=str(map_location))
        except Exception as e:
            raise ModelLoadError(f"{folder / WEIGHTS_NAME} could not be read as safetensors ({e}); the file is corrupt or truncated.") from e
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatch
            missing, unexpected = [str(e)], []
        if missing or unexpected:
            raise ModelLoadError(
                f"{folder / WEIGHTS_NAME} does not match config.json: missing/mismatched keys {missing}, unexpected "
                f"keys {unexpected}. The weights and the config come from different models; re-save with save_pretrained."
            )
        return model.to(map_location).eval()
