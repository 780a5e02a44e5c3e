"""bf16 autocast on CPU (accelerate's --mixed_precision bf16) trains the prior to a held-out loss within
tolerance of float32, and the compiled prior trains too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stage1_tokenizer import VQVAE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    tok = VQVAE(codebook_size=16, code_dim=4, channels=8, num_res_blocks=1, class_names=[str(i) for i in range(10)])
    tok.train()(torch.rand(16, 1, 28, 28))
    tok.eval().save_pretrained(folder)
    return folder


def run(tokenizer, out, *extra):
    """In a fresh process: accelerate's state (its mixed precision among it) is one per process."""
    args = (["--tokenizer", str(tokenizer), "--output_dir", str(out), "--cache_dir", str(out.parent / "cache"),
                        "--num_layers", "1", "--hidden_size", "32", "--num_heads", "2", "--batch_size", "16",
                        "--max_steps", "12", "--max_train_samples", "192", "--max_eval_samples", "64",
                        "--eval_batch_size", "32", "--warmup_steps", "0", "--sample_steps", "0",
                        "--checkpointing_steps", "0", "--eval_steps", "100", "--dropout", "0", *extra])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "stage2_prior.train", *args], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "training_summary.json").read_text())


@pytest.mark.integration
def test_bf16_autocast_on_cpu_trains_within_tolerance_of_float32(tokenizer, tmp_path):
    full = run(tokenizer, tmp_path / "fp32", "--mixed_precision", "no")
    bf16 = run(tokenizer, tmp_path / "bf16", "--mixed_precision", "bf16")
    assert bf16["test/nats_per_token"] == pytest.approx(full["test/nats_per_token"], rel=0.02)
    assert bf16["test/nats_per_token"] != full["test/nats_per_token"]  # bf16 really ran


@pytest.mark.slow
def test_a_compiled_prior_trains_and_saves(tokenizer, tmp_path):
    summary = run(tokenizer, tmp_path / "compiled", "--torch_compile")
    assert summary["steps"] == 12 and json.loads((tmp_path / "compiled" / "config.json").read_text())["vqgen"]
    from stage2_prior import load_prior
    assert load_prior(tmp_path / "compiled").config.n_layer == 1
