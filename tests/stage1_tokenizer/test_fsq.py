"""FSQ: codes in range, every code reachable, straight-through gradient, round trips; and the seam:
trained under 2 CPU processes by the unchanged training script, then a prior and `generate` on top."""

import itertools
import json

import pytest
import torch

from stage1_tokenizer import VQVAE, FiniteScalarQuantizer, FSQConfig, load_pretrained
from two_processes import launch_two_cpu_processes

LEVELS = [8, 5, 5, 5]


def identity_fsq(levels=LEVELS) -> FiniteScalarQuantizer:
    """dim == len(levels): no projection, so the tests see the scalar quantiser itself."""
    return FiniteScalarQuantizer(FSQConfig(levels=levels), dim=len(levels))


def test_codebook_size_is_the_product_of_levels_and_config_agrees():
    assert identity_fsq().codebook_size == 1000 == FSQConfig(levels=LEVELS).codebook_size
    assert FiniteScalarQuantizer(FSQConfig(levels=[8, 8, 8, 5, 5, 5]), dim=64).codebook_size == 64000
    with pytest.raises(ValueError, match="levels"):
        FSQConfig(levels=[8, 1])


def test_every_code_is_reachable_and_codes_stay_in_range():
    q = identity_fsq()
    # A dense sweep of each channel over the tanh's range hits every level of every channel.
    grid = torch.linspace(-6, 6, 41)
    z = torch.stack(torch.meshgrid(*[grid] * 4, indexing="ij"), 0).reshape(4, -1)  # 4 x 41^4
    codes = q.nearest(z.T.reshape(-1, 4, 1, 1))
    assert codes.min() >= 0 and codes.max() < 1000
    assert torch.unique(codes).numel() == 1000


def test_straight_through_gradient_is_the_bound_derivative():
    q = identity_fsq()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    upstream = torch.randn_like(out.quantized)
    (out.quantized * upstream).sum().backward()
    # d round(x)/dx is taken as 1, so the gradient is that of the bounding tanh, scaled by 1/half_width.
    z2 = z.detach().clone().requires_grad_(True)
    digits = q._bound(z2.permute(0, 2, 3, 1)) / q.half_width
    (digits.permute(0, 3, 1, 2) * upstream).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert z.grad.abs().sum() > 0 and out.losses == {}


def test_lookup_and_nearest_round_trip():
    torch.manual_seed(0)
    q = FiniteScalarQuantizer(FSQConfig(levels=LEVELS), dim=16)  # with projections
    z = torch.randn(3, 16, 4, 4) * 3
    out = q(z)
    torch.testing.assert_close(q.lookup(out.codes), out.quantized)
    assert torch.equal(q.nearest(z), out.codes)
    # lookup is injective on the whole codebook and lands on the normalised grid [-1, 1]
    values = identity_fsq().lookup(torch.arange(1000).reshape(1, 10, 100))
    assert values.abs().max() <= 1 and torch.unique(values.flatten(2)[0].T, dim=0).shape[0] == 1000
    assert out.counts.sum() == 3 * 4 * 4
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        q.lookup(torch.tensor([[[1000]]]))


def test_fsq_tokenizer_round_trip_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = VQVAE(channels=8, num_res_blocks=1, code_dim=4, quantizer=FSQConfig(levels=[5, 5, 3, 3]))
    x = torch.rand(2, 1, 28, 28)
    codes = model.tokenize(x)
    assert model.codebook_size == 225 and codes.shape == (2, 7, 7)
    torch.testing.assert_close(model.detokenize(codes), model(x).reconstruction)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantizer"] == {"type": "fsq", "levels": [5, 5, 3, 3]}
    loaded = load_pretrained(tmp_path)
    assert torch.equal(loaded.tokenize(x), codes)


@pytest.mark.integration
def test_fsq_trained_under_two_processes_then_a_prior_and_generate(tmp_path):
    import pipelines
    from stage2_prior import load_prior

    result = launch_two_cpu_processes(
        "stage1_tokenizer.train", "--model", "vqvae", "--quantizer", "fsq", "--fsq_levels", "5", "5", "3", "3",
        "--channels", "8", "--num_res_blocks", "1", "--code_dim", "4", "--batch_size", "16", "--max_steps", "6",
        "--max_train_samples", "128", "--max_eval_samples", "64", "--eval_batch_size", "32", "--warmup_steps", "0",
        "--eval_steps", "3", "--checkpointing_steps", "0", "--output_dir", str(tmp_path / "tok"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "tok" / "training_summary.json").read_text())
    assert summary["processes_seen"] == 2 and summary["weights_max_abs_diff_across_processes"] == 0.0
    assert 0 < summary["test/codebook_usage"] <= 1

    from stage2_prior.train import main as train_prior

    train_prior(["--tokenizer", str(tmp_path / "tok"), "--output_dir", str(tmp_path / "prior"),
                 "--cache_dir", str(tmp_path / "cache"), "--num_layers", "1", "--hidden_size", "16", "--num_heads", "2",
                 "--batch_size", "8", "--max_steps", "3", "--max_train_samples", "32", "--max_eval_samples", "16",
                 "--eval_batch_size", "16", "--warmup_steps", "0", "--sample_steps", "0", "--checkpointing_steps", "0"])
    pipe = pipelines.TwoStagePipeline.from_parts(tmp_path / "tok", tmp_path / "prior")
    assert load_prior(tmp_path / "prior").config.vocab_size >= 225
    images = pipelines.generate(pipe, num_samples=3, class_labels=[0, 1, 2], seed=0, output_type="pt").images
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
