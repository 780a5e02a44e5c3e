"""pipelines.evaluate and its metrics, each on inputs whose answer is known."""

import json
import math

import pytest
import torch
from test_pipelines import family, tiny_tokenizer
from torch import nn

from pipelines.evaluate import evaluate
from pipelines.evaluate import main as evaluate_main
from pipelines.feature_classifier import FeatureClassifier, FeatureClassifierConfig
from pipelines.latent_tools import roc_auc
from pipelines.likelihood import discretized_gaussian_nll, importance_weighted_bound
from pipelines.sample_quality import frechet_distance, precision_recall
from stage1_tokenizer import VAE, GaussianPosterior
from vqgen.image_metrics import MAX_PSNR_DB, mse, psnr, ssim
from stage1_tokenizer.posterior import standard_normal_log_prob
from stage1_tokenizer.train import batch_to_inputs
from stage1_tokenizer.train import main as train_stage1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- reconstruction ----------------------------------------------------------------------------------
def test_psnr_of_identical_images_is_capped_and_falls_with_noise():
    x = torch.rand(3, 1, 28, 28, generator=gen())
    assert torch.equal(psnr(x, x), torch.full((3,), MAX_PSNR_DB, dtype=torch.float64))
    noisy = [psnr(x, (x + s * torch.randn(x.shape, generator=gen())).clamp(0, 1)).mean().item() for s in (0.01, 0.1, 0.3)]
    assert noisy[0] > noisy[1] > noisy[2] > 0
    # a uniform error of 0.1 is 20 dB exactly
    assert psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1)).item() == pytest.approx(20.0)
    assert mse(x, 1 - x).mean().item() == pytest.approx((1 - 2 * x).pow(2).mean().item())


def test_ssim_is_one_for_identical_images_and_lower_for_distorted():
    x = torch.rand(2, 1, 28, 28, generator=gen())
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
    assert (ssim(x, (x + 0.2 * torch.randn(x.shape, generator=gen())).clamp(0, 1)) < 0.9).all()
    with pytest.raises(ValueError, match="one shape"):
        ssim(x, x[:1])


# -- sample quality ----------------------------------------------------------------------------------
def test_frechet_distance_is_zero_against_itself_and_grows_with_a_shift():
    a = torch.randn(3000, 8, generator=gen())
    b = torch.randn(3000, 8, generator=gen())
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_distance(a, b + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts) and shifts[0] < 0.05
    # two unit Gaussians a shift s apart in every one of 8 dimensions: 8 s^2 (up to sampling error)
    assert shifts[3] == pytest.approx(8 * 4.0, rel=0.05)
    # a scaled covariance: tr(S1 + S2 - 2 (S1 S2)^1/2) = d (1 + 4 - 2 * 2) = d
    assert frechet_distance(a, 2 * b) == pytest.approx(8.0, rel=0.1)


def test_precision_recall_of_identical_sets_is_one_and_of_disjoint_sets_zero():
    a = torch.randn(500, 4, generator=gen())
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)
    # generated samples that cover only half of the real set: precise but half the recall
    half = a[a[:, 0] > 0]
    precision, recall = precision_recall(a, half)
    assert precision == 1.0 and 0.3 < recall < 0.85


def test_roc_auc_of_a_perfect_score_is_one():
    assert roc_auc(torch.arange(10.0), torch.arange(10.0) + 100) == 1.0
    assert roc_auc([1.0, 2.0], [1.0, 2.0]) == 0.5


