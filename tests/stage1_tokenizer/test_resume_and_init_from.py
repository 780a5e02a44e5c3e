"""Continuing a stage-1 run from its folder alone, and starting one from a trained model (--init_from)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from stage1_tokenizer import CVAE, load_pretrained
from stage1_tokenizer.train import main as train
from test_stage1_train import TINY

FROZEN = ["--learning_rate", "0", "--lr_scheduler", "constant", "--eval_steps", "1000", "--checkpointing_steps", "0"]


@pytest.mark.integration
def test_a_run_resumed_from_only_its_output_dir_ends_as_an_uninterrupted_one(tmp_path):
    common = ["--model", "vqvae", "--lr_scheduler", "constant", "--eval_steps", "1000", "--seed", "3", "--beta", "0.5",
              "--learning_rate", "2e-3", *TINY]
    train([*common, "--output_dir", str(tmp_path / "straight"), "--max_steps", "6", "--checkpointing_steps", "0"])
    train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "3", "--checkpointing_steps", "3"])
    summary = train(["--output_dir", str(tmp_path / "split"), "--resume_from_checkpoint", "latest", "--max_steps", "6",
                     "--checkpointing_steps", "0"])
    assert summary["steps"] == 6
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # one CPU process: bit-identical
        assert torch.equal(a[key], b[key]), key
    assert load_pretrained(tmp_path / "split").config.quantizer.beta == 0.5
    saved = json.loads((tmp_path / "split" / "run_args.json").read_text())
    assert (saved["max_steps"], saved["learning_rate"], saved["channels"]) == (6, 2e-3, 8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    train(["--model", "vqvae", "--output_dir", str(folder), "--max_steps", "3", "--eval_steps", "1000",
           "--checkpointing_steps", "0", "--codebook_init", "random", *TINY,
           # a codebook learned by gradient and no restarts: at learning rate 0 nothing changes
           "--ema_decay", "0", "--dead_code_threshold", "0"])
    return folder


@pytest.mark.integration
def test_init_from_loads_every_weight_keeps_the_architecture_and_starts_at_step_0(trained, tmp_path):
    out = tmp_path / "tuned"
    # No architecture flag given: the channels, codebook and code size are the trained model's, not the defaults.
    summary = train(["--init_from", str(trained), "--output_dir", str(out), "--max_steps", "2", "--batch_size", "16",
                     "--max_train_samples", "64", "--max_eval_samples", "32", *FROZEN])
    assert summary["steps"] == 2 and not (out / "checkpoints").exists()
    tuned, before = load_pretrained(out), load_pretrained(trained)
    assert tuned.config == before.config and tuned.codebook_size == 32
    a, b = load_file(trained / "model.safetensors"), load_file(out / "model.safetensors")
    for key, _ in before.named_parameters():  # at learning rate 0 the trained weights come out as they went in
        assert torch.equal(a[key], b[key]), key
    assert json.loads((out / "run_args.json").read_text())["channels"] == 8  # what a resume rebuilds
    moved = train(["--init_from", str(trained), "--output_dir", str(tmp_path / "moved"), "--max_steps", "2",
                   "--batch_size", "16", "--max_train_samples", "64", "--max_eval_samples", "32", "--eval_steps", "1000",
                   "--checkpointing_steps", "0", "--learning_rate", "1e-2"])
    assert moved["steps"] == 2
    c = load_file(tmp_path / "moved" / "model.safetensors")
    assert any(not torch.equal(a[key], c[key]) for key, _ in before.named_parameters())  # a fresh optimizer at a real rate trains it


def test_init_from_refuses_a_flag_that_would_change_the_architecture(trained, capsys):
    from stage1_tokenizer.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--init_from", str(trained), "--channels", "16", "--codebook_size", "32"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert "--channels 16 (the model's: 8)" in err and "--codebook_size" not in err  # equal to the model's: fine
    args = parse_args(["--init_from", str(trained)])
    assert (args.channels, args.codebook_size, args.code_dim, args.image_size, args.channels_in) == (8, 32, 4, 28, 1)
    with pytest.raises(SystemExit):
        parse_args(["--init_from", str(trained), "--model", "vae"])
    assert "--model vae (the model's: vqvae)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--init_from", str(trained.parent / "nowhere")])
    assert "--init_from" in capsys.readouterr().err


def test_init_from_a_cvae_needs_as_many_classes(tmp_path):
    from stage1_tokenizer.arguments import build_model, parse_args

    cvae = tmp_path / "cvae"
    CVAE(num_classes=3, channels=8, num_res_blocks=1, latent_dim=4).save_pretrained(cvae)
    args = parse_args(["--init_from", str(cvae)])
    assert args.model == "cvae" and args.latent_dim == 4
    with pytest.raises(SystemExit, match="CVAE of 3 classes"):
        build_model(args, 28, 1, [str(i) for i in range(10)])
    model = build_model(args, 28, 1, ["a", "b", "c"])
    assert model.config.class_names == ["a", "b", "c"] and model.training
