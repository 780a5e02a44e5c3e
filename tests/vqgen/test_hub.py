"""push_to_hub for real, against a Hub double on 127.0.0.1, then from_pretrained of what it received.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import time, so the client side runs in a
subprocess whose environment points at the local server (and turns offline mode off for it only).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hub_server import start_hub

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub():
    server, state = start_hub()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def run_client(code: str, endpoint: str, tmp_path: Path, offline: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1" if offline else "0", "HF_TOKEN": "test-token",
           "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=180)


PUSH_AND_LOAD = """
    import json, torch
    from stage1_tokenizer import {cls}
    torch.manual_seed(0)
    model = {cls}({kwargs})
    model.train(); model(torch.rand(8, 1, 28, 28), torch.arange(8) % 10)  # non-trivial buffers
    model.eval(); model.card_data = {{"dataset": "embedded", "metrics": {{"psnr": 12.5}}}}
    url = model.push_to_hub("user/tiny-{name}")
    loaded = {cls}.from_pretrained("user/tiny-{name}")
    x, y = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2, 3, 4])
    same_state = all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    same_out = torch.equal(model.reconstruct(x, y), loaded.reconstruct(x, y))
    print(json.dumps({{"url": url, "same_state": same_state, "same_out": same_out,
                      "keys": sorted(model.state_dict()) == sorted(loaded.state_dict())}}))
"""


@pytest.mark.parametrize("cls, name, kwargs", [
    ("VQVAE", "vqvae", "codebook_size=16, code_dim=4, channels=8, num_res_blocks=1"),
    ("CVAE", "cvae", "latent_dim=4, channels=8, num_res_blocks=1"),
])
@pytest.mark.integration
def test_push_to_hub_then_from_pretrained_round_trip(hub, tmp_path, cls, name, kwargs):
    endpoint, state = hub
    result = run_client(PUSH_AND_LOAD.format(cls=cls, name=name, kwargs=kwargs), endpoint, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["same_state"] and report["same_out"] and report["keys"]
    repo = state.repos[f"user/tiny-{name}"]
    assert sorted(repo.files) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(repo.files["config.json"])["model_type"] == name
    assert f"model_type: {name}" in repo.files["README.md"].decode() and "psnr" in repo.files["README.md"].decode()
    calls = [path for _, path in state.log]
    assert "/api/repos/create" in calls
    assert any(p.endswith("/commit/main") for p in calls) and any("/resolve/" in p for p in calls)


@pytest.mark.integration
def test_missing_repo_and_offline_give_clear_errors(hub, tmp_path):
    endpoint, _ = hub
    code = """
        from stage1_tokenizer import VQVAE, ModelLoadError
        try:
            VQVAE.from_pretrained("user/does-not-exist")
        except ModelLoadError as e:
            print("ERROR:", e)
    """
    missing = run_client(code, endpoint, tmp_path)
    assert "ERROR:" in missing.stdout and "not a local folder" in missing.stdout and "save_pretrained" in missing.stdout
    offline = run_client(code, endpoint, tmp_path, offline=True)
    assert "ERROR:" in offline.stdout and "offline" in offline.stdout.lower()


PIPELINE_PUSH_AND_LOAD = """
    import json, torch
    import pipelines
    from stage1_tokenizer import VQVAE
    from stage2_prior import TokenizerSpec, build_prior
    torch.manual_seed(0)
    tok = VQVAE(codebook_size=16, code_dim=4, channels=8, num_res_blocks=1)
    tok.train(); tok(torch.rand(16, 1, 28, 28)); tok.eval()
    prior = build_prior(TokenizerSpec.from_tokenizer(tok, "tok"), ["a", "b"], num_layers=1, hidden_size=16, num_heads=2)
    pipe = pipelines.TwoStagePipeline(tok, prior.eval())
    pipe.push_to_hub("user/tiny-pipeline")
    before = pipelines.generate(pipe, num_samples=4, class_labels=["a", "b", "a", "b"], seed=3, output_type="pt").images
    after = pipelines.generate("user/tiny-pipeline", num_samples=4, class_labels=["a", "b", "a", "b"], seed=3,
                               output_type="pt").images
    print(json.dumps({"same": torch.equal(before, after)}))
"""


@pytest.mark.integration
def test_pipeline_push_to_hub_then_generate_from_the_repo_id(hub, tmp_path):
    endpoint, state = hub
    result = run_client(PIPELINE_PUSH_AND_LOAD, endpoint, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["same"]
    files = set(state.repos["user/tiny-pipeline"].files)
    assert {"pipeline_config.json", "README.md", "samples.png", "tokenizer/config.json", "tokenizer/model.safetensors",
            "prior/config.json", "prior/model.safetensors"} <= files
    assert "![samples](samples.png)" in state.repos["user/tiny-pipeline"].files["README.md"].decode()