# -- likelihood --------------------------------------------------------------------------------------
class LinearGaussian(nn.Module):
    """z ~ N(0, 1), x | z ~ N(z, 1): log p(x) = log N(x; 0, 2) exactly. The posterior is N(x/2, 1/2);
    `exact=False` uses N(0, 1) instead, so the importance-weighted bound has something to tighten."""

    model_type = "vae"

    def __init__(self, exact: bool) -> None:
        super().__init__()
        self.exact = exact
        self.dummy = nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.dummy.device

    def encode(self, x, labels=None):
        x = x.flatten(1)
        if self.exact:
            return GaussianPosterior(x / 2, torch.full_like(x, math.log(0.5)))
        return GaussianPosterior(torch.zeros_like(x), torch.zeros_like(x))

    def decode_logits(self, z, labels=None):
        return z.view(-1, 1, 1, 1)

    def log_likelihood(self, mean, x):
        return (-0.5 * (x - mean).pow(2) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


def test_importance_weighted_bound_is_exact_with_the_true_posterior_and_tightens_with_k():
    x = torch.linspace(-2, 2, 9).view(9, 1, 1, 1)
    nll = 0.25 * x.flatten().double().pow(2) + 0.5 * math.log(4 * math.pi)  # -log N(x; 0, 2)
    exact, _ = importance_weighted_bound(LinearGaussian(exact=True), x, k=3, generator=gen(), progress=False)
    assert exact.tolist() == pytest.approx(nll.tolist(), abs=1e-5)  # zero-variance weights: every k is exact

    # 2,700 images so that the Monte Carlo error is far below the gaps between the k
    x = x.repeat(300, 1, 1, 1)
    nll = (0.25 * x.flatten().double().pow(2) + 0.5 * math.log(4 * math.pi)).mean().item()
    elbo = (0.5 * (x.flatten().double().pow(2) + 1) + 0.5 * math.log(2 * math.pi)).mean().item()  # E[-L_1], closed form
    bounds = {k: importance_weighted_bound(LinearGaussian(exact=False), x, k=k, batch_size=2700, chunk=1000,
                                           generator=gen(), progress=False)[0].mean().item() for k in (1, 10, 100, 1000)}
    assert bounds[1] == pytest.approx(elbo, abs=0.15) and bounds[1] > bounds[10] > bounds[100]
    assert bounds[1000] == pytest.approx(nll, abs=0.005)


def test_importance_weighted_bound_of_a_vae_is_below_its_elbo_and_k1_is_the_elbo():
    torch.manual_seed(0)
    model = VAE(channels=8, num_res_blocks=1, latent_dim=4).eval()
    x = torch.bernoulli(torch.rand(8, 1, 28, 28, generator=gen()), generator=gen(1))
    bound, elbo = importance_weighted_bound(model, x, k=200, chunk=64, generator=gen(), progress=False)
    assert (bound <= elbo + 1e-9).all() and bound.mean() < elbo.mean()
    # k = 1 against the ELBO recomputed by hand from the same noise, through GaussianPosterior.log_prob
    one, _ = importance_weighted_bound(model, x, k=1, generator=gen(2), progress=False)
    posterior = model.encode(x)
    z = posterior.mean + posterior.std * torch.randn((1, *posterior.mean.shape), generator=gen(2))[0]
    by_hand = -(model.log_likelihood(model.decode_logits(z), x) + standard_normal_log_prob(z) - posterior.log_prob(z))
    assert one.tolist() == pytest.approx(by_hand.tolist(), abs=1e-3)


def test_discretized_gaussian_is_a_probability_over_the_256_levels():
    levels = torch.arange(256).double().div(255).view(256, 1, 1, 1)
    for mu, sigma in [(0.0, 0.01), (0.3, 0.05), (1.0, 0.3), (0.5, 1e-4)]:
        for images in (levels, levels.float()):  # float32 pixels land on the same levels
            nll = discretized_gaussian_nll(images, torch.full_like(levels, mu), sigma)
            assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="sigma must be positive"):
        discretized_gaussian_nll(levels, levels, 0.0)


# -- the evaluate command ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    torch.manual_seed(0)
    return FeatureClassifier(FeatureClassifierConfig(test_accuracy=0.5)).save(tmp_path_factory.mktemp("clf"))


def run(model, classifier_dir, **kwargs):
    options = {"classifier": str(classifier_dir), "anomaly_dataset": "embedded", "num_samples": 40, "iwae_k": 20,
                   "iwae_images": 4, "max_test_samples": 60, "progress": False}
    return evaluate(model, "embedded", **{**options, **kwargs})


