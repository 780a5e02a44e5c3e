"""The catalogue of bad input: every case is refused with an error that names the problem and the fix.

Each row: (name, a function that feeds the bad input, the exception type, a pattern for the problem,
a pattern for the fix). The function gets a scratch folder; the refused call must leave it as it was.
"""

import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import pipelines
from stage1_tokenizer import CVAE, VQVAE, ModelLoadError, load_pretrained
from stage1_tokenizer.configs import VQVAEConfig
from vqgen.data import DatasetSpecError, load_image_dataset
from stage2_prior import TokenizerSpec, build_prior, check_compatible, sample_codes

TINY_VQ = dict(codebook_size=16, code_dim=4, channels=8, num_res_blocks=1)


def vq():
    torch.manual_seed(0)
    model = VQVAE(**TINY_VQ).train()
    model(torch.rand(8, 1, 28, 28))
    return model.eval()


def prior(classes=("a", "b")):
    torch.manual_seed(0)
    return build_prior(TokenizerSpec.from_tokenizer(vq(), "tok"), list(classes) if classes else None, num_layers=1,
                       hidden_size=16, num_heads=2).eval()


def saved_vq(folder: Path) -> Path:
    return vq().save_pretrained(folder / "model")


def edit_config(folder: Path, **changes) -> Path:
    model = saved_vq(folder)
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))
    return model


def edit_weights(folder: Path, drop: str | None = None, add: str | None = None) -> Path:
    model = saved_vq(folder)
    state = load_file(model / "model.safetensors")
    if drop:
        state.pop(drop)
    if add:
        state[add] = torch.zeros(1)
    save_file(state, model / "model.safetensors")
    return model


