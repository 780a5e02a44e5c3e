"""The stage-1 encoder/decoder families, the adaptive-weight hook and the named presets."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from stage1_tokenizer import CVAE, VAE, VQVAE, VQVAEConfig, load_pretrained
from stage1_tokenizer.architectures import ARCHITECTURES, Network
from stage1_tokenizer.presets import PRESETS, Preset, parameter_count, preset_config
from stage1_tokenizer.train import build_model, parse_args
from stage1_tokenizer.vqgan_networks import AttentionBlock, ResnetBlock, VQGANDecoder, VQGANOptions

RELEASE = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1"

from test_models import TINY, tiny  # noqa: E402 - the same tiny models as the model tests


@pytest.mark.parametrize("kind", ["vqvae", "vae", "vae-grid", "cvae", "cvae-grid"])
def test_forward_hands_out_the_decoders_last_layer(kind):
    """A GAN loss differentiates w.r.t. `last_layer`: it must be the very parameter that writes the image."""
    model = tiny(kind).train()
    out = model(torch.rand(2, 1, 28, 28), torch.tensor([0, 3]))
    assert isinstance(out.last_layer, torch.nn.Parameter)
    assert out.last_layer.shape[0] == 1  # one output channel per image channel
    assert any(out.last_layer is p for p in model.parameters())
    (grad,) = torch.autograd.grad(out.decoded.sum(), out.last_layer)
    assert grad.abs().sum() > 0


# -- the vqgan network ----------------------------------------------------------------------------------

def vqgan(kind: str = "vqvae", **kwargs):
    """A tiny vqgan-architecture model: 8 base channels, 32² RGB images, factor 4 unless told."""
    options = dict(architecture="vqgan", image_size=32, image_channels=3, num_downsamples=2,
                   channel_multipliers=[1, 2, 2], attention_resolutions=[8])
    return tiny(kind, **{**options, **kwargs})


def attention_blocks(module: torch.nn.Module) -> int:
    return sum(isinstance(m, AttentionBlock) for m in module.modules())


@pytest.mark.parametrize("num_downsamples", [1, 2, 3, 4])
def test_vqgan_shapes_at_factors_2_to_16(num_downsamples):
    model = vqgan(num_downsamples=num_downsamples, channel_multipliers=[1, 2, 2, 4, 4][: num_downsamples + 1],
                  attention_resolutions=[]).train()
    side = 32 // 2**num_downsamples
    x = torch.rand(2, 3, 32, 32)
    z = model.encode(x)
    assert z.shape == (2, 4, side, side)
    out = model(x)
    assert out.decoded.shape == (2, 3, 32, 32) and out.codes.shape == (2, side, side)
    assert model.tokenize(x).shape == (2, side, side) == (2, *model.grid_shape)


def test_vqgan_widths_follow_the_channel_multipliers():
    model = vqgan(channel_multipliers=[1, 2, 4])
    widths = [m.conv2.out_channels for m in model.encoder.blocks if isinstance(m, ResnetBlock)]
    assert widths == [8, 16, 32]  # num_res_blocks=1 per level
    decoder_widths = [m.conv2.out_channels for m in model.decoder.blocks if isinstance(m, ResnetBlock)]
    assert decoder_widths == [32, 32, 16, 16, 8, 8]  # num_res_blocks + 1 per level, lowest resolution first


def test_attention_at_the_chosen_sides_and_in_the_middle_block():
    with_attention = vqgan(attention_resolutions=[8, 16])
    # encoder: 1 block at 16 and 1 at 8, plus the middle; decoder: 2 blocks at each, plus the middle
    assert attention_blocks(with_attention.encoder) == 3 and attention_blocks(with_attention.decoder) == 5
    without = vqgan(attention_resolutions=[], mid_attention=False)
    assert attention_blocks(without) == 0
    x = torch.rand(2, 3, 32, 32)
    assert without(x).decoded.shape == with_attention(x).decoded.shape == (2, 3, 32, 32)


def test_attention_block_is_a_single_head_softmax_over_positions():
    torch.manual_seed(0)
    block = AttentionBlock(8)
    x = torch.randn(2, 8, 4, 4)
    h = block.norm(x).flatten(2).transpose(1, 2)  # b (h w) c
    q, k, v = block.qkv.weight[:, :, 0, 0].matmul(h.transpose(1, 2)).add(block.qkv.bias[:, None]).chunk(3, dim=1)
    weights = torch.softmax(q.transpose(1, 2) @ k / 8**0.5, dim=-1)
    out = (weights @ v.transpose(1, 2)).transpose(1, 2).reshape(2, 8, 4, 4)
    torch.testing.assert_close(block(x), x + block.proj(out))


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    x = torch.rand(2, 3, 32, 32)
    results = []
    for checkpointing in (False, True):
        model = vqgan(gradient_checkpointing=checkpointing, ema_decay=0.0).train()  # the codebook gets gradients too
        out = model(x)
        loss = out.decoded.square().mean() + sum(out.quantizer_losses.values())
        loss.backward()
        results.append((out.decoded.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_grads), (recomputed, recomputed_grads) = results
    assert torch.equal(plain, recomputed)
    assert plain_grads.keys() == recomputed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(recomputed_grads[name], grad, rtol=0, atol=1e-6, msg=name)


def test_gradient_checkpointing_only_recomputes_in_training(monkeypatch):
    import stage1_tokenizer.vqgan_networks as networks

    calls = []
    monkeypatch.setattr(networks, "checkpoint", lambda block, x, **kw: calls.append(block) or block(x))
    model = vqgan(gradient_checkpointing=True)
    model.train()(torch.rand(1, 3, 32, 32))
    assert calls
    calls.clear()
    model.eval()(torch.rand(1, 3, 32, 32))
    with torch.no_grad():
        model.train()(torch.rand(1, 3, 32, 32))
    assert not calls


@pytest.mark.parametrize("kind", ["vae", "vae-grid", "cvae", "cvae-grid"])
def test_the_vae_family_builds_the_vqgan_network(kind):
    model = vqgan(kind).train()
    assert isinstance(model._image_decoder, VQGANDecoder)
    x, labels = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    out = model(x, labels)
    assert out.decoded.shape == (2, 3, 32, 32)
    assert out.last_layer is model._image_decoder.conv_out.weight
    expected = (2, 4, 8, 8) if kind.endswith("grid") else (2, 4)
    assert model.encode(x, labels).mean.shape == expected
    assert model.sample(2, labels).shape == (2, 3, 32, 32)


def test_vqvae_hands_out_the_vqgan_decoders_last_layer():
    model = vqgan()
    assert model(torch.rand(1, 3, 32, 32)).last_layer is model.decoder.conv_out.weight


def test_a_vqgan_model_saves_and_loads(tmp_path):
    model = vqgan(gradient_checkpointing=True).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architecture"] == "vqgan" and saved["channel_multipliers"] == [1, 2, 2]
    again = load_pretrained(tmp_path)
    assert again.config == model.config
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(again.tokenize(x), model.tokenize(x))


@pytest.mark.parametrize("kind", ["vqvae", "cvae"])
def test_a_conv_config_json_holds_exactly_the_fields_vqgen_0_1_wrote(tmp_path, kind):
    """vqgen 0.1 refuses unknown fields: the conv network must not write the vqgan ones."""
    tiny(kind).save_pretrained(tmp_path)
    saved = set(json.loads((tmp_path / "config.json").read_text()))
    assert not saved & {"architecture", *(f.name for f in dataclasses.fields(VQGANOptions))}
    if kind == "cvae":
        assert saved == set(json.loads((RELEASE / "cvae" / "config.json").read_text()))


@pytest.mark.parametrize("options, message", [
    (dict(attention_resolutions=[7]), "apply to architecture 'vqgan'"),
    (dict(gradient_checkpointing=True), "apply to architecture 'vqgan'"),
    (dict(architecture="vqgan", channel_multipliers=[1, 2]), "one multiplier per level"),
    (dict(architecture="vqgan", channel_multipliers=[1, 0, 2]), "must be positive"),
    (dict(architecture="vqgan", attention_resolutions=[5]), "not feature-map sides"),
    (dict(architecture="unet"), "architecture must be"),
])
def test_bad_architecture_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(**options)


class _PixelEncoder(torch.nn.Module):
    """A network in one file: average-pool by 2**num_downsamples, then a 1x1 conv."""

    def __init__(self, config, in_channels, out_channels):
        super().__init__()
        self.pool = torch.nn.AvgPool2d(2**config.num_downsamples)
        self.proj = torch.nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.proj(self.pool(x))


class _PixelDecoder(torch.nn.Module):
    def __init__(self, config, in_channels, out_channels):
        super().__init__()
        self.up = torch.nn.Upsample(scale_factor=2**config.num_downsamples)
        self.proj = torch.nn.Conv2d(in_channels, out_channels, 1)

    @property
    def last_layer_weight(self):
        return self.proj.weight

    def forward(self, z):
        return self.proj(self.up(z))


def test_a_network_is_one_registry_line_away(monkeypatch, tmp_path):
    monkeypatch.setitem(ARCHITECTURES, "pixel", Network("pool and 1x1 convs", _PixelEncoder, _PixelDecoder))
    model = VQVAE(architecture="pixel", codebook_size=16, code_dim=4)
    assert isinstance(model.encoder, _PixelEncoder) and isinstance(model.decoder, _PixelDecoder)
    assert model(torch.rand(2, 1, 28, 28)).decoded.shape == (2, 1, 28, 28)
    assert tiny("vae", architecture="pixel")(torch.rand(2, 1, 28, 28)).decoded.shape == (2, 1, 28, 28)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "pixel"
    assert load_pretrained(tmp_path).config == model.config
    assert parse_args(["--architecture", "pixel"]).architecture == "pixel"  # the flag's choices are the registry's
    with pytest.raises(ValueError, match="architecture must be one of"):
        VQVAEConfig(architecture="unet")


# -- presets ----------------------------------------------------------------------------------------------

def preset_model(name: str, device: str = "cpu"):
    args = parse_args(["--preset", name])
    with torch.device(device):
        torch.manual_seed(0)
        return build_model(args, args.image_size or 28, args.channels_in or 1, None), args


@pytest.mark.parametrize("name, side, grid", [("mnist", 28, 7), ("cifar10", 32, 8), ("cifar10-fsq", 32, 8)])
def test_presets_build_models_of_their_shapes(name, side, grid):
    model, args = preset_model(name)
    channels = args.channels_in or 1
    out = model.train()(torch.rand(2, channels, side, side))
    assert out.decoded.shape == (2, channels, side, side) and out.codes.shape == (2, grid, grid)


def test_the_vq16_preset_is_llamagens_vq16():
    model, _ = preset_model("vq16-256", device="meta")  # 70 M parameters: shapes only, nothing allocated
    assert model.grid_shape == (16, 16) and model.codebook_size == 16384 and model.config.code_dim == 8
    assert model.config.quantizer.l2_normalize
    assert attention_blocks(model.encoder) == 2 + 1 and attention_blocks(model.decoder) == 3 + 1  # at 16², middle
    z = model.encoder(torch.empty(1, 3, 256, 256, device="meta"))
    assert z.shape == (1, 8, 16, 16)
    assert model.decoder(z).shape == (1, 3, 256, 256)
    assert 65e6 < parameter_count("vq16-256") < 75e6  # LlamaGen's VQ-16: ~72 M with its z_channels convs


def test_parameter_counts_of_the_presets():
    assert parameter_count("mnist") == sum(p.numel() for p in VQVAE().parameters())
    assert 2e6 <= parameter_count("cifar10") <= 8e6
    assert parse_args(["--preset", "cifar10-fsq"]).fsq_levels == [8, 5, 5, 5]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_presets_config_is_the_one_the_training_script_builds(name):
    """`python -m stage1_tokenizer.presets` builds from the configs, not through the training script: the same model."""
    model, _ = preset_model(name, device="meta")
    assert preset_config(name) == model.config


def test_flags_override_a_preset_and_the_rest_of_it_stays():
    args = parse_args(["--preset", "cifar10", "--codebook_size", "64", "--no-l2_normalize"])
    assert args.codebook_size == 64 and args.l2_normalize is False
    assert args.architecture == "vqgan" and args.channel_multipliers == [1, 2, 4] and args.image_size == 32
    assert "adversarial" in args.extra_losses
    assert parse_args(["--codebook_size", "64"]).architecture == "conv"  # no preset: the plain defaults


def test_a_config_file_overrides_a_preset_and_may_name_it(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "cifar10", "channels": 48}))
    args = parse_args(["--config", str(config), "--learning_rate", "0.01"])
    assert args.preset == "cifar10" and args.architecture == "vqgan"
    assert args.channels == 48 and args.learning_rate == 0.01


def test_a_preset_leaves_its_quantiser_options_unused_for_another_quantiser():
    args = parse_args(["--preset", "cifar10", "--quantizer", "fsq"])
    assert args.quantizer == "fsq"
    with pytest.raises(SystemExit):  # but options the user gives for an unused quantiser are still refused
        parse_args(["--preset", "cifar10", "--quantizer", "fsq", "--codebook_size", "64"])


def test_a_preset_needing_an_option_this_install_lacks_is_refused(monkeypatch, capsys):
    monkeypatch.setitem(PRESETS, "broken", Preset("needs a plugin", {"extra_losses": ["not_registered"]}))
    with pytest.raises(SystemExit):
        parse_args(["--preset", "broken"])
    assert "not_registered" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--preset", "no-such-preset"])
