"""The stage-1 encoder/decoder families, the adaptive-weight hook and the named presets."""

import pytest
import torch

from stage1_tokenizer import CVAE, VAE, VQVAE

TINY = dict(channels=8, num_res_blocks=1)


def tiny(kind: str, **kwargs):
    torch.manual_seed(0)
    if kind == "vqvae":
        return VQVAE(codebook_size=16, code_dim=4, **TINY, **kwargs)
    cls = {"vae": VAE, "vae-grid": VAE, "cvae": CVAE, "cvae-grid": CVAE}[kind]
    return cls(latent="grid" if kind.endswith("grid") else "flat", latent_dim=4, **TINY, **kwargs)


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