def idx_folder(folder: Path, damage: str) -> Path:
    """A tiny MNIST-format folder (3 images) with one kind of damage."""
    data = folder / "idx"
    data.mkdir()
    images = (2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(3 * 784)
    labels = (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([0, 1, 2])
    if damage == "truncated":
        images = images[:-100]
    if damage == "magic":
        images = (2049).to_bytes(4, "big") + images[4:]
    for split in ("train", "t10k"):
        (data / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        if damage != "missing":
            (data / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return data


def imagefolder(folder: Path, corrupt: bool) -> Path:
    from PIL import Image

    root = folder / "tree"
    (root / "cat").mkdir(parents=True)
    if corrupt:
        Image.new("L", (8, 8)).save(root / "cat" / "ok.png")
        (root / "cat" / "broken.png").write_bytes(b"not a png at all")
    return root


CASES = [
    ("images of the wrong rank", lambda d: vq().tokenize(torch.rand(1, 28, 28)), ValueError, r"\[b, c, h, w\]", "unsqueeze"),
    ("wrong channel count", lambda d: vq().tokenize(torch.rand(2, 3, 28, 28)), ValueError, "3 channels", "channels=1"),
    ("wrong image size", lambda d: vq().tokenize(torch.rand(2, 1, 32, 32)), ValueError, "28x28 images, got 32x32",
     "image_size=28"),
    ("size not divisible by the downsampling", lambda d: VQVAEConfig(image_size=30, num_downsamples=2), ValueError,
     "not divisible", "choose num_downsamples"),
    ("pixels outside [0, 1]", lambda d: vq().tokenize(torch.rand(2, 1, 28, 28) * 255), ValueError, r"\[0, 1\]",
     "divide by 255"),
    ("NaN pixels", lambda d: vq().tokenize(torch.full((1, 1, 28, 28), float("nan"))), ValueError, "NaN", "NaN or inf"),
    ("uint8 pixels", lambda d: vq().tokenize(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)), TypeError, "uint8",
     r"float\(\) / 255"),
    ("label out of range", lambda d: CVAE(latent_dim=2, channels=8)(torch.rand(1, 1, 28, 28), torch.tensor([10])),
     ValueError, "class label 10 is out of range", "10-class model takes 0..9"),
    ("unknown class name", lambda d: pipelines.generate(pipelines.TwoStagePipeline(vq(), prior()), 2, class_labels="c"),
     ValueError, "unknown class name 'c'", r"classes are \['a', 'b'\]"),
    ("class label out of range", lambda d: pipelines.generate(pipelines.TwoStagePipeline(vq(), prior()), 2,
                                                              class_labels=5), ValueError, "out of range", "0..1"),
    ("class label with a fractional part", lambda d: pipelines.generate(pipelines.TwoStagePipeline(vq(), prior()), 2,
                                                                        class_labels=[1.5, 1.0]),
     ValueError, "1.5 is not a whole number", "pass ints or class names"),
    ("a bool as a class label", lambda d: pipelines.generate(pipelines.TwoStagePipeline(vq(), prior()), 2,
                                                             class_labels=True), TypeError, r"True \(a bool\)",
     "ints or class names"),
    ("class labels as a 2-d tensor", lambda d: pipelines.generate(pipelines.TwoStagePipeline(vq(), prior()), 2,
                                                                  class_labels=torch.zeros(2, 1, dtype=torch.long)),
     ValueError, r"got shape \(2, 1\)", "flatten it"),
    ("prior class label out of range", lambda d: sample_codes(prior(), 2, class_labels=[0, 2]), ValueError,
     "class label 2 is out of range", r"0..1 or -1 \(the null class\)"),
    ("class labels for an unconditional prior", lambda d: sample_codes(prior(classes=None), 1, class_labels=[0]),
     ValueError, "prior is unconditional", "pass class_labels=None"),
    ("empty dataset", lambda d: load_image_dataset(str(imagefolder(d, corrupt=False))), DatasetSpecError,
     "holds no images", "imagefolder tree"),
    ("corrupt image in an imagefolder", lambda d: load_image_dataset(str(imagefolder(d, corrupt=True))),
     DatasetSpecError, "broken.png: not a readable image", "--skip_bad_images"),
    ("missing IDX file", lambda d: load_image_dataset(str(idx_folder(d, "missing"))), DatasetSpecError,
     "lacks", "holds all four files"),
    ("truncated IDX file", lambda d: load_image_dataset(str(idx_folder(d, "truncated"))), DatasetSpecError,
     "truncated", "fetch it again"),
    ("IDX file with the wrong magic number", lambda d: load_image_dataset(str(idx_folder(d, "magic"))),
     DatasetSpecError, "magic number 2049, not 2051", "swapped image/label"),
    ("Hub model id while offline", lambda d: load_pretrained("someone/vqvae-mnist"), ModelLoadError,
     "not a local folder", "offline"),
    ("Hub dataset id while offline", lambda d: load_image_dataset("someone/digits"), ConnectionError,
     "could not load 'someone/digits'", "Offline, use a local form"),
    ("tokenizer and prior that do not match", lambda d: check_compatible(prior(), VQVAE(codebook_size=32, code_dim=4)),
     ValueError, "codebook size 32 vs 16", "train a prior on this one"),
    ("codes outside the codebook", lambda d: vq().detokenize(torch.full((1, 7, 7), 16)), ValueError,
     r"\[0, 15\]", "another codebook size"),
    ("codes of the wrong grid shape", lambda d: vq().detokenize(torch.zeros(1, 4, 4, dtype=torch.long)), ValueError,
     r"\[b, 7, 7\]", "this tokenizer"),
    ("config.json of an unknown model type", lambda d: load_pretrained(edit_config(d, model_type="diffusion")),
     ModelLoadError, "'diffusion'", "Load it with its own class"),
    ("config.json from a newer format version", lambda d: load_pretrained(edit_config(d, format_version=99)),
     ModelLoadError, "format_version 99", "Upgrade vqgen"),
    ("config.json with a field this version does not know", lambda d: load_pretrained(edit_config(d, new_knob=1)),
     ModelLoadError, "new_knob", "upgrade vqgen"),
    ("weights with a missing key", lambda d: load_pretrained(edit_weights(d, drop="decoder.net.0.weight")),
     ModelLoadError, "decoder.net.0.weight", "re-save with save_pretrained"),
    ("weights with an unexpected key", lambda d: load_pretrained(edit_weights(d, add="extra.weight")),
     ModelLoadError, "extra.weight", "re-save with save_pretrained"),
    ("a folder without model files", lambda d: load_pretrained(d), ModelLoadError, "missing", "save_pretrained"),
    ("num_samples <= 0", lambda d: sample_codes(prior(), 0), ValueError, "num_samples", "positive integer"),
    ("a negative temperature", lambda d: sample_codes(prior(), 1, temperature=-0.5), ValueError, "temperature",
     "> 0"),
    ("top_p outside (0, 1]", lambda d: sample_codes(prior(), 1, top_p=1.5), ValueError, "top_p", r"\(0, 1\]"),
    ("top_k larger than the vocabulary", lambda d: sample_codes(prior(), 1, top_k=100), ValueError, "top_k",
     r"\[1, 16\]"),
    ("top_k that is not an integer", lambda d: pipelines.SamplingSettings(top_k=2.5), ValueError, "got 2.5",
     r"integer >= 1 \(or None"),
    ("a misspelt sampling setting", lambda d: sample_codes(prior(), 1, temprature=0.5), TypeError,
     r"unknown sampling setting\(s\) \['temprature'\]", "the settings are"),
    ("sampling settings as a dict", lambda d: pipelines.generate(pipelines.TwoStagePipeline(vq(), prior()), 1,
                                                                 sampling={"top_k": 5}),
     TypeError, "got dict", r"SamplingSettings\(temperature=..."),
    ("guidance with an unconditional prior", lambda d: sample_codes(prior(classes=None), 1, guidance_scale=3.0),
     ValueError, "class-conditional", "guidance_scale=1.0"),
    ("a VQ-VAE without a prior asked for samples", lambda d: pipelines.generate(vq(), 2), ValueError, "no prior",
     "from_parts"),
]


@pytest.mark.parametrize("name, call, error, problem, fix", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_the_problem_and_the_fix(tmp_path, name, call, error, problem, fix):
    with pytest.raises(error) as caught:
        call(tmp_path)
    message = str(caught.value)
    assert re.search(problem, message), f"problem not named: {message}"
    assert re.search(fix, message), f"fix not named: {message}"


def test_a_refused_training_run_writes_nothing(tmp_path):
    from stage1_tokenizer.train import main as train

    out = tmp_path / "run"
    with pytest.raises(Exception, match="no/such/folder"):
        train(["--dataset", str(tmp_path / "no" / "such" / "folder"), "--output_dir", str(out), "--max_steps", "2"])
    assert not out.exists()
    with pytest.raises(SystemExit):
        train(["--output_dir", str(out), "--max_steps", "0"])
    assert not out.exists()
