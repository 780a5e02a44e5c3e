"""The stage-1 training script as a user runs it: in-process, resumed, and under `accelerate launch`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stage1_tokenizer import VQVAE, PretrainedModel
from stage1_tokenizer.train import main as train
from two_processes import launch_two_cpu_processes

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--channels", "8", "--num_res_blocks", "1", "--codebook_size", "32", "--code_dim", "4",
        "--latent_dim", "4", "--batch_size", "16", "--max_train_samples", "128", "--max_eval_samples", "64",
        "--eval_batch_size", "32", "--warmup_steps", "0"]


@pytest.mark.parametrize("model", ["vqvae", "vae", "cvae"])
def test_training_writes_a_loadable_model_grids_and_metrics(model, tmp_path):
    summary = train(["--model", model, "--output_dir", str(tmp_path), "--max_steps", "4", "--eval_steps", "2",
                     "--checkpointing_steps", "2", *TINY])
    loaded = PretrainedModel.from_pretrained(tmp_path)
    assert loaded.model_type == model and summary["steps"] == 4
    assert (tmp_path / "reconstructions.png").is_file()
    assert (tmp_path / "samples.png").is_file() == (model != "vqvae")
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert records[-1]["test/psnr"] > 0
    if model == "vqvae":
        assert 0 < summary["test/codebook_usage"] <= 1 and summary["test/perplexity"] >= 1
    else:
        assert summary["test/negative_elbo"] == pytest.approx(summary["test/reconstruction_loss"] + summary["test/kl"], rel=1e-4)
    assert "Final metrics" in (tmp_path / "README.md").read_text()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path):
    common = ["--model", "vqvae", "--lr_scheduler", "constant", "--eval_steps", "1000", "--seed", "3", *TINY]
    train([*common, "--output_dir", str(tmp_path / "straight"), "--max_steps", "6", "--checkpointing_steps", "0"])
    train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "3", "--checkpointing_steps", "3"])
    summary = train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "6", "--checkpointing_steps", "0",
                     "--resume_from_checkpoint", "latest"])
    assert summary["steps"] == 6
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # one CPU process: bit-identical, EMA statistics included
        assert torch.equal(a[key], b[key]), key


def test_resume_with_use_ema_matches_an_uninterrupted_run_in_weights_and_in_their_average(tmp_path):
    common = ["--model", "vqvae", "--lr_scheduler", "constant", "--eval_steps", "1000", "--seed", "3", "--use_ema",
              "--ema_max_decay", "0.9", *TINY]
    train([*common, "--output_dir", str(tmp_path / "straight"), "--max_steps", "6", "--checkpointing_steps", "6"])
    train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "3", "--checkpointing_steps", "3"])
    summary = train([*common, "--output_dir", str(tmp_path / "split"), "--max_steps", "6", "--checkpointing_steps", "6",
                     "--resume_from_checkpoint", "latest"])
    assert summary["steps"] == 6 and summary["ema_max_abs_diff_across_processes"] == 0.0
    checkpoint = Path("checkpoints") / "checkpoint-6"
    # the saved model (the EMA), the raw weights and their average: bit-identical after resuming
    for name in ["model.safetensors", checkpoint / "model.safetensors", checkpoint / "ema.safetensors"]:
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "split" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    saved = load_file(tmp_path / "split" / "model.safetensors")
    raw = load_file(tmp_path / "split" / checkpoint / "model.safetensors")
    ema = load_file(tmp_path / "split" / checkpoint / "ema.safetensors")
    assert all(torch.equal(saved[key], ema[key]) for key in ema)
    assert not all(torch.equal(saved[key], raw[key]) for key in ema)
    # what the EMA does not average, the VQ codebook updated by its own EMA and its counts, is saved live:
    # the averaged encoder picks its codes from the codebook training ended with
    live = saved.keys() - ema.keys()
    assert {"quantizer.codebook", "quantizer.cluster_size", "quantizer.embed_sum"} <= live
    assert all(torch.equal(saved[key], raw[key]) for key in live)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.integration
def test_a_stop_signal_saves_a_checkpoint_exits_cleanly_and_resumes_to_the_same_weights(tmp_path, signum):
    common = ["--model", "vqvae", "--lr_scheduler", "constant", "--seed", "3", "--eval_steps", "4", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "stage1_tokenizer.train", *common, "--output_dir", str(tmp_path / "a"),
                            "--max_steps", "100000", "--checkpointing_steps", "0"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "a" / "metrics.jsonl").is_file():  # training is under way
        assert run.poll() is None and time.time() < deadline, run.communicate()[1][-3000:]
        time.sleep(0.2)
    run.send_signal(signum)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    [checkpoint] = (tmp_path / "a" / "checkpoints").iterdir()
    stopped_at = int(checkpoint.name.removeprefix("checkpoint-"))
    assert stopped_at >= 4 and "stopped by a signal" in out + err
    assert not (tmp_path / "a" / "model.safetensors").exists()  # an interrupted run is not a finished model

    train([*common, "--output_dir", str(tmp_path / "a"), "--max_steps", str(stopped_at + 3), "--checkpointing_steps",
           "0", "--resume_from_checkpoint", "latest"])
    train([*common, "--output_dir", str(tmp_path / "b"), "--max_steps", str(stopped_at + 3), "--checkpointing_steps", "0"])
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "delete"])
def test_a_damaged_latest_checkpoint_is_caught_and_latest_falls_back(tmp_path, damage):
    common = ["--model", "vqvae", "--lr_scheduler", "constant", "--eval_steps", "1000", "--seed", "3", *TINY]
    train([*common, "--output_dir", str(tmp_path / "run"), "--max_steps", "4", "--checkpointing_steps", "2"])
    weights = tmp_path / "run" / "checkpoints" / "checkpoint-4" / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip_a_byte":
        weights.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    else:
        weights.unlink()
    with pytest.raises(ValueError, match="model.safetensors"):
        train([*common, "--output_dir", str(tmp_path / "run"), "--max_steps", "5",
               "--resume_from_checkpoint", str(weights.parent)])
    with pytest.warns(UserWarning, match="skipping .*checkpoint-4"):
        summary = train([*common, "--output_dir", str(tmp_path / "run"), "--max_steps", "5", "--checkpointing_steps",
                         "0", "--resume_from_checkpoint", "latest"])
    assert summary["steps"] == 5
    train([*common, "--output_dir", str(tmp_path / "straight"), "--max_steps", "5", "--checkpointing_steps", "0"])
    a = load_file(tmp_path / "run" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "model.safetensors")
    for key in a:  # resumed from checkpoint-2, so it still matches an uninterrupted run
        assert torch.equal(a[key], b[key]), key


class _Payload:
    """Unpickling this runs code: it writes the file named by `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(tmp_path):
    import pickle

    from vqgen.checkpointing import TRAINER_STATE, file_digests

    common = ["--model", "vqvae", "--eval_steps", "1000", *TINY]
    train([*common, "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--checkpointing_steps", "2"])
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    marker = tmp_path / "pwned"
    (checkpoint / "optimizer.bin").write_bytes(pickle.dumps(_Payload(marker)))
    # an attacker who can plant files can also fix the checksums: only weights_only loading stands in the way
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    state["files"] = file_digests(checkpoint)
    (checkpoint / TRAINER_STATE).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="never unpickles code"):
        train([*common, "--output_dir", str(tmp_path / "run"), "--max_steps", "3", "--resume_from_checkpoint", "latest"])
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is real: plain unpickling runs it
    assert marker.read_text() == "pwned"


def stage_args(stage: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The module and tiny arguments of a stage's training script (stage 2 gets a tiny tokenizer first)."""
    common = ["--lr_scheduler", "constant", "--seed", "3", "--eval_steps", "1000", "--checkpointing_steps", "1",
              "--warmup_steps", "0"]
    if stage == "stage1":
        # enough steps that three kills, each up to 0.4 s after a save, cannot reach the end of the run
        return "stage1_tokenizer.train", ["--model", "vqvae", "--max_steps", "120", *common, *TINY]
    torch.manual_seed(0)
    tok = VQVAE(codebook_size=16, code_dim=4, channels=8, num_res_blocks=1).train()
    tok(torch.rand(16, 1, 28, 28))
    tok.eval().save_pretrained(tmp_path / "tok")
    return "stage2_prior.train", ["--tokenizer", str(tmp_path / "tok"), "--cache_dir", str(tmp_path / "cache"),
                                  "--sample_steps", "0", "--num_layers", "1", "--hidden_size", "32", "--num_heads", "2",
                                  "--batch_size", "8", "--max_train_samples", "64", "--max_eval_samples", "32",
                                  "--max_steps", "200", *common]  # its steps are quicker: more of them


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
@pytest.mark.integration
def test_sigkill_at_several_moments_then_resume_matches_an_uninterrupted_run(tmp_path, stage):
    """Killed -9 at three random moments (a checkpoint is written every step, so a kill may land in a save)."""
    import random

    module, args = stage_args(stage, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "killed"
    rng, kills = random.Random(0), []
    while True:
        resume = ["--resume_from_checkpoint", "latest"] if list((out / "checkpoints").glob("checkpoint-*")) else []
        run = subprocess.Popen([sys.executable, "-m", module, *args, "--output_dir", str(out), *resume],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if len(kills) == 3:
            assert run.wait(timeout=300) == 0, run.stderr.read()[-3000:]
            break
        done_before = {p.name for p in (out / "checkpoints").glob("checkpoint-*")}
        deadline = time.time() + 300
        def saved_a_step() -> bool:
            return bool({p.name for p in (out / "checkpoints").glob("checkpoint-*")} - done_before)

        while not saved_a_step():
            # a run that ends has saved its steps before it exits: look once more before calling it a failure
            assert (run.poll() is None or saved_a_step()) and time.time() < deadline, run.stderr.read()[-3000:]
            time.sleep(0.05)
        assert run.poll() is None, f"the run finished before kill {len(kills) + 1}: give it more --max_steps"
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in the next steps or saves
        run.kill()
        run.wait()
        kills.append(sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")))
    assert all(kills), kills  # every kill left at least one complete checkpoint behind
    subprocess.run([sys.executable, "-m", module, *args, "--output_dir", str(tmp_path / "straight")], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = VQVAE.forward

    def poisoned(self, images, labels=None):
        out = forward(self, images, labels)
        calls["n"] += 1
        if calls["n"] == 3:  # the third training step
            out.decoded = out.decoded * float("nan")
        return out

    monkeypatch.setattr(VQVAE, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="at step 3"):
        train(["--model", "vqvae", "--output_dir", str(tmp_path), "--max_steps", "6", "--eval_steps", "1000",
               "--checkpointing_steps", "2", *TINY])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-2"]
    assert not (tmp_path / "model.safetensors").exists()
    state = load_file(tmp_path / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_resume_latest_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(["--output_dir", str(tmp_path), "--max_steps", "2", "--resume_from_checkpoint", "latest", *TINY])


@pytest.mark.integration
def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "stage1_tokenizer.train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    for option in ["--model", "--dataset", "--output_dir", "--max_steps", "--batch_size", "--learning_rate", "--seed",
                   "--checkpointing_steps", "--resume_from_checkpoint", "--push_to_hub", "--hub_model_id"]:
        assert option in out


@pytest.mark.integration
def test_two_cpu_processes_under_accelerate_launch_share_one_codebook(tmp_path):
    result = launch_two_cpu_processes(
        "stage1_tokenizer.train", "--model", "vqvae", "--output_dir", str(tmp_path), "--max_steps", "6",
        "--eval_steps", "3", "--checkpointing_steps", "3", "--dead_code_threshold", "2.0", "--use_ema", *TINY,
        config_file=ROOT / "accelerate_config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["processes_seen"] == 2, "accelerate launch did not start two cooperating processes"
    assert summary["weights_max_abs_diff_across_processes"] == 0.0
    assert summary["ema_max_abs_diff_across_processes"] == 0.0  # each rank averaged the same stepped weights
    model = VQVAE.from_pretrained(tmp_path)
    assert model.quantizer.initialized
    # each process wrote its own RNG state into the checkpoint
    assert {p.name for p in (tmp_path / "checkpoints" / "checkpoint-6").glob("random_states_*.pkl")} == \
        {"random_states_0.pkl", "random_states_1.pkl"}
