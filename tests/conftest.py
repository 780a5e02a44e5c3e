import os
import subprocess
from pathlib import Path

import pytest
import torch

# Tiny models gain nothing from two intra-op threads, and on a busy 2-core machine the threads'
# barriers stall (a tiny VAE step went from 0.05 s to 1.1 s beside a benchmark).
torch.set_num_threads(1)

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


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(request, monkeypatch):
    """A test not marked `integration` may neither launch a process nor compile: what keeps the unit run fast."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(what):
        def refused(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} {what}: mark it @pytest.mark.integration")
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("launches a process"))
    monkeypatch.setattr(torch, "compile", refuse("compiles"))


def pytest_collection_modifyitems(items):
    # a slow test is an integration test too, so `-m "not integration"` (which replaces the default
    # `-m "not slow"`) leaves it out
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.integration)
