"""Hub datasets by id (needs network; offline the error names the local forms)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

from .source import LOCAL_FORMS, DatasetSpecError, RawSplit, Source, stratified_split


class HubDataset(Source):
    name = "hub"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return not path.exists()

    @staticmethod
    def read(spec: str, path: Path, split: str) -> RawSplit:
        return RawSplit(*_read_hub(spec, split))


def _read_hub(repo_id: str, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FileNotFoundError(f"{repo_id!r} is not an existing folder (nor a Hub dataset id); use {LOCAL_FORMS}.") from None
    try:
        splits = datasets.load_dataset(repo_id)
    except Exception as e:  # offline, unknown repo, HTTP failure
        raise ConnectionError(
            f"could not load {repo_id!r} from the Hub ({type(e).__name__}: {e}). Offline, use a local form: {LOCAL_FORMS}."
        ) from e
    carve = split not in splits  # no own test split: a fixed stratified one from train
    ds = splits["train" if carve else split]
    image_col = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None:
        raise DatasetSpecError(f"Hub dataset {repo_id!r} has no image column (features: {list(ds.features)}).")
    label_col = next((k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
    arrays = [np.asarray(im.convert("L" if im.mode in ("1", "L") else "RGB")) for im in ds[image_col]]
    images = np.stack([a[:, :, None] if a.ndim == 2 else a for a in arrays]).transpose(0, 3, 1, 2)
    labels = np.asarray(ds[label_col], dtype=np.int64) if label_col else None
    names = list(ds.features[label_col].names) if label_col else None
    if carve:
        idx = stratified_split(labels if labels is not None else np.zeros(len(images), np.int64), split)
        images, labels = images[idx], None if labels is None else labels[idx]
    return images, labels, names