@pytest.mark.parametrize("name", ["pipeline", "vae", "cvae"])
@pytest.mark.integration
def test_evaluate_reports_every_section_that_applies(name, classifier_dir):
    result = run(family(name), classifier_dir)
    json.dumps(result, allow_nan=False)  # strict JSON: no inf or NaN anywhere
    assert result["family"] == {"pipeline": "two-stage"}.get(name, name) and result["test_images"] == 60
    rec, lik, smp = result["reconstruction"], result["likelihood"], result["samples"]
    assert 0 < rec["mse"] < 1 and -1 <= rec["ssim"] <= 1
    if name == "pipeline":
        assert 0 < rec["codebook_usage"] <= 1 and rec["perplexity"] >= 1
        assert lik["nll_bound_bits_per_pixel_dim"] > lik["prior_bits_per_pixel_dim_unconditional"] > 0
    else:
        assert lik["iwae_k"] == 20 and lik["iwae_images"] == 4 and "binarised" in lik["data"]
        assert lik["iwae_nats"] < lik["negative_elbo_nats_same_images"]
    assert smp["num_samples"] == 40 and 0 <= smp["precision"] <= 1 and smp["frechet_distance"] >= 0
    assert smp["floor"]["frechet_distance"] < smp["frechet_distance"]  # real images beat untrained samples
    assert ("class_accuracy" in smp) == (name != "vae")
    # the same data as normal and anomalous: no score can separate them
    assert all(v == pytest.approx(0.5) for v in result["anomaly_detection"]["roc_auc"].values())


def test_evaluate_a_tokenizer_alone_and_without_optional_inputs(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    result = evaluate(str(tmp_path / "tok"), "embedded", max_test_samples=30, progress=False)
    assert result["family"] == "vqvae" and "likelihood" not in result
    assert result["samples"].startswith("not applicable")
    assert result["anomaly_detection"].startswith("skipped: pass --anomaly_dataset")
    result = evaluate(family("vae"), "embedded", max_test_samples=30, iwae_k=2, iwae_images=2, progress=False)
    assert "vqgen-feature-classifier" in result["samples"]


def test_evaluate_cli_writes_json_and_prints_a_table_line(tmp_path, classifier_dir, capsys):
    model = family("cvae")
    model.save_pretrained(tmp_path / "cvae")
    out = tmp_path / "results.json"
    evaluate_main(["--model", str(tmp_path / "cvae"), "--dataset", "embedded", "--samples", "20", "--iwae_k", "5",
                   "--iwae_images", "2", "--max_test_samples", "40", "--classifier", str(classifier_dir),
                   "--out", str(out)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("cvae | PSNR") and "class acc" in last and "-L_5" in last
    assert json.loads(out.read_text())["samples"]["num_samples"] == 20


def test_evaluate_refuses_mismatched_data_and_a_missing_classifier(tmp_path, classifier_dir):
    small = VAE(image_size=16, channels=8, num_res_blocks=1, latent_dim=4)
    with pytest.raises(ValueError, match=r"shape \(1, 28, 28\) but the model takes \(1, 16, 16\)"):
        evaluate(small, "embedded", max_test_samples=10, progress=False)
    with pytest.raises(FileNotFoundError, match="vqgen-feature-classifier"):
        run(family("vae"), tmp_path / "nowhere")
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        run(family("vae"), classifier_dir, num_samples=0)


def test_feature_classifier_round_trips_through_safetensors(tmp_path, classifier_dir):
    loaded = FeatureClassifier.load(classifier_dir)
    x = torch.rand(5, 1, 28, 28, generator=gen())
    features, predictions = loaded.embed(x)
    assert features.shape == (5, 128) and predictions.shape == (5,)
    assert loaded.config.test_accuracy == 0.5
    with pytest.raises(ValueError, match="trained on another dataset"):
        loaded.embed(torch.rand(2, 3, 28, 28))


def test_binarized_training_records_it_and_refuses_a_vqvae(tmp_path):
    tiny = ["--channels", "8", "--num_res_blocks", "1", "--latent_dim", "4", "--batch_size", "16",
            "--max_train_samples", "64", "--max_eval_samples", "32", "--checkpointing_steps", "0"]
    summary = train_stage1(["--model", "vae", "--binarize", "--output_dir", str(tmp_path), "--max_steps", "2", *tiny])
    assert summary["steps"] == 2 and VAE.from_pretrained(tmp_path).config.binarized
    images, _ = batch_to_inputs({"image": torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)}, binarize=True)
    assert set(images.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(SystemExit):
        train_stage1(["--model", "vqvae", "--binarize", "--output_dir", str(tmp_path / "no"), *tiny])
    assert not (tmp_path / "no").exists()
