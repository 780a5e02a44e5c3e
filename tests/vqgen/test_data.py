"""The data layer on real images: the embedded digits, MNIST IDX folders, imagefolder trees, shards, the Hub."""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vqgen.data import DatasetSpecError, class_names, images_to_tensor, load_image_dataset

ROOT = Path(__file__).resolve().parents[2]


def pixels(dataset) -> np.ndarray:
    """Every item of a (small) dataset decoded: `n c h w` uint8."""
    return np.stack([dataset[i]["image"].numpy() for i in range(len(dataset))])


@pytest.mark.integration
def test_embedded_digits_are_real_split_fixed_and_disjoint():
    train, test = load_image_dataset("embedded", "train"), load_image_dataset("embedded", "test")
    assert len(train) + len(test) == 5000 and 400 <= len(test) <= 600
    assert class_names(train) == [str(i) for i in range(10)]
    assert set(train.labels) == set(range(10)) == set(test.labels)
    tr = {x.tobytes() for x in pixels(train)}
    te = {x.tobytes() for x in pixels(test)}
    assert not tr & te, "train and test share images"
    again = load_image_dataset("embedded", "test", seed=123)
    assert (again.labels == test.labels).all(), "the split must not depend on the run"
    first = train[0]["image"]
    assert first.dtype == torch.uint8 and first.shape == (1, 28, 28)
    assert first.max() > 200 and first.min() == 0 and (first == 0).float().mean() > 0.5


def test_idx_folder_gives_the_published_counts(mnist_dir):
    train = load_image_dataset(str(mnist_dir), "train")
    test = load_image_dataset(str(mnist_dir), "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    batch = next(iter(DataLoader(train, batch_size=8)))
    images = images_to_tensor(batch["image"])
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert batch["label"].tolist()[:3] == [5, 0, 4]  # the famous first three MNIST digits


def test_fashion_folder_has_fashion_class_names_and_converts(fashion_dir):
    ds = load_image_dataset(str(fashion_dir), "test", image_size=32, channels=3, max_samples=20)
    assert class_names(ds)[9] == "Ankle boot" and len(ds) == 20
    image = ds[0]["image"].numpy()
    assert image.shape == (3, 32, 32) and (image[0] == image[1]).all()


def test_resize_and_channel_conversion_keep_content():
    small = pixels(load_image_dataset("embedded", "test", image_size=14, max_samples=4)).astype(np.float32)
    full = pixels(load_image_dataset("embedded", "test", max_samples=4)).astype(np.float32)
    assert small.shape == (4, 1, 14, 14)
    pooled = full.reshape(4, 1, 14, 2, 14, 2).mean((3, 5))
    assert np.abs(small - pooled).mean() < 20  # a resize, not noise


def test_imagefolder_tree_of_real_digits(tmp_path):
    source = load_image_dataset("embedded", "test", max_samples=30)
    images, labels = pixels(source), source.labels
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / ("train" if i < 20 else "test") / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i}.png")
    train = load_image_dataset(str(tmp_path), "train")
    test = load_image_dataset(str(tmp_path), "test")
    assert len(train) == 20 and len(test) == 10
    names = class_names(train)
    assert all(n.startswith("digit") for n in names)
    # every image keeps its label: the pixels of image i sit under the class folder of label i
    lookup = {image.tobytes(): label for image, label in zip(images, labels)}
    for image, label in zip(pixels(train), train.labels):
        assert names[label] == f"digit{lookup[image.tobytes()]}"


def test_corrupt_image_in_imagefolder_names_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetSpecError, match="broken.png"):  # whichever split of the two the file fell in
        load_image_dataset(str(tmp_path), "train")
        load_image_dataset(str(tmp_path), "test")


def _copy_idx(src: Path, dst: Path, images: bytes | None = None) -> None:
    dst.mkdir()
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        data = gzip.decompress((src / f"{name}.gz").read_bytes())
        if images is not None and "images" in name:
            data = images(data)
        (dst / name).write_bytes(data)


def test_truncated_idx_file_is_a_clear_error(mnist_dir, tmp_path):
    _copy_idx(mnist_dir, tmp_path / "cut", images=lambda d: d[:-100])
    with pytest.raises(DatasetSpecError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_image_dataset(str(tmp_path / "cut"), "test")


def test_wrong_magic_number_is_a_clear_error(mnist_dir, tmp_path):
    _copy_idx(mnist_dir, tmp_path / "magic", images=lambda d: (2049).to_bytes(4, "big") + d[4:])
    with pytest.raises(DatasetSpecError, match="magic number 2049, not 2051"):
        load_image_dataset(str(tmp_path / "magic"), "test")


def test_missing_idx_files_and_bad_arguments(mnist_dir, tmp_path):
    _copy_idx(mnist_dir, tmp_path / "half")
    with pytest.raises(DatasetSpecError, match="train-images-idx3-ubyte"):
        load_image_dataset(str(tmp_path / "half"), "train")
    with pytest.raises(DatasetSpecError, match="split"):
        load_image_dataset("embedded", "dev")
    with pytest.raises(DatasetSpecError, match="max_samples"):
        load_image_dataset("embedded", max_samples=0)
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        load_image_dataset(str(tmp_path / "no" / "such" / "place"))


@pytest.mark.integration
def test_hub_id_while_offline_names_the_local_alternatives():
    code = "from vqgen.data import load_image_dataset; load_image_dataset('ylecun/mnist')"
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**env, "PYTHONPATH": str(ROOT), "HOME": str(ROOT / ".pytest_cache")}, timeout=120)
    assert result.returncode != 0
    assert "ConnectionError" in result.stderr and "embedded" in result.stderr and "IDX" in result.stderr
