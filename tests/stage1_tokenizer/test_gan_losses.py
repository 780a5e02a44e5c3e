"""The perceptual (LPIPS) and adversarial (PatchGAN) losses: their numbers, their schedule, and how the
unchanged training script trains, checkpoints and resumes the discriminator without saving it in the model."""

import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stage1_tokenizer import VQVAE, AutoencoderOutput, build_loss
from stage1_tokenizer.losses import LossConfigurationError
from stage1_tokenizer.losses.adversarial import (AdversarialLoss, AdversarialOptions, adaptive_weight,
                                                 discriminator_loss, generator_loss)
from stage1_tokenizer.losses.patchgan import PatchDiscriminator
from stage1_tokenizer.losses.perceptual import LPIPS, HEAD_KEYS, lpips_package_heads
from stage1_tokenizer.train import main as train
from two_processes import launch_two_cpu_processes

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--channels", "8", "--num_res_blocks", "1", "--codebook_size", "32", "--code_dim", "4", "--batch_size", "16",
        "--max_eval_samples", "64", "--eval_batch_size", "32", "--warmup_steps", "0", "--lr_scheduler", "constant",
        "--extra_losses", "adversarial", "--discriminator_channels", "8", "--eval_steps", "1000"]


# --- the GAN objectives ---------------------------------------------------------------------------------------

def test_hinge_and_non_saturating_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 3.0])
    # hinge: relu(1 - real) = [0, .5, 2] -> 5/6; relu(1 + fake) = [0, 1, 4] -> 5/3
    torch.testing.assert_close(discriminator_loss(real, fake, "hinge"), torch.tensor(0.5 * (5 / 6 + 5 / 3)))
    torch.testing.assert_close(generator_loss(fake, "hinge"), torch.tensor(-1 / 3))
    # non-saturating: -log sigmoid(real) and -log(1 - sigmoid(fake)); the generator's -log sigmoid(fake)
    sig = torch.sigmoid
    expected_d = 0.5 * (-sig(real).log().mean() - (1 - sig(fake)).log().mean())
    torch.testing.assert_close(discriminator_loss(real, fake, "non_saturating"), expected_d)
    torch.testing.assert_close(generator_loss(fake, "non_saturating"), -sig(fake).log().mean())
    # a confident discriminator's non-saturating loss stays finite (softplus, not log of a rounded sigmoid)
    assert torch.isfinite(discriminator_loss(torch.tensor([200.0]), torch.tensor([-200.0]), "non_saturating"))


def test_adaptive_weight_on_known_gradients():
    w = torch.tensor([[3.0, 4.0]], requires_grad=True)  # ‖w‖ = 5
    c = torch.tensor([[0.6, 0.8]])  # ‖c‖ = 1
    rec = 1.5 * (w ** 2).sum()  # ∇ = 3w, norm 15
    g = (c * w).sum()  # ∇ = c, norm 1
    weight = adaptive_weight(rec, g, w)
    torch.testing.assert_close(weight, torch.tensor(15 / (1 + 1e-4)))
    assert not weight.requires_grad
    # the graph survives for the model's own backward
    (rec + g).backward()
    torch.testing.assert_close(w.grad, 3 * w.detach() + c)
    # a generator gradient of (almost) nothing: clamped at 1e4
    v = torch.tensor([1.0], requires_grad=True)
    assert adaptive_weight(2 * v.sum(), 0 * v.sum(), v).item() == 1e4


