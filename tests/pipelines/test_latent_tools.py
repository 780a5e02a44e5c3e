"""The latent tools (pipelines.latent_tools) and their command line (pipelines.latent), on tiny models."""

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pipelines.latent as cli
import pipelines.latent_tools as lt
from pipelines import TwoStagePipeline
from stage1_tokenizer import CVAE, VAE, VQVAE, build_loss
from vqgen.data import image_tensors
from stage2_prior import TokenizerSpec, build_prior, sample_codes

TINY = dict(channels=8, num_res_blocks=1)
CLASSES = [str(i) for i in range(10)]
load_cached = functools.lru_cache(image_tensors)  # decoding the same test images once per session


def digits(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return load_cached("embedded", split, max_samples=n)


def noise(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vae() -> VAE:
    """A VAE with a 2-D latent, trained briefly on 256 real digits, so its scores mean something."""
    torch.manual_seed(0)
    model = VAE(latent_dim=2, **TINY).train()
    x, _ = digits("train", 256)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    objective = build_loss(model)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        batch = x[torch.randint(0, len(x), (64,), generator=g)]
        loss = objective(model(batch, generator=g), batch, 0).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def held_out_digits() -> tuple[torch.Tensor, torch.Tensor]:
    return digits("test", 64)


@pytest.fixture(scope="module")
def cvae() -> CVAE:
    torch.manual_seed(0)
    return CVAE(latent_dim=4, **TINY).eval()


@pytest.fixture(scope="module")
def vqvae() -> VQVAE:
    torch.manual_seed(0)
    model = VQVAE(codebook_size=16, code_dim=4, **TINY).train()
    model(torch.rand(8, 1, 28, 28))  # initialises the codebook (k-means on these latents)
    return model.eval()


@pytest.fixture(scope="module")
def pipe(vqvae) -> TwoStagePipeline:
    torch.manual_seed(0)
    prior = build_prior(TokenizerSpec.from_tokenizer(vqvae, "tok"), CLASSES, num_layers=1, hidden_size=32, num_heads=2)
    return TwoStagePipeline(vqvae, prior)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5)


# -- interpolate ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_interpolation_ends_at_the_reconstructions_and_moves_in_between(vae, held_out_digits):
    x, _ = held_out_digits
    out = lt.interpolate(vae, x[0], x[1:2], steps=5)
    assert out.shape == (5, 1, 28, 28)
    assert close(out[0], vae.reconstruct(x[:1])[0]) and close(out[-1], vae.reconstruct(x[1:2])[0])
    assert (out[2] - out[0]).abs().mean() > 1e-3 and (out[2] - out[-1]).abs().mean() > 1e-3


@pytest.mark.parametrize("which", ["vqvae", "pipeline"])
def test_vq_interpolation_ends_at_the_detokenized_codes(which, vqvae, pipe):
    a, b = noise(2)
    out = lt.interpolate(vqvae if which == "vqvae" else pipe, a, b, steps=4)
    assert out.shape == (4, 1, 28, 28)
    for end, x in ((out[0], a), (out[-1], b)):
        assert close(end, vqvae.detokenize(vqvae.tokenize(x[None]))[0])


def test_interpolation_refuses_bad_input(vae, cvae):
    a, b = noise(2)
    with pytest.raises(ValueError, match="steps"):
        lt.interpolate(vae, a, b, steps=1)
    with pytest.raises(ValueError, match="one image"):
        lt.interpolate(vae, noise(2), b)
    with pytest.raises(ValueError, match="labels"):
        lt.interpolate(cvae, a, b)
    assert lt.interpolate(cvae, a, b, steps=3, labels=4).shape == (3, 1, 28, 28)


# -- traverse ------------------------------------------------------------------------------------------
def test_traverse_at_the_images_own_value_reproduces_its_reconstruction(vae, held_out_digits):
    x = held_out_digits[0][:1]
    z = vae.encode(x).mean[0]
    out = lt.traverse(vae, x[0], dim=1, values=[z[1].item(), z[1].item() + 2.0])
    assert out.shape == (2, 1, 28, 28)
    assert close(out[0], vae.reconstruct(x)[0])
    assert (out[1] - out[0]).abs().mean() > 1e-3
    # a latent, with or without its batch dim, gives what its image gives
    assert close(lt.traverse(vae, z, 1, [z[1].item()])[0], out[0])
    assert close(lt.traverse(vae, z[None], 1, torch.tensor([z[1].item() + 2.0]))[0], out[1])


def test_traverse_sets_a_grid_channel_at_every_position():
    torch.manual_seed(0)
    model = VAE(latent="grid", latent_dim=3, **TINY).eval()
    z = torch.randn(3, 7, 7)
    expected = z.clone()
    expected[1] = 0.5
    assert close(lt.traverse(model, z, 1, [0.5])[0], model.decode(expected[None])[0])


def test_traverse_refuses_out_of_range_dims_and_wrong_shapes(vae, vqvae):
    with pytest.raises(ValueError, match=r"dim 2 is out of range.*\[0, 1\]"):
        lt.traverse(vae, noise(1), 2, [0.0])
    with pytest.raises(ValueError, match=r"dim 4 is out of range"):
        lt.traverse(vqvae, noise(1), 4, [0.0])
    with pytest.raises(ValueError, match="an image"):
        lt.traverse(vae, torch.zeros(3), 0, [0.0])
    with pytest.raises(ValueError, match="values"):
        lt.traverse(vae, torch.zeros(2), 0, [])


# -- anomaly scores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["reconstruction", "negative_elbo"])
def test_real_digits_score_lower_than_noise(vae, held_out_digits, score):
    normal = lt.anomaly_score(vae, held_out_digits[0], score=score)
    anomalous = lt.anomaly_score(vae, noise(64), score=score)
    assert normal.shape == anomalous.shape == (64,)
    assert normal.mean() < anomalous.mean()
    assert lt.roc_auc(normal, anomalous) > 0.95
    # chunking the batch changes nothing
    assert torch.allclose(lt.anomaly_score(vae, held_out_digits[0], score=score, batch_size=7), normal, atol=1e-4)


def test_reconstruction_score_is_the_per_image_mse(vae, vqvae, held_out_digits):
    x = held_out_digits[0][:8]
    for model in (vae, vqvae):
        expected = (model.reconstruct(x) - x).pow(2).mean((1, 2, 3))
        assert close(lt.anomaly_score(model, x), expected)


def test_real_digits_score_lower_than_fashion(vae, held_out_digits, fashion_dir):
    fashion = load_cached(str(fashion_dir), "test", max_samples=64)[0]
    normal, fashion = lt.anomaly_score(vae, held_out_digits[0]), lt.anomaly_score(vae, fashion)
    assert lt.roc_auc(normal, fashion) > 0.75


def test_cvae_without_labels_scores_with_its_best_class(cvae):
    x = noise(5)
    per_class = torch.stack([
        (cvae.reconstruct(x, torch.full((5,), c)) - x).pow(2).mean((1, 2, 3)) for c in range(10)
    ])
    assert close(lt.anomaly_score(cvae, x), per_class.amin(0))
    assert close(lt.anomaly_score(cvae, x, labels=3), per_class[3])


def test_anomaly_score_refusals(vqvae, vae):
    with pytest.raises(ValueError, match="negative_elbo.*VAE or CVAE"):
        lt.anomaly_score(vqvae, noise(2), score="negative_elbo")
    with pytest.raises(ValueError, match="score must be"):
        lt.anomaly_score(vae, noise(2), score="elbo")
    with pytest.raises(ValueError, match="unconditional"):
        lt.anomaly_score(vae, noise(2), labels=1)


def test_roc_auc_of_perfect_reversed_and_tied_scores():
    assert lt.roc_auc([0.1, 0.2], [0.5, 0.9]) == 1.0
    assert lt.roc_auc([0.5, 0.9], [0.1, 0.2]) == 0.0
    assert lt.roc_auc([0.3, 0.3], [0.3]) == 0.5
    with pytest.raises(ValueError, match="both groups"):
        lt.roc_auc([], [1.0])


# -- augment -------------------------------------------------------------------------------------------
def test_vae_augment_gives_n_distinct_reproducible_variations(vae, held_out_digits):
    x = held_out_digits[0][0]
    out = lt.augment(vae, x, 6, seed=3)
    assert out.shape == (6, 1, 28, 28)
    assert all((out[i] - out[j]).abs().max() > 1e-4 for i in range(6) for j in range(i))
    assert torch.equal(out, lt.augment(vae, x, 6, seed=3)) and not torch.equal(out, lt.augment(vae, x, 6, seed=4))
    # a vanishing temperature collapses onto the posterior mean, i.e. the reconstruction
    assert torch.allclose(lt.augment(vae, x, 2, temperature=1e-6), vae.reconstruct(x[None]).expand(2, -1, -1, -1), atol=1e-4)


def test_pipeline_augment_keeps_the_first_rows_of_codes(pipe, vqvae, monkeypatch):
    import pipelines.pipeline

    drawn = []
    monkeypatch.setattr(pipelines.pipeline, "sample_codes", lambda *a, **k: drawn.append(sample_codes(*a, **k)) or drawn[-1])
    x = noise(1)
    out = lt.augment(pipe, x, 4, labels="3", keep_rows=3, seed=0)
    assert out.shape == (4, 1, 28, 28)
    (codes,) = drawn
    assert torch.equal(codes[:, :3], vqvae.tokenize(x)[:, :3].expand(4, -1, -1))
    assert len({tuple(c.flatten().tolist()) for c in codes[:, 3:]}) == 4
    assert torch.equal(out, vqvae.detokenize(codes))
    assert all((out[i] - out[j]).abs().max() > 0 for i in range(4) for j in range(i))


def test_augment_refusals(vqvae, pipe, vae):
    with pytest.raises(ValueError, match="needs a prior"):
        lt.augment(vqvae, noise(1), 2)
    with pytest.raises(ValueError, match="keep_rows"):
        lt.augment(pipe, noise(1), 2, keep_rows=7)
    with pytest.raises(ValueError, match="keep_rows"):
        lt.augment(vae, noise(1), 2, keep_rows=2)
    with pytest.raises(ValueError, match="temperature"):
        lt.augment(vae, noise(1), 2, temperature=0)


# -- attribute directions and edits --------------------------------------------------------------------
@pytest.mark.parametrize("which", ["vae", "vqvae"])
def test_edit_at_strength_zero_is_the_reconstruction(which, vae, vqvae, held_out_digits):
    model = vae if which == "vae" else vqvae
    x = held_out_digits[0][:6]
    assert torch.allclose(lt.attribute_direction(model, x, x), torch.zeros(lt.latent_shape(model)), atol=1e-6)
    direction = lt.attribute_direction(model, x[:3], x[3:])
    assert direction.shape == lt.latent_shape(model) and direction.abs().max() > 0
    assert close(lt.edit(model, x, direction, strength=0.0), model.reconstruct(x))


def test_edit_adds_the_direction_in_latent_space(vae, held_out_digits):
    x, y = held_out_digits
    ones, sevens = x[y == 1], x[y == 7]
    direction = lt.attribute_direction(vae, ones, sevens)
    assert close(direction, vae.encode(ones).mean.mean(0) - vae.encode(sevens).mean.mean(0))
    assert close(lt.edit(vae, sevens, direction, 0.5), vae.decode(vae.encode(sevens).mean + 0.5 * direction))
    with pytest.raises(ValueError, match="latent shape"):
        lt.edit(vae, sevens, direction[None], 1.0)


# -- 2-D latents ---------------------------------------------------------------------------------------
def test_latent_map_layout(vae):
    out = lt.latent_map(vae, n=4, extent=2.0)
    assert out.shape == (16, 1, 28, 28)
    assert close(out[0], vae.decode(torch.tensor([[-2.0, 2.0]]))[0])  # top left: z1 low, z2 high
    assert close(out[3], vae.decode(torch.tensor([[2.0, 2.0]]))[0])
    assert close(out[15], vae.decode(torch.tensor([[2.0, -2.0]]))[0])


def test_2d_tools_refuse_other_latents(cvae, vqvae, pipe, tmp_path):
    for model in (cvae, vqvae, pipe):
        with pytest.raises(ValueError, match="latent='flat' and latent_dim=2"):
            lt.latent_map(model)
        with pytest.raises(ValueError, match="latent='flat' and latent_dim=2"):
            lt.plot_posterior_means(model, noise(2), None, tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def test_plot_posterior_means_writes_a_png(vae, held_out_digits, tmp_path):
    path = lt.plot_posterior_means(vae, *held_out_digits, tmp_path / "scatter.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (600, 600)


# -- command line --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(vae, pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    vae.save_pretrained(root / "vae")
    pipe.save_pretrained(root / "pipe", sample_grid=False)
    noise_dir = root / "noise" / "noise"  # an imagefolder tree: one class of uniform noise
    noise_dir.mkdir(parents=True)
    for i, img in enumerate((np.random.default_rng(0).random((40, 28, 28)) * 255).astype(np.uint8)):
        Image.fromarray(img).save(noise_dir / f"{i}.png")
    return root


@pytest.fixture
def run(monkeypatch, capsys):
    monkeypatch.setattr(cli, "image_tensors", lambda *a, **k: load_cached(*a, **k))

    def run(*argv: str) -> tuple[dict, str]:
        result = cli.main([str(a) for a in argv])
        return result, capsys.readouterr().out

    return run


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def tile(n: int) -> int:  # make_grid: 28-pixel images, 2-pixel padding
    return 30 * n + 2


@pytest.mark.parametrize("argv, size", [
    (["interpolate", "--steps", 4], (tile(6), tile(1))),
    (["traverse", "--dims", 0, 1, "--values", -1, 0, 1], (tile(3), tile(2))),
    (["edit", "--with_class", 1, "--without_class", 7, "--num_images", 2, "--strengths", 0, 1], (tile(3), tile(2))),
    (["augment", "--n", 3], (tile(2), tile(2))),
    (["latent-map", "--n", 4], (tile(4), tile(4))),
    (["scatter", "--num_images", 50], (600, 600)),
])
def test_cli_writes_the_png_and_prints_its_path(argv, size, saved, run, tmp_path):
    out = tmp_path / "out.png"
    _, printed = run(argv[0], "--model", saved / "vae", "--out", out, *argv[1:])
    assert printed.strip() == str(out)
    assert png_size(out) == size


def test_cli_augment_with_a_pipeline(saved, run, tmp_path):
    out = tmp_path / "aug.png"
    run("augment", "--model", saved / "pipe", "--n", 8, "--keep_rows", 2, "--label", 5, "--out", out)
    assert png_size(out) == (tile(3), tile(3))


def test_cli_anomaly_prints_the_roc_auc(saved, run, tmp_path):
    out = tmp_path / "hist.png"
    result, printed = run("anomaly", "--model", saved / "vae", "--ood_dataset", saved / "noise",
                          "--num_images", 40, "--score", "negative_elbo", "--out", out)
    assert json.loads(printed) == result and result["num_anomalous"] == 4
    assert result["roc_auc"] > 0.9 and result["mean_normal"] < result["mean_anomalous"]
    assert png_size(out) == (600, 400)


@pytest.mark.integration
def test_cli_help():
    top = subprocess.run([sys.executable, "-m", "pipelines.latent", "--help"], capture_output=True, text=True, check=True)
    for command in ("interpolate", "traverse", "anomaly", "augment", "edit", "latent-map", "scatter"):
        assert command in top.stdout
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["edit", "--help"])
    assert e.value.code == 0
