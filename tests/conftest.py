import os
from pathlib import Path

import pytest

# Tests never reach the Hub; the one test that talks to a local Hub double turns this off in its subprocess.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("VQGEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def mnist_dir() -> Path:
    path = SHARED_DATA / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST IDX files not found in {path} (set VQGEN_SHARED_DATA to the folder holding mnist/)")
    return path


@pytest.fixture
def fashion_dir() -> Path:
    path = SHARED_DATA / "fashion_mnist"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real Fashion-MNIST IDX files not found in {path} (set VQGEN_SHARED_DATA)")
    return path
