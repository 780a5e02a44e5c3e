"""Folders written by the previous release (format version 1, before quantiser sub-configs) still load
and give the same codes and reconstructions. `fixtures/release_0_1` was written by commit 26bb2e1."""

from pathlib import Path

import torch
from safetensors.torch import load_file

import pipelines
from stage1_tokenizer import CVAE, VQVAE, VectorQuantizerConfig, load_pretrained

RELEASE = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1"


def test_a_version_1_pipeline_loads_and_its_tokenizer_gives_the_same_codes():
    pipe = pipelines.TwoStagePipeline.from_pretrained(RELEASE / "pipeline")
    tokenizer = pipe.tokenizer
    assert isinstance(tokenizer, VQVAE) and tokenizer.codebook_size == 16
    assert tokenizer.config.quantizer == VectorQuantizerConfig(codebook_size=16)
    expected = load_file(RELEASE / "expected.safetensors")
    assert torch.equal(tokenizer.tokenize(expected["images"]), expected["codes"])
    assert torch.equal(tokenizer.reconstruct(expected["images"]), expected["recon"])
    images = pipe(num_samples=2, class_labels=[3, 4], seed=0, output_type="pt").images
    assert images.shape == (2, 1, 28, 28)


def test_a_version_1_cvae_loads_and_resaves_as_the_current_format(tmp_path):
    cvae = load_pretrained(RELEASE / "cvae")
    assert isinstance(cvae, CVAE)
    cvae.save_pretrained(tmp_path)
    again = load_pretrained(tmp_path)
    for key, value in cvae.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
