"""Experiment trackers: a short run of either stage writes TensorBoard event files holding the training
curves, the evaluation metrics and an image grid, read back with TensorBoard's own reader; a resumed run
continues the same curves; `--report_to none` needs no tracker package."""

import importlib.util
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stage1_tokenizer import VQVAE
from stage1_tokenizer.train import main as train_tokenizer
from stage2_prior.train import main as train_prior
from vqgen import tracking
from vqgen.training import make_accelerator, parse_training_args, training_parser
from two_processes import launch_two_cpu_processes

TINY = ["--channels", "8", "--num_res_blocks", "1", "--codebook_size", "32", "--code_dim", "4", "--latent_dim", "4",
        "--batch_size", "16", "--max_train_samples", "64", "--max_eval_samples", "32", "--eval_batch_size", "32",
        "--warmup_steps", "0", "--checkpointing_steps", "0"]
PRIOR = ["--num_layers", "1", "--hidden_size", "32", "--num_heads", "2", "--batch_size", "8", "--max_train_samples", "32",
         "--max_eval_samples", "16", "--eval_batch_size", "16", "--warmup_steps", "0", "--checkpointing_steps", "0"]


def read_events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


def test_a_three_step_tokenizer_run_logs_its_curves_metrics_and_grids(tmp_path):
    train_tokenizer(["--model", "vqvae", "--output_dir", str(tmp_path), "--max_steps", "3", "--eval_steps", "3",
                     "--logging_steps", "1", "--lr_scheduler", "constant", *TINY])
    events = read_events(tmp_path / "logs" / "stage1_tokenizer")
    scalars = set(events.Tags()["scalars"])
    curves = {"train/loss", "train/reconstruction_loss", "train/commitment_loss", "train/learning_rate",
              "train/grad_norm", "train/images_per_second", "train/codebook_usage", "train/perplexity"}
    assert curves <= scalars and {"test/psnr", "test/codebook_usage", "test/perplexity"} <= scalars
    assert all(steps(events, tag) == [1, 2, 3] for tag in curves)
    assert steps(events, "test/psnr") == [3]
    assert [e.value for e in events.Scalars("train/learning_rate")] == pytest.approx([1e-3] * 3)
    # a window of one step: the code usage of 16 images' codes, a share of a 32-code book
    usage = [e.value for e in events.Scalars("train/codebook_usage")]
    assert all(0 < u <= 1 for u in usage)
    assert all(e.value > 0 for e in events.Scalars("train/images_per_second"))
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    (image,) = events.Images("images/reconstructions")
    assert image.step == 3 and image.width > 0 and image.height > 0


def test_the_window_mean_is_the_mean_of_its_steps_and_a_resumed_run_continues_the_curves(tmp_path):
    common = ["--model", "vae", "--output_dir", str(tmp_path), "--eval_steps", "100", "--lr_scheduler", "constant",
              "--seed", "1", *TINY]
    train_tokenizer([*common, "--max_steps", "4", "--logging_steps", "1", "--checkpointing_steps", "2"])
    per_step = [e.value for e in read_events(tmp_path / "logs" / "stage1_tokenizer").Scalars("train/loss")]
    # resume at step 2 with a window of 2 steps: the same steps again, logged once, as their mean
    train_tokenizer([*common, "--max_steps", "4", "--logging_steps", "2", "--resume_from_checkpoint",
                     str(tmp_path / "checkpoints" / "checkpoint-2")])
    events = read_events(tmp_path / "logs" / "stage1_tokenizer")
    assert len(list((tmp_path / "logs" / "stage1_tokenizer").glob("events.out.tfevents.*"))) == 2  # appended
    # the restart marker drops what the first run logged after step 2; the resumed run logs step 4
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 4]
    assert loss[-1].value == pytest.approx((per_step[2] + per_step[3]) / 2, rel=1e-5)
    assert {"images/reconstructions", "images/samples"} <= set(events.Tags()["images"])


def test_a_prior_run_logs_nats_tokens_per_second_and_a_class_conditional_grid(tmp_path):
    torch.manual_seed(0)
    tokenizer = VQVAE(codebook_size=16, code_dim=4, channels=8, num_res_blocks=1)
    tokenizer.save_pretrained(tmp_path / "tok")
    train_prior(["--tokenizer", str(tmp_path / "tok"), "--cache_dir", str(tmp_path / "cache"), "--output_dir",
                 str(tmp_path / "prior"), "--max_steps", "3", "--eval_steps", "3", "--logging_steps", "1",
                 "--sample_steps", "0", *PRIOR])
    events = read_events(tmp_path / "prior" / "logs" / "stage2_prior")
    for tag in ["train/nats_per_token", "train/tokens_per_second", "train/learning_rate", "train/grad_norm"]:
        assert steps(events, tag) == [1, 2, 3], tag
    assert steps(events, "test/nats_per_token") == [3]
    (image,) = events.Images("images/samples")
    # the embedded digits have 10 classes: 4 rows of 8 samples, each 28 pixels and a 2-pixel border
    assert image.step == 3 and image.height == 4 * 30 + 2 and image.width == 8 * 30 + 2


def test_report_to_none_writes_no_logs_and_needs_no_tracker_package(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in tracking.TRACKERS else real_find_spec(name, *a))
    assert tracking.report_to("none") == [] and tracking.report_to("all") == []
    with pytest.raises(SystemExit, match="--report_to tensorboard needs its package: pip install tensorboard"):
        tracking.report_to("tensorboard")
    train_tokenizer(["--model", "vqvae", "--output_dir", str(tmp_path), "--max_steps", "2", "--eval_steps", "2",
                     "--logging_steps", "1", "--report_to", "none", *TINY])
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "logs").exists()


def test_the_run_config_is_flat_and_leaves_the_hub_token_out(tmp_path):
    args = parse_training_args(training_parser("test", "a test", []),
                               ["--output_dir", str(tmp_path), "--hub_token", "secret", "--max_train_minutes", "5"])
    config = tracking.tracker_config(args)
    assert "hub_token" not in config and config["max_train_minutes"] == 5.0 and config["max_train_samples"] == "None"
    assert all(isinstance(v, (int, float, str, bool)) for v in config.values())
    assert [str(t) for t in make_accelerator(args).log_with] == ["tensorboard"]  # the default


@pytest.mark.integration
def test_under_two_processes_the_windows_are_reduced_and_only_the_main_process_writes(tmp_path):
    result = launch_two_cpu_processes(
        "stage1_tokenizer.train", "--model", "vqvae", "--output_dir", str(tmp_path), "--max_steps", "4",
        "--eval_steps", "4", "--logging_steps", "2", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "logs" / "stage1_tokenizer"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = read_events(folder)
    for tag in ["train/loss", "train/codebook_usage", "train/perplexity", "train/images_per_second"]:
        assert steps(events, tag) == [2, 4], tag
    assert [i.step for i in events.Images("images/reconstructions")] == [4]
