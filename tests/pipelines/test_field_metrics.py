"""The field's metrics and the streaming evaluation: Fréchet distance against its closed form, streaming
equal to all-in-memory, the Inception path (FID, IS, KID, rFID) on random weights through
--inception_weights, missing weights, the ADM sample layout, the installed feature-classifier command."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipelines import family, tiny_tokenizer
from torch import nn

from pipelines.evaluate import evaluate
from pipelines.evaluate import main as evaluate_main
from pipelines.feature_classifier import FeatureClassifier, FeatureClassifierConfig, _ImageCache
from pipelines.feature_classifier import main as classifier_main
from pipelines.inception_metrics import InceptionMetrics, InceptionWeightsMissing, find_inception_weights
from pipelines.npz_writer import NpzWriter
from pipelines.sample import main as sample_main
from pipelines.sample_quality import FrechetStatistics, frechet_distance, frechet_distance_of_statistics
from pipelines.subsets import random_subset
from vqgen.data import image_batches

ROOT = Path(__file__).resolve().parents[2]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- Fréchet distance ----------------------------------------------------------------------------------
def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def _closed_form(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), with tr (S1 S2)^1/2 = tr (S1^1/2 S2 S1^1/2)^1/2 (symmetric)."""
    root1 = _psd_sqrt(cov1)
    return ((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * _psd_sqrt(root1 @ cov2 @ root1).trace()).item()


def _gaussian(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return torch.randn(dim, generator=g, dtype=torch.float64), a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def _with_exact_moments(n: int, mu: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """`n d` rows whose sample mean is `mu` and sample (unbiased) covariance is `cov`, to round-off."""
    z = torch.randn(n, len(mu), generator=gen(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T).view(len(mu), len(mu)))).T  # whitened: covariance I
    return mu + z @ torch.linalg.cholesky(cov).T


def test_frechet_distance_equals_the_closed_form_of_two_gaussians():
    (mu1, cov1), (mu2, cov2) = _gaussian(6, 1), _gaussian(6, 2)
    exact = _closed_form(mu1, cov1, mu2, cov2)
    assert exact > 1  # far from 0, non-commuting covariances: the square root term matters
    a, b = _with_exact_moments(500, mu1, cov1, 3), _with_exact_moments(700, mu2, cov2, 4)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # drawn, not constructed: the estimate converges on the closed form
    draw = torch.distributions.MultivariateNormal(mu1, cov1).sample((200_000,))
    other = torch.distributions.MultivariateNormal(mu2, cov2).sample((200_000,))
    assert frechet_distance(draw, other) == pytest.approx(exact, rel=0.02)
    # the scalar case: (m1 - m2)^2 + (s1 - s2)^2
    one = _with_exact_moments(50, torch.tensor([1.0], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64), 5)
    two = _with_exact_moments(50, torch.tensor([-2.0], dtype=torch.float64), torch.tensor([[9.0]], dtype=torch.float64), 6)
    assert frechet_distance(one, two) == pytest.approx(9 + 1, rel=1e-9)


def test_streaming_frechet_distance_equals_the_all_in_memory_one():
    real = torch.randn(1003, 16, generator=gen(1)) * 3 + 5  # a large mean: the float64 sums must not lose the covariance
    fake = torch.randn(777, 16, generator=gen(2)) * 2 + 4
    whole = frechet_distance(real, fake)
    stats = {"real": FrechetStatistics(16), "fake": FrechetStatistics(16)}
    for name, x, size in (("real", real, 100), ("fake", fake, 61)):
        for piece in x.split(size):  # uneven batches, the last one short
            stats[name].update(piece)
    assert stats["real"].count == 1003
    streamed = frechet_distance_of_statistics(stats["real"], stats["fake"])
    assert streamed == pytest.approx(whole, rel=1e-10)
    mean, cov = stats["real"].mean_and_covariance()
    assert torch.allclose(mean, real.double().mean(0)) and torch.allclose(cov, torch.cov(real.double().T))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance_of_statistics(FrechetStatistics.of(real[:1]), stats["fake"])


def test_random_subset_is_uniform_over_a_sorted_split_and_bounded():
    # a split sorted by class (as an image folder is): "the first k" would hold class 0 only
    images = torch.arange(1000).float().div(1000).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    batches = [(images[i : i + 64], None) for i in range(0, 1000, 64)]
    subset = random_subset(iter(batches), 200, seed=0)
    assert subset.shape == (200, 1, 2, 2) and subset.dtype == torch.uint8
    values = subset[:, 0, 0, 0].float()
    assert torch.histc(values, bins=5, min=0, max=255).min() >= 20  # every fifth of the split is represented
    assert torch.equal(subset, random_subset(iter(batches), 200, seed=0))
    assert not torch.equal(subset, random_subset(iter(batches), 200, seed=1))
    assert len(random_subset(iter(batches), 5000, seed=0)) == 1000


# -- Inception ------------------------------------------------------------------------------------------
def _torch_fidelity_or_skip():
    try:
        from torch_fidelity import feature_extractor_inceptionv3
    except Exception as e:  # missing, or a torchvision of another torch build
        pytest.skip(f"torch-fidelity is not importable ({type(e).__name__}: {e}); install the extra: "
                    f'pip install "vqgen[inception]" (with the torchvision of your torch build)')
    return feature_extractor_inceptionv3


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """torch-fidelity's Inception with random (variance-preserving) weights, saved as its weights file is."""
    from unittest import mock

    fe = _torch_fidelity_or_skip()
    torch.manual_seed(0)
    # build the network with nothing to load: the downloader is replaced by one that returns nothing
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in net.modules():
        if isinstance(module, nn.Conv2d):  # PyTorch's default init shrinks the features to ~1e-8
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_fid_is_kid_and_rfid_with_random_weights(random_inception_weights):
    metrics = InceptionMetrics(random_inception_weights)
    real = torch.rand(12, 3, 32, 32, generator=gen(1))
    metrics.add_real(real[:7], reconstructions=real[:7])  # perfect reconstructions
    metrics.add_real(real[7:], reconstructions=real[7:])
    metrics.add_samples(real)  # samples identical to the real set
    same = metrics.sample_metrics(seed=0)
    assert metrics.reconstruction_fid() == pytest.approx(0.0, abs=1e-6)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and abs(same["kid"]) < 1e-3
    assert same["real_images"] == same["samples"] == 12 and same["kid_subset_size"] == 12
    assert all(math.isfinite(v) for v in same.values()) and same["inception_score"] >= 1.0

    shifted = InceptionMetrics(random_inception_weights)
    shifted.add_real(real, reconstructions=real * 0.2)  # dark reconstructions
    shifted.add_samples(real * 0.2)
    far = shifted.sample_metrics(seed=0)
    assert far["fid"] > 1000 * max(same["fid"], 1e-9) and far["fid"] > 0.1
    assert far["kid"] > 100 * abs(same["kid"]) and shifted.reconstruction_fid() == pytest.approx(far["fid"], rel=1e-9)
    assert far == shifted.sample_metrics(seed=0)  # IS splits and KID subsets are seeded


def test_evaluate_reports_fid_is_kid_and_rfid_through_the_weights_flag(tmp_path, random_inception_weights, capsys):
    family("pipeline").save_pretrained(tmp_path / "pipe")
    out = tmp_path / "r.json"
    evaluate_main(["--model", str(tmp_path / "pipe"), "--dataset", "embedded", "--samples", "10",
                   "--max_test_samples", "10", "--batch_size", "6", "--inception_weights", str(random_inception_weights),
                   "--out", str(out)])
    result = json.loads(out.read_text())
    rec, smp = result["reconstruction"], result["samples"]
    assert math.isfinite(rec["rfid"]) and rec["rfid"] > 0 and rec["rfid_images"] == 10
    inc = smp["inception"]
    assert inc["samples"] == 10 and inc["real_images"] == 10 and inc["reference"] == "the test split"
    assert all(math.isfinite(inc[k]) for k in ("fid", "inception_score", "kid")) and smp["inception_fid"] == inc["fid"]
    assert smp["classifier"].startswith("skipped: pass --classifier")
    assert "FID " in capsys.readouterr().out.strip().splitlines()[-1]


def test_missing_inception_weights_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(InceptionWeightsMissing, match=r"(?s)no Inception weights in torch's hub cache.*"
                                                      r"weights-inception-2015-12-05-6726825d\.pth.*--inception_weights"):
        evaluate(tiny_tokenizer(), "embedded", inception=True, max_test_samples=4, progress=False)
    with pytest.raises(InceptionWeightsMissing, match="--inception_weights .*nowhere.pth: no such file"):
        find_inception_weights(tmp_path / "nowhere.pth")
    cache = tmp_path / "empty_cache" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")  # pytorch-fid's name for the same file
    assert find_inception_weights() == cache / "pt_inception-2015-12-05-6726825d.pth"


def test_a_file_that_is_not_inception_weights_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not torch-fidelity's Inception state dict"):
        InceptionMetrics(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        InceptionMetrics(tmp_path / "junk.pth")


# -- in-house feature space: rFD, accuracy beside every figure ------------------------------------------
@pytest.mark.integration
def test_evaluate_reports_rfd_and_the_classifier_accuracy_beside_its_figures(tmp_path):
    torch.manual_seed(0)
    folder = FeatureClassifier(FeatureClassifierConfig(test_accuracy=0.9731, dataset="embedded")).save(tmp_path / "clf")
    result = evaluate(family("pipeline"), "embedded", classifier=str(folder), num_samples=12, max_test_samples=40,
                      batch_size=16, progress=False)
    rec, smp = result["reconstruction"], result["samples"]
    assert rec["rfd"] >= 0 and "97.31%" in rec["rfd_feature_space"]
    assert "97.31%" in smp["feature_space"] and smp["classifier_test_accuracy"] == 0.9731
    assert smp["real_images"] == 40 and smp["precision_recall_real_images"] == 12
    tokenizer_only = evaluate(tiny_tokenizer(), "embedded", classifier=str(folder), max_test_samples=20, progress=False)
    assert tokenizer_only["reconstruction"]["rfd"] >= 0 and tokenizer_only["samples"].startswith("not applicable")


# -- samples in the ADM layout ---------------------------------------------------------------------------
def test_sample_writes_the_adm_layout(tmp_path):
    family("pipeline").save_pretrained(tmp_path / "pipe")
    sample_main(["--model", str(tmp_path / "pipe"), "--num_samples", "7", "--batch_size", "3", "--class_labels", "2", "5",
                 "--out", str(tmp_path / "s")])
    ours, adm = np.load(tmp_path / "s" / "samples.npz"), np.load(tmp_path / "s" / "samples_adm.npz")
    assert sorted(adm.files) == ["arr_0", "arr_1"]
    assert adm["arr_0"].dtype == np.uint8 and adm["arr_0"].shape == (7, 28, 28, 3)  # grey repeated to RGB
    assert all(np.array_equal(adm["arr_0"][..., c], ours["images"][..., 0]) for c in range(3))
    assert adm["arr_1"].tolist() == [2, 5, 2, 5, 2, 5, 2] == ours["labels"].tolist()
    family("vae").save_pretrained(tmp_path / "vae")
    sample_main(["--model", str(tmp_path / "vae"), "--num_samples", "4", "--batch_size", "4", "--out", str(tmp_path / "u")])
    assert np.load(tmp_path / "u" / "samples_adm.npz").files == ["arr_0"]  # unconditional: no labels


def test_npz_writer_streams_pieces_into_a_standard_npz(tmp_path):
    data = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    with NpzWriter(tmp_path / "a.npz", {"x": ((5, 2, 3), np.uint8), "y": ((5,), np.int64)}) as f:
        for piece in (slice(0, 2), slice(2, 5)):
            f.write(x=data[piece], y=np.arange(5)[piece])
    loaded = np.load(tmp_path / "a.npz")
    assert np.array_equal(loaded["x"], data) and loaded["y"].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rows written / declared"):
        with NpzWriter(tmp_path / "b.npz", {"x": ((5, 2, 3), np.uint8)}) as f:
            f.write(x=data[:2])
    with pytest.raises(ValueError, match="dtype"):
        with NpzWriter(tmp_path / "c.npz", {"x": ((5, 2, 3), np.uint8)}) as f:
            f.write(x=data.astype(np.int16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]  # nothing half-written left behind


# -- the feature classifier: streamed training, installed command ---------------------------------------
def test_classifier_cache_holds_the_split_exactly(tmp_path):
    cache = _ImageCache("embedded", "test", tmp_path, batch_size=100)
    images, labels = zip(*image_batches("embedded", "test", batch_size=500))
    assert torch.equal(torch.from_numpy(np.array(cache.images)).float().div(255), torch.cat(images))
    assert torch.equal(cache.labels, torch.cat(labels))
    seen = torch.cat([y for _, y in cache.shuffled(64, gen())])
    assert sorted(seen.tolist()) == sorted(cache.labels.tolist())  # one epoch: every image once


@pytest.mark.integration
def test_classifier_command_trains_and_records_its_test_accuracy(tmp_path):
    result = classifier_main(["--dataset", "embedded", "--out", str(tmp_path / "clf"), "--epochs", "1"])
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["test_accuracy"] == result["test_accuracy"] > 0.5 and config["dataset"] == "embedded"
    assert FeatureClassifier.load(tmp_path / "clf").config.width == 32


@pytest.mark.integration
def test_classifier_command_is_installed(tmp_path):
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vqgen-feature-classifier"] == "pipelines.feature_classifier:command"
    path = Path(shutil.which("vqgen-feature-classifier") or Path(sys.executable).parent / "vqgen-feature-classifier")
    if not path.is_file():
        pytest.skip(f"{path} not found: reinstall vqgen (`pip install -e .`) to create the command")
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "--dataset" in result.stdout and "test accuracy" in result.stdout
    broken = subprocess.run([str(path), "--dataset", "embedded"], capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2 and "--out" in broken.stderr  # argparse's usage error, not a traceback
    trained = subprocess.run([str(path), "--dataset", "embedded", "--out", str(tmp_path / "clf"), "--epochs", "1"],
                             capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert trained.returncode == 0, trained.stderr[-2000:]  # success exits 0 (main's dict is not the exit status)
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["test_accuracy"] > 0.5
