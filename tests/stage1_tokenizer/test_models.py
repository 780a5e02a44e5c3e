"""Shapes, dtypes, save/load round trips and the clear errors of the three stage-1 models."""

import json

import pytest
import torch

from stage1_tokenizer import build_loss
from safetensors.torch import load_file, save_file

from stage1_tokenizer import CVAE, VAE, VQVAE, ModelLoadError, PretrainedModel, load_pretrained

TINY = dict(channels=8, num_res_blocks=1)


def tiny(kind: str, **kwargs):
    torch.manual_seed(0)
    if kind == "vqvae":
        return VQVAE(codebook_size=16, code_dim=4, **TINY, **kwargs)
    cls = {"vae": VAE, "vae-grid": VAE, "cvae": CVAE, "cvae-grid": CVAE}[kind]
    return cls(latent="grid" if kind.endswith("grid") else "flat", latent_dim=4, **TINY, **kwargs)


def images(b=4, c=1, s=28):
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(0))


LABELS = torch.tensor([0, 3, 9, 1])


@pytest.mark.parametrize("kind", ["vqvae", "vae", "vae-grid", "cvae", "cvae-grid"])
def test_forward_shapes_dtypes_and_range(kind):
    model = tiny(kind).train()
    x = images()
    out = model(x, LABELS)
    assert out.reconstruction.shape == (4, 1, 28, 28) and out.reconstruction.dtype == torch.float32
    assert 0 <= out.reconstruction.min() and out.reconstruction.max() <= 1
    terms = build_loss(model)(out, x, step=0)
    assert terms.loss.ndim == 0 and torch.isfinite(terms.loss)
    terms.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert set(terms.floats()) >= {"loss", "reconstruction_loss"}


def test_vqvae_tokenize_detokenize_shapes():
    model = tiny("vqvae").eval()
    codes = model.tokenize(images())
    assert codes.shape == (4, 7, 7) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 16
    assert model.detokenize(codes).shape == (4, 1, 28, 28)
    rgb = VQVAE(image_size=32, image_channels=3, num_downsamples=3, codebook_size=16, code_dim=4, **TINY).eval()
    assert rgb.tokenize(images(2, 3, 32)).shape == (2, 4, 4)


@pytest.mark.parametrize("kind", ["vqvae", "vae", "cvae-grid"])
def test_save_load_round_trip_is_identical(kind, tmp_path):
    model = tiny(kind).train()
    model(images(), LABELS)  # one training step: EMA buffers and the initialised flag become non-trivial
    model.eval()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = PretrainedModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = images()
    torch.testing.assert_close(loaded.reconstruct(x, LABELS), model.reconstruct(x, LABELS), rtol=0, atol=0)
    if kind == "vqvae":
        assert loaded.quantizer.initialized and torch.equal(loaded.tokenize(x), model.tokenize(x))


def test_model_card_and_config_contents(tmp_path):
    model = tiny("vqvae")
    model.card_data = {"dataset": "ylecun/mnist", "metrics": {"psnr": 21.5}}
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "vqvae" and config["format_version"] == 2
    assert config["quantizer"] == {**config["quantizer"], "type": "vq", "codebook_size": 16}
    card = (tmp_path / "README.md").read_text()
    assert "ylecun/mnist" in card and "psnr" in card and "library_name: vqgen" in card


def test_loading_with_the_wrong_class_or_unknown_type_is_a_clear_error(tmp_path):
    tiny("vae").save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="VAE.from_pretrained"):
        VQVAE.from_pretrained(tmp_path)
    assert isinstance(load_pretrained(str(tmp_path)), VAE)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "os.system"}))
    with pytest.raises(ModelLoadError, match="knows"):
        PretrainedModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="format_version 99"):
        PretrainedModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "new_field": 1}))
    with pytest.raises(ModelLoadError, match="new_field"):
        PretrainedModel.from_pretrained(tmp_path)


def test_weights_with_missing_or_unexpected_keys_are_refused(tmp_path):
    tiny("vqvae").save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="extra.weight"):
        VQVAE.from_pretrained(tmp_path)
    del state["extra.weight"], state["quantizer.cluster_size"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="quantizer.cluster_size"):
        VQVAE.from_pretrained(tmp_path)


def test_missing_folder_and_bad_ids_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not a folder written by save_pretrained"):
        VQVAE.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="neither an existing local folder nor a valid Hub repo id"):
        VQVAE.from_pretrained(str(tmp_path / "no" / "such" / "dir"))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(1, 28, 28), "add a batch dimension"),
        (torch.rand(2, 3, 28, 28), "1-channel images, got 3"),
        (torch.rand(2, 1, 30, 30), "28x28 images, got 30x30"),
        (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), "divide|float"),
        (torch.rand(2, 1, 28, 28) * 255, r"\[0, 1\]"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    ],
)
def test_bad_images_are_refused_with_the_fix(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny("vqvae").tokenize(bad)


def test_bad_codes_are_refused():
    model = tiny("vqvae").eval()
    with pytest.raises(ValueError, match=r"\[b, 7, 7\]"):
        model.detokenize(torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        model.detokenize(torch.full((1, 7, 7), 16))


def test_config_rejects_indivisible_image_size():
    with pytest.raises(ValueError, match="not divisible"):
        VQVAE(image_size=30, num_downsamples=2)
