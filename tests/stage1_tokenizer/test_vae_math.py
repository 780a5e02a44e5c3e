"""The VAE family's math: KL, reparameterisation, likelihoods, label conditioning."""

import math

import pytest
import torch

from stage1_tokenizer import build_loss

from stage1_tokenizer import CVAE, VAE, GaussianPosterior

TINY = dict(channels=8, num_res_blocks=1, latent_dim=4)


@pytest.mark.integration
def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 5), torch.randn(3, 5) * 0.5
    q = GaussianPosterior(mean, logvar)
    z = torch.stack([q.sample() for _ in range(100_000)])  # n b d
    log_q = -0.5 * ((z - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    monte_carlo = (log_q - log_p).sum(-1).mean(0)
    torch.testing.assert_close(q.kl(), monte_carlo, rtol=0.03, atol=0.03)
    assert torch.all(q.kl() >= 0)
    assert GaussianPosterior(torch.zeros(2, 3), torch.zeros(2, 3)).kl().abs().max() == 0


def test_reparameterised_sample_is_differentiable_in_mean_and_logvar():
    mean = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    GaussianPosterior(mean, logvar).sample(torch.Generator().manual_seed(0)).pow(2).sum().backward()
    assert mean.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, logvar, z = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6)
    expected = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(GaussianPosterior(mean, logvar).log_prob(z), expected)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_likelihoods_match_torch_distributions(likelihood):
    torch.manual_seed(0)
    model = VAE(likelihood=likelihood, gaussian_std=0.2, **TINY)
    logits, images = torch.randn(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    if likelihood == "bernoulli":
        # continuous-Bernoulli-free cross-entropy: the same formula as Bernoulli log-prob for x in [0, 1]
        expected = (images * torch.nn.functional.logsigmoid(logits) + (1 - images) * torch.nn.functional.logsigmoid(-logits)).flatten(1).sum(1)
    else:
        expected = torch.distributions.Normal(logits, 0.2).log_prob(images).flatten(1).sum(1)
    torch.testing.assert_close(model.log_likelihood(logits, images), expected, rtol=1e-5, atol=1e-3)


def test_vae_loss_is_reconstruction_plus_beta_kl():
    torch.manual_seed(0)
    model = VAE(kl_weight=4.0, **TINY)
    x = torch.rand(3, 1, 28, 28)
    out = build_loss(model)(model(x, generator=torch.Generator().manual_seed(1)), x, step=0)
    rec, kl = out.terms["reconstruction_loss"], out.terms["kl"]
    torch.testing.assert_close(out.loss, rec + 4.0 * kl)
    torch.testing.assert_close(out.terms["negative_elbo"], rec + kl)


def test_cvae_conditions_encoder_input_and_decoder_on_the_label():
    torch.manual_seed(0)
    model = CVAE(num_classes=10, label_embed_dim=3, **TINY).eval()
    first_conv = model.encoder[0].net[0]
    assert first_conv.in_channels == 1 + 10  # image channels + one-hot label maps
    assert model.decoder[0].in_features == 4 + 3  # z + label embedding
    z = torch.randn(2, 4)
    a = model.decode(z, torch.tensor([0, 0]))
    b = model.decode(z, torch.tensor([7, 7]))
    assert not torch.allclose(a, b), "the decoder ignores the label"
    x = torch.rand(2, 1, 28, 28)
    assert not torch.allclose(model.encode(x, torch.tensor([1, 1])).mean, model.encode(x, torch.tensor([2, 2])).mean)


def test_cvae_samples_for_a_chosen_label_and_rejects_bad_labels():
    model = CVAE(num_classes=10, **TINY).eval()
    assert model.sample(5, torch.full((5,), 3), generator=torch.Generator().manual_seed(0)).shape == (5, 1, 28, 28)
    with pytest.raises(ValueError, match=r"label 10 is out of range.*takes 0\.\.9"):
        model.sample(2, torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="class-conditional"):
        model(torch.rand(2, 1, 28, 28))
