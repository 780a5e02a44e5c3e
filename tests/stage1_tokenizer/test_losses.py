"""The loss seam: a loss chosen by name, with parameters and an optimizer of its own, is trained,
checkpointed and resumed bit-identically by the unchanged training script, and never saved in the model."""

import json

import pytest
import torch
from safetensors.torch import load_file

import toy_critic_plugin
from stage1_tokenizer import VQVAE, build_loss
from stage1_tokenizer.train import main as train
from two_processes import launch_two_cpu_processes

TINY = ["--channels", "8", "--num_res_blocks", "1", "--codebook_size", "32", "--code_dim", "4", "--batch_size", "16",
        "--max_train_samples", "128", "--max_eval_samples", "64", "--eval_batch_size", "32", "--warmup_steps", "0"]


@pytest.fixture
def toy_loss():
    return toy_critic_plugin.ToyCritic


def test_losses_are_summed_and_their_terms_named(toy_loss):
    model = VQVAE(channels=8, num_res_blocks=1, codebook_size=16, code_dim=4, ema_decay=None)
    x = torch.rand(2, 1, 28, 28)
    out = model(x)
    loss = build_loss(model, ["toy_critic"])
    terms = loss(out, x, step=0)
    assert set(terms.terms) == {"reconstruction_loss", "commitment_loss", "codebook_loss", "toy_term"}
    torch.testing.assert_close(terms.loss, sum(terms.terms.values()))
    assert [part for part, _ in loss.optimizer_groups()] == [loss.parts[1]]
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss(model, ["no_such_loss"])


def test_a_loss_with_its_own_optimizer_is_checkpointed_and_resumes_bit_identically(tmp_path, toy_loss):
    common = ["--model", "vqvae", "--plugins", "toy_critic_plugin", "--extra_losses", "toy_critic", "--lr_scheduler", "constant", "--eval_steps", "1000",
              "--seed", "3", *TINY]
    train([*common, "--output_dir", str(tmp_path / "straight"), "--max_steps", "6", "--checkpointing_steps", "6"])
    train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "3", "--checkpointing_steps", "3"])
    summary = train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "6", "--checkpointing_steps", "6",
                     "--resume_from_checkpoint", "latest"])
    assert summary["steps"] == 6 and "test/toy_term" in summary
    for name in ("model.safetensors", "checkpoints/checkpoint-6/model_1.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    critic = load_file(tmp_path / "straight" / "checkpoints/checkpoint-6/model_1.safetensors")
    assert list(critic) == ["parts.1.scale"] or list(critic) == ["scale"]
    assert not torch.equal(next(iter(critic.values())), torch.ones(1)), "the critic's own optimizer never stepped"
    # the critic's optimizer state is checkpointed beside the model's
    assert (tmp_path / "straight" / "checkpoints/checkpoint-6/optimizer_1.bin").is_file()
    # the saved tokenizer holds exactly the tokenizer's weights
    saved = load_file(tmp_path / "straight" / "model.safetensors")
    assert set(saved) == set(VQVAE(channels=8, num_res_blocks=1, codebook_size=32, code_dim=4).state_dict())


@pytest.mark.integration
def test_a_loss_with_its_own_optimizer_under_two_processes_and_gradient_accumulation(tmp_path):
    result = launch_two_cpu_processes(
        "stage1_tokenizer.train", "--model", "vqvae", "--plugins", "tests.toy_critic_plugin", "--extra_losses",
        "toy_critic", "--gradient_accumulation_steps", "2", "--max_steps", "4", "--eval_steps", "4",
        "--checkpointing_steps", "4", "--output_dir", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    # model and critic weights identical on both processes: the critic's gradients were averaged
    assert summary["processes_seen"] == 2 and summary["weights_max_abs_diff_across_processes"] == 0.0
    critic = load_file(tmp_path / "checkpoints/checkpoint-4/model_1.safetensors")
    assert not torch.equal(next(iter(critic.values())), torch.ones(1))
    assert "test/toy_term" in summary


def test_losses_refuse_models_whose_output_they_do_not_understand():
    from stage1_tokenizer import VAE

    with pytest.raises(ValueError, match="do not apply"):
        build_loss(VQVAE(channels=8, num_res_blocks=1), ["elbo"])
    with pytest.raises(ValueError, match="do not apply"):
        build_loss(VAE(channels=8, num_res_blocks=1), ["vq"])
