"""Hub datasets by id (needs the network, or the `datasets` cache; offline the error names the local forms)."""

from __future__ import annotations

from pathlib import Path

import datasets

from .columns import image_and_label_columns
from .source import LOCAL_FORMS, DatasetSpecError, Source, carve_split, pick_split


class HubDataset(Source):
    name = "hub"

    @staticmethod
    def claims(spec: str, path: Path) -> bool:
        return not path.exists()

    @staticmethod
    def load(spec: str, path: Path, split: str) -> datasets.Dataset:
        splits = _builder(spec).info.splits or {}
        own = pick_split(list(splits), split)
        name = own or pick_split(list(splits), "train") or next(iter(splits), "train")
        dataset = image_and_label_columns(_load(spec, name, streaming=False), repr(spec))
        return dataset if own else carve_split(dataset, split)

    @staticmethod
    def stream(spec: str, path: Path, split: str) -> datasets.IterableDataset:
        splits = _builder(spec).info.splits or {}
        own = pick_split(list(splits), split)
        if own is None:
            raise DatasetSpecError(f"{spec!r} has no {split} split ({sorted(splits)}); a stream cannot be split "
                                   "reproducibly, so stream a dataset that has one, or drop --streaming.")
        return image_and_label_columns(_load(spec, own, streaming=True), repr(spec))


def _builder(repo_id: str) -> datasets.DatasetBuilder:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise FileNotFoundError(f"{repo_id!r} is not an existing folder (nor a Hub dataset id); use {LOCAL_FORMS}.") from None
    try:
        return datasets.load_dataset_builder(repo_id)
    except Exception as e:  # offline, unknown repo, HTTP failure
        raise ConnectionError(
            f"could not load {repo_id!r} from the Hub ({type(e).__name__}: {e}). Offline, use a local form: {LOCAL_FORMS}."
        ) from e


def _load(repo_id: str, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    try:
        return datasets.load_dataset(repo_id, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001
        raise ConnectionError(f"could not load {repo_id!r} ({split}) from the Hub ({type(e).__name__}: {e}). "
                              f"Offline, use a local form: {LOCAL_FORMS}.") from e