class _Decoder(nn.Module):
    """`reconstruction = sigmoid(W x)` per pixel: a decoder whose last layer is W, small enough to reason about."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.3]))

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        r = torch.sigmoid(self.weight * x)
        return AutoencoderOutput(reconstruction=r, decoded=r, last_layer=self.weight)


def _adversarial(**options) -> AdversarialLoss:
    torch.manual_seed(0)
    return AdversarialLoss(PatchDiscriminator(1, channels=8, num_layers=2), AdversarialOptions(**options))


def test_the_adversarial_term_is_weight_times_adaptive_weight_times_the_generator_loss():
    decoder, images = _Decoder(), torch.rand(2, 1, 16, 16)
    loss = _adversarial(adversarial_weight=0.5)
    out = decoder(torch.randn(2, 1, 16, 16))
    rec = (out.reconstruction - images).pow(2).mean()
    terms = loss(out, images, step=0, others=rec)
    # λ from the gradients at W, computed here by hand
    (grad_rec,) = torch.autograd.grad(rec, decoder.weight, retain_graph=True)
    g_loss = generator_loss(loss.discriminator(out.reconstruction), "hinge")
    (grad_g,) = torch.autograd.grad(g_loss, decoder.weight, retain_graph=True)
    expected = (grad_rec.norm() / (grad_g.norm() + 1e-4)).clamp(0, 1e4)
    torch.testing.assert_close(terms.terms["adaptive_weight"], expected)
    torch.testing.assert_close(terms.loss, 0.5 * expected * terms.terms["g_loss"])
    assert set(terms.terms) == {"g_loss", "adaptive_weight", "d_loss", "logits_real", "logits_fake"}
    # at λ's own scale the adversarial gradient at W is adversarial_weight times the reconstruction's
    (grad_term,) = torch.autograd.grad(terms.loss, decoder.weight)
    torch.testing.assert_close(grad_term.norm(), 0.5 * grad_rec.norm() * grad_g.norm() / (grad_g.norm() + 1e-4))


def test_before_the_start_step_no_adversarial_term_and_no_discriminator_update():
    decoder, images = _Decoder(), torch.rand(2, 1, 16, 16)
    loss = _adversarial(discriminator_start_step=3)
    for step in (0, 2):
        out = decoder(torch.randn(2, 1, 16, 16))
        terms = loss(out, images, step, others=(out.reconstruction - images).pow(2).mean())
        assert terms.loss.item() == 0.0 and not terms.terms
        assert loss.auxiliary_loss(out, images, step) is None  # so the trainer steps no discriminator
    out = decoder(torch.randn(2, 1, 16, 16))
    terms = loss(out, images, 3, others=(out.reconstruction - images).pow(2).mean())
    assert terms.loss.item() != 0.0 and "g_loss" in terms.terms
    d_loss = loss.auxiliary_loss(out, images, 3)
    d_loss.backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    assert decoder.weight.grad is None, "the discriminator's loss judges detached reconstructions"


def test_in_evaluation_the_term_is_reported_and_adds_nothing():
    decoder, images = _Decoder(), torch.rand(2, 1, 16, 16)
    loss = _adversarial()
    with torch.no_grad():
        out = decoder(torch.randn(2, 1, 16, 16))
        terms = loss(out, images, 0, others=(out.reconstruction - images).pow(2).mean())
    assert terms.loss.item() == 0.0 and terms.terms["adaptive_weight"].item() == 0.0
    assert {"g_loss", "d_loss", "logits_real", "logits_fake"} <= set(terms.terms)


def test_the_loss_sum_hands_the_other_parts_to_the_adversarial_loss_and_trains_only_the_discriminator():
    model = VQVAE(channels=8, num_res_blocks=1, codebook_size=16, code_dim=4)
    x = torch.rand(2, 1, 28, 28)
    loss = build_loss(model, ["adversarial"], {"adversarial": AdversarialOptions(discriminator_channels=8)})
    out = model(x)
    terms = loss(out, x, step=0)
    others = terms.terms["reconstruction_loss"] + terms.terms["commitment_loss"]
    expected = adaptive_weight(others, generator_loss(loss.parts[1].discriminator(out.reconstruction), "hinge"),
                               out.last_layer)
    torch.testing.assert_close(terms.terms["adaptive_weight"], expected)
    torch.testing.assert_close(terms.loss, others + 0.5 * expected * terms.terms["g_loss"])
    assert [part for part, _ in loss.optimizer_groups()] == [loss.parts[1]]
    # GroupNorm, not BatchNorm: an image's logits do not depend on the rest of its batch
    d = loss.parts[1].discriminator
    torch.testing.assert_close(d(x)[:1], d(x[:1]))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())


# --- training, checkpoints, resumption -------------------------------------------------------------------------

def test_gan_training_resumes_bit_identically_and_keeps_the_discriminator_out_of_the_model(tmp_path):
    # the discriminator starts at step 4: the first half runs without it, the resumed half switches it on
    common = ["--model", "vqvae", "--seed", "3", "--max_train_samples", "128", "--discriminator_start_step", "4", *TINY]
    train([*common, "--output_dir", str(tmp_path / "straight"), "--max_steps", "6", "--checkpointing_steps", "6"])
    train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "3", "--checkpointing_steps", "3"])
    summary = train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "6", "--checkpointing_steps",
                     "6", "--resume_from_checkpoint", "latest"])
    assert summary["steps"] == 6 and {"test/g_loss", "test/d_loss", "test/logits_real"} <= set(summary)
    for name in ("model.safetensors", "checkpoints/checkpoint-6/model_1.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    split = tmp_path / "split" / "checkpoints"
    # before the start step the discriminator's optimizer never stepped; after it, it did
    assert torch.load(split / "checkpoint-3/optimizer_1.bin", weights_only=True)["state"] == {}
    assert torch.load(split / "checkpoint-6/optimizer_1.bin", weights_only=True)["state"] != {}
    before, after = (load_file(split / f"checkpoint-{s}/model_1.safetensors") for s in (3, 6))
    assert any(k.startswith("discriminator.") for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    # the saved tokenizer holds exactly the tokenizer's own weights
    saved = load_file(tmp_path / "straight" / "model.safetensors")
    assert set(saved) == set(VQVAE(channels=8, num_res_blocks=1, codebook_size=32, code_dim=4).state_dict())


@pytest.mark.integration
def test_gan_training_under_two_processes_agrees_and_resumes(tmp_path):
    common = ["stage1_tokenizer.train", "--model", "vqvae", "--max_train_samples", "512", "--output_dir", str(tmp_path),
              "--checkpointing_steps", "2", "--discriminator_start_step", "1", "--gan_loss", "non_saturating", *TINY]
    first = launch_two_cpu_processes(*common, "--max_steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch_two_cpu_processes(*common, "--max_steps", "4", "--resume_from_checkpoint", "latest")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    # model and discriminator identical on both processes: the discriminator's gradients were averaged
    assert summary["steps"] == 4 and summary["processes_seen"] == 2
    assert summary["weights_max_abs_diff_across_processes"] == 0.0
    discriminators = [load_file(tmp_path / f"checkpoints/checkpoint-{s}/model_1.safetensors") for s in (2, 4)]
    assert any(not torch.equal(discriminators[0][k], discriminators[1][k]) for k in discriminators[0])


# --- LPIPS ---------------------------------------------------------------------------------------------------------

# torchvision's VGG16 `features`, written out here from the paper's configuration D, so that the
# reference is independent of vqgen's own feature stack.
VGG16_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _vgg16_features() -> nn.Sequential:
    layers, channels = [], 3
    for v in VGG16_D:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


@pytest.fixture
def reference_lpips(monkeypatch):
    """The `lpips` package's LPIPS class. Its import needs torchvision only for `models.vgg16().features`;
    where no working torchvision is installed (the CUDA torchvision wheel does not load beside the CPU
    torch), a stand-in module provides exactly that."""
    if lpips_package_heads() is None:
        pytest.skip("the reference `lpips` package is not installed (pip install --no-deps lpips==0.1.4)")
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or a build for another torch whose operators fail to register
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            monkeypatch.delitem(sys.modules, name)
        stand_in = types.ModuleType("torchvision")
        stand_in.models = types.SimpleNamespace(
            vgg16=lambda pretrained=False, **kwargs: types.SimpleNamespace(features=_vgg16_features()))
        monkeypatch.setitem(sys.modules, "torchvision", stand_in)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("lpips").LPIPS


def test_lpips_matches_the_reference_implementation_on_identical_weights(tmp_path, reference_lpips):
    torch.manual_seed(0)
    reference = reference_lpips(net="vgg", pretrained=True, pnet_rand=True, verbose=False)  # published heads
    # random backbone weights, the same in both: the reference's, saved as a torchvision vgg16 state dict
    backbone = {f"features.{k}": v for slice_ in (reference.net.slice1, reference.net.slice2, reference.net.slice3,
                                                   reference.net.slice4, reference.net.slice5)
                for k, v in slice_.state_dict().items()}
    assert len(backbone) == 26
    save_file({k: v.contiguous() for k, v in backbone.items()}, tmp_path / "vgg16.safetensors")
    ours = LPIPS.from_file(tmp_path / "vgg16.safetensors")  # the heads come from the installed wheel
    x, y = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    expected = reference(x, y, normalize=True).flatten()
    got = ours(x, y)
    print("LPIPS max abs diff vs reference:", (got - expected).abs().max().item())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x, x), torch.zeros(4))
    # grey images are judged as RGB with equal channels
    g1, g2 = torch.rand(2, 1, 24, 24), torch.rand(2, 1, 24, 24)
    torch.testing.assert_close(ours(g1, g2), reference(g1.expand(-1, 3, -1, -1), g2.expand(-1, 3, -1, -1),
                                                       normalize=True).flatten(), rtol=1e-5, atol=1e-5)


def _random_lpips_file(path: Path, heads: bool = True) -> Path:
    from stage1_tokenizer.losses.perceptual import VGG16_BLOCKS

    weights = {}
    for block in VGG16_BLOCKS:
        for i, c_in, c_out in block:
            weights[f"features.{i}.weight"] = 0.05 * torch.randn(c_out, c_in, 3, 3)
            weights[f"features.{i}.bias"] = torch.zeros(c_out)
    if heads:
        weights |= {key: torch.rand(1, block[-1][2], 1, 1) for key, block in zip(HEAD_KEYS, VGG16_BLOCKS)}
    torch.save(weights, path)
    return path


def test_the_lpips_loss_is_frozen_and_saved_nowhere(tmp_path):
    from stage1_tokenizer.losses import LPIPSLoss
    from stage1_tokenizer.losses.perceptual import LPIPSOptions

    model = VQVAE(channels=8, num_res_blocks=1, codebook_size=16, code_dim=4)
    options = {"lpips": LPIPSOptions(lpips_weights=str(_random_lpips_file(tmp_path / "vgg16.pth")), lpips_weight=0.25)}
    loss = build_loss(model, ["lpips"], options)
    assert isinstance(loss.parts[1], LPIPSLoss)
    assert list(loss.parameters()) == [] and loss.state_dict() == {} and loss.optimizer_groups() == []
    x = torch.rand(2, 1, 28, 28)
    out = model(x)
    terms = loss(out, x, step=0)
    torch.testing.assert_close(terms.loss, terms.terms["reconstruction_loss"] + terms.terms["commitment_loss"]
                               + 0.25 * terms.terms["lpips"])
    terms.loss.backward()
    assert out.last_layer.grad is not None


def test_lpips_weights_that_are_not_vgg16_are_a_clear_error(tmp_path):
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(LossConfigurationError, match="lack"):
        LPIPS.from_file(tmp_path / "partial.pth")
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(LossConfigurationError, match="never unpickles"):
        LPIPS.from_file(tmp_path / "pickled.pth")


@pytest.mark.integration
def test_lpips_without_weights_is_one_clear_error_from_the_command_line(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_torch_home"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "stage1_tokenizer.train", "--extra_losses", "lpips", "--max_steps", "1",
                          "--output_dir", str(tmp_path / "run"), "--channels", "8"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--lpips_weights" in errors[0] and "does not download" in errors[0], run.stderr[-2000:]
    assert not (tmp_path / "run" / "model.safetensors").exists()
