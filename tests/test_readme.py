"""Every ```python example of README.md and of the docs pages runs as written, after a (tiny) quickstart.

A module fixture runs `python -m pipelines.quickstart` and the two `stage1_tokenizer.train` commands
docs/sampling.md gives for `runs/vae` and `runs/cvae`, at tiny sizes, in a temporary folder. The Python
blocks of README.md, then of DOC_PAGES, run in order, concatenated, in one fresh process whose working directory is that
folder (so `runs/quickstart/...` resolves as it does for a user), with the Hub double of
tests/hub_server.py standing in for the Hub (the examples call `push_to_hub("user/...")`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hub_server import start_hub

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = [ROOT / "docs" / name for name in ("training.md", "sampling.md", "evaluation.md")]
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

QUICKSTART = ["-m", "pipelines.quickstart", "--output_dir", "runs/quickstart", "--tokenizer_steps", "1",
              "--prior_steps", "1", "--prior_layers", "1", "--prior_hidden_size", "32", "--max_train_samples", "128",
              "--minutes", "1"]
TINY_STAGE1 = ["--channels", "8", "--num_res_blocks", "1", "--latent_dim", "4", "--batch_size", "16",
               "--max_train_samples", "128", "--max_eval_samples", "64", "--eval_batch_size", "32",
               "--warmup_steps", "0", "--max_steps", "2", "--eval_steps", "2", "--checkpointing_steps", "0"]


def python_blocks(page: Path) -> list[str]:
    return [m.group(1) for m in PYTHON_BLOCK.finditer(page.read_text(encoding="utf-8"))]


def readme_python_blocks() -> list[str]:
    """The README's blocks, then the docs pages' (which assume the README's have run)."""
    return [block for page in (README, *DOC_PAGES) for block in python_blocks(page)]


def base_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf_home"), "HF_HUB_DISABLE_XET": "1"}


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory) -> Path:
    """A folder holding runs/quickstart (the README's main command) and runs/vae, runs/cvae, all tiny."""
    tmp = tmp_path_factory.mktemp("readme")
    commands = {
        "quickstart": QUICKSTART,
        "vae": ["-m", "stage1_tokenizer.train", "--model", "vae", "--output_dir", "runs/vae", *TINY_STAGE1],
        "cvae": ["-m", "stage1_tokenizer.train", "--model", "cvae", "--output_dir", "runs/cvae", *TINY_STAGE1],
    }
    # the three are independent: run them side by side (most of each is start-up and evaluation)
    procs = {name: subprocess.Popen([sys.executable, *args], cwd=tmp, env=base_env(tmp), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name, args in commands.items()}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{output[-4000:]}"
    for path in ["runs/quickstart/tokenizer/config.json", "runs/quickstart/prior/config.json",
                 "runs/quickstart/pipeline/pipeline_config.json", "runs/vae/config.json", "runs/cvae/config.json"]:
        assert (tmp / path).is_file(), path
    return tmp


def test_readme_and_docs_have_python_examples():
    assert len(python_blocks(README)) >= 1 and all(python_blocks(page) for page in DOC_PAGES)


@pytest.mark.integration
def test_readme_python_examples_run_as_written(quickstart_dir):
    blocks = readme_python_blocks()
    # each block announces itself on stderr, so a failure names its block and the count proves they all ran
    script = "\n".join(f"import sys as _sys; print('README block {i}', file=_sys.stderr, flush=True)\n{code}"
                       for i, code in enumerate(blocks, 1))
    script += "\nprint('README blocks done', flush=True)\n"
    server, state = start_hub()
    try:
        env = {**base_env(quickstart_dir), "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
               "HF_HUB_OFFLINE": "0", "HF_TOKEN": "test-token"}
        result = subprocess.run([sys.executable, "-c", script], cwd=quickstart_dir, env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        server.shutdown()
    assert result.returncode == 0, f"a README example failed:\n{result.stderr[-6000:]}"
    ran = re.findall(r"^README block (\d+)$", result.stderr, re.MULTILINE)
    assert len(ran) == len(blocks) >= 3 and "README blocks done" in result.stdout
    # the pushes really reached the (local) Hub
    pushed = [line for line in (re.findall(r'push_to_hub\("([^"]+)"\)', "\n".join(blocks)))]
    assert pushed and all(repo in state.repos for repo in pushed), (pushed, sorted(state.repos))
