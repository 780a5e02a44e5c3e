"""pipelines: generate() for every family, determinism, the saved layout, clear errors, distributed sampling."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import TwoStagePipeline, generate
from pipelines.sample import main as sample_main
from stage1_tokenizer import CVAE, VAE, VQVAE
from stage2_prior import TokenizerSpec, build_prior
from two_processes import launch_two_cpu_processes

ROOT = Path(__file__).resolve().parents[2]
DIGITS = [str(i) for i in range(10)]


def tiny_tokenizer(codebook_size=16, seed=0):
    torch.manual_seed(seed)
    tok = VQVAE(codebook_size=codebook_size, code_dim=4, channels=8, num_res_blocks=1, class_names=DIGITS)
    tok.train()
    tok(torch.rand(32, 1, 28, 28))  # initialise the codebook from data
    return tok.eval()


def tiny_pipeline(classes=DIGITS):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    prior = build_prior(TokenizerSpec.from_tokenizer(tok, "tok"), classes, num_layers=1, hidden_size=32, num_heads=2)
    return TwoStagePipeline(tok, prior.eval())


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory, pipe):
    return pipe.save_pretrained(tmp_path_factory.mktemp("pipe") / "pipeline")


def family(name):
    torch.manual_seed(0)
    return {"pipeline": tiny_pipeline,
            "vae": lambda: VAE(latent_dim=4, channels=8, num_res_blocks=1).eval(),
            "cvae": lambda: CVAE(latent_dim=4, channels=8, num_res_blocks=1).eval()}[name]()


@pytest.mark.parametrize("name", ["pipeline", "vae", "cvae"])
def test_generate_every_family_and_output_type(name):
    model = family(name)
    labels = [3, 1, 4] if name != "vae" else None
    pt = generate(model, num_samples=3, class_labels=labels, seed=0, output_type="pt").images
    assert pt.shape == (3, 1, 28, 28) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    arr = generate(model, num_samples=3, class_labels=labels, seed=0, output_type="np").images
    assert arr.shape == (3, 28, 28, 1) and arr.dtype == np.float32
    pil = generate(model, num_samples=3, class_labels=labels, seed=0, output_type="pil").images
    assert len(pil) == 3 and all(isinstance(im, Image.Image) and im.size == (28, 28) and im.mode == "L" for im in pil)
    torch.testing.assert_close(torch.from_numpy(arr).permute(0, 3, 1, 2), pt)
    assert np.array_equal(np.stack([np.asarray(im) for im in pil]), (arr[..., 0] * 255).round().astype(np.uint8))
    other = generate(model, num_samples=3, class_labels=labels, seed=1, output_type="pt").images
    assert not torch.allclose(pt, other)  # another seed, other images


@pytest.mark.parametrize("name", ["pipeline", "vae", "cvae"])
def test_same_seed_same_images_whatever_the_batch_size(name):
    model = family(name)
    labels = [i % 10 for i in range(7)] if name != "vae" else None
    whole = generate(model, num_samples=7, class_labels=labels, seed=5, batch_size=7, output_type="pt").images
    pieces = generate(model, num_samples=7, class_labels=labels, seed=5, batch_size=3, output_type="pt").images
    # the codes are identical; decoding batches of another size may differ in the last float bit
    torch.testing.assert_close(whole, pieces, rtol=0, atol=1e-5)
    first = generate(model, num_samples=2, class_labels=labels[:2] if labels else None, seed=5, output_type="pt").images
    torch.testing.assert_close(whole[:2], first, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(class_labels=[3, 1, 4]), dict(class_labels="7", guidance_scale=3.0, top_k=5),
                                    dict(temperature=0.8, top_p=0.9), dict(class_labels=None)])
def test_calling_the_pipeline_is_generate(pipe, kwargs):
    n = len(kwargs["class_labels"]) if isinstance(kwargs.get("class_labels"), list) else 3
    called = pipe(num_samples=n, seed=11, batch_size=2, output_type="pt", progress=False, **kwargs).images
    assert torch.equal(called, generate(pipe, num_samples=n, seed=11, batch_size=2, output_type="pt", **kwargs).images)
    as_pil = pipe(num_samples=n, seed=11, **kwargs).images  # diffusers' default output: PIL images
    assert len(as_pil) == n and all(isinstance(im, Image.Image) for im in as_pil)


def test_a_settings_object_samples_as_its_keywords_do(pipe):
    from stage2_prior import sample_codes
    from vqgen.sampling_settings import SamplingSettings

    common = dict(num_samples=3, class_labels="7", seed=2, output_type="pt", progress=False)
    by_name = generate(pipe, guidance_scale=3.0, top_k=5, temperature=0.9, **common).images
    settings = SamplingSettings(temperature=0.9, top_k=5, guidance_scale=3.0)
    assert torch.equal(by_name, generate(pipe, sampling=settings, **common).images)
    assert torch.equal(by_name, pipe(sampling=settings, **common).images)
    # a keyword takes the place of the object's field; a full object ignores the pipeline's default guidance
    assert torch.equal(by_name, pipe(sampling=SamplingSettings(top_k=5, guidance_scale=3.0), temperature=0.9, **common).images)
    assert not torch.equal(generate(pipe, sampling=SamplingSettings(), **common).images, generate(pipe, **common).images)
    codes = [sample_codes(pipe.prior, 2, settings, class_labels=[1, "2"], generator=torch.Generator().manual_seed(0)),
             sample_codes(pipe.prior, 2, class_labels=[1, 2], generator=torch.Generator().manual_seed(0), **vars(settings))]
    assert torch.equal(*codes)


def test_pipeline_configs_of_both_formats_load(tmp_path):
    from pipelines.pipeline import read_pipeline_config
    from stage1_tokenizer import ModelLoadError
    from vqgen.sampling_settings import SamplingSettings

    flat = {"format_version": 1, "class_names": None, "image_size": 28, "image_channels": 1, "evaluation": {},
            "guidance_scale": 1.0, "temperature": 0.7, "top_k": 9, "top_p": None}  # vqgen 0.1's layout
    (tmp_path / "v1.json").write_text(json.dumps(flat))
    assert read_pipeline_config(tmp_path / "v1.json").sampling == SamplingSettings(temperature=0.7, top_k=9)
    nested = {"format_version": 2, "class_names": None, "image_size": 28, "image_channels": 1, "evaluation": {},
              "sampling": {"temperature": 0.7, "top_k": 9, "top_p": None, "guidance_scale": 1.0}}
    (tmp_path / "v2.json").write_text(json.dumps(nested))
    assert read_pipeline_config(tmp_path / "v2.json") == read_pipeline_config(tmp_path / "v1.json")
    for sampling, match in [({"top_k": 9, "new_knob": 1}, "new_knob"), ({"top_k": 0}, "top_k"), (3, "sampling")]:
        (tmp_path / "bad.json").write_text(json.dumps({**nested, "sampling": sampling}))
        with pytest.raises(ModelLoadError, match=match):
            read_pipeline_config(tmp_path / "bad.json")


def test_every_family_has_the_one_interface():
    """What the pipelines ask of a model, answered by each without anyone checking its class."""
    vae, cvae, vq, two_stage = family("vae"), family("cvae"), tiny_tokenizer(), tiny_pipeline()
    x = torch.rand(2, 1, 28, 28)
    for model, discrete, elbo, samples, needs_labels, names in [
        (vae, False, True, True, False, None), (cvae, False, True, True, True, [str(i) for i in range(10)]),
        (vq, True, False, False, False, None), (two_stage, None, None, True, False, DIGITS),
    ]:
        assert (model.can_sample, model.requires_labels, model.class_names) == (samples, needs_labels, names)
        assert model.device == torch.device("cpu")
        ae = model.autoencoder
        if discrete is not None:
            assert ae is model and (ae.is_discrete, ae.has_elbo) == (discrete, elbo)
        y = torch.tensor([1, 2]) if ae.requires_labels else None
        z = ae.encode_latent(x, y)
        assert tuple(z.shape) == (2, *ae.latent_shape)
        torch.testing.assert_close(ae.decode_latent(z, y), ae.reconstruct(x, y))
    assert two_stage.autoencoder is two_stage.tokenizer
    assert vq.latent_shape == (4, 7, 7) and vae.latent_shape == (4,)


def test_sampling_settings_fill_defaults_and_refuse_what_does_not_apply(pipe):
    from pipelines import SamplingSettings

    assert pipe.sampling_settings(conditional=True) == SamplingSettings(guidance_scale=2.0)
    assert pipe.sampling_settings(conditional=False) == SamplingSettings(guidance_scale=1.0)
    assert pipe.sampling_settings(top_k=4, temperature=0.5, conditional=True) == SamplingSettings(0.5, 4, None, 2.0)
    vae = family("vae")
    assert vae.sampling_settings(temperature=0.5) == SamplingSettings(temperature=0.5)
    with pytest.raises(ValueError, match=r"\['guidance_scale'\] apply to a two-stage pipeline"):
        vae.sampling_settings(guidance_scale=1.0)
    images = vae.sample_batch(None, [torch.Generator().manual_seed(0) for _ in range(2)], SamplingSettings())
    assert images.shape == (2, 1, 28, 28) and torch.equal(images[0], images[1])  # same seed, same image


def test_shared_helpers():
    from pipelines.labels import resolve_labels
    from pipelines.seeds import sample_seed
    from vqgen.image_grid import class_grid_labels

    assert class_grid_labels(3, per_class=2).tolist() == [0, 0, 1, 1, 2, 2] and class_grid_labels(0) is None
    assert len(class_grid_labels(10)) == 80
    cvae = family("cvae")
    assert resolve_labels(cvae, None, 12).tolist() == [i % 10 for i in range(12)]  # a CVAE cycles its classes
    assert resolve_labels(cvae, ["3", 4, "-0"], 3).tolist() == [3, 4, 0]
    assert resolve_labels(family("vae"), None, 4) is None
    assert sample_seed(0, 1) != sample_seed(1, 0) and 0 <= sample_seed(5, 5) < 2**63


def test_class_names_and_ids_give_the_same_samples(pipe):
    by_id = generate(pipe, num_samples=4, class_labels=[7, 7, 2, 0], seed=3, output_type="pt").images
    by_name = generate(pipe, num_samples=4, class_labels=["7", "7", "2", "0"], seed=3, output_type="pt").images
    one_for_all = generate(pipe, num_samples=2, class_labels="7", seed=3, output_type="pt").images
    torch.testing.assert_close(by_id, by_name)
    torch.testing.assert_close(by_id[:2], one_for_all, rtol=0, atol=1e-5)


def test_guidance_changes_conditional_samples(pipe):
    plain = generate(pipe, num_samples=4, class_labels=1, seed=0, guidance_scale=1.0, output_type="pt").images
    guided = generate(pipe, num_samples=4, class_labels=1, seed=0, guidance_scale=4.0, output_type="pt").images
    assert not torch.allclose(plain, guided)


def test_saved_layout_round_trip_gives_identical_samples(pipe, saved_pipeline):
    folder = saved_pipeline
    assert {p.name for p in folder.iterdir()} >= {"pipeline_config.json", "tokenizer", "prior", "README.md", "samples.png"}
    assert {"config.json", "model.safetensors"} <= {p.name for p in (folder / "tokenizer").iterdir()}
    assert {"config.json", "model.safetensors"} <= {p.name for p in (folder / "prior").iterdir()}
    config = json.loads((folder / "pipeline_config.json").read_text())
    assert config["class_names"] == DIGITS and config["image_size"] == 28
    assert config["sampling"] == {"guidance_scale": 2.0, "temperature": 1.0, "top_k": None, "top_p": None}
    assert "![samples](samples.png)" in (folder / "README.md").read_text()
    with Image.open(folder / "samples.png") as grid:
        assert grid.size[0] > 8 * 28
    loaded = TwoStagePipeline.from_pretrained(folder)
    a = generate(pipe, num_samples=5, class_labels=[0, 1, 2, 3, 4], seed=9, output_type="pt").images
    b = generate(loaded, num_samples=5, class_labels=[0, 1, 2, 3, 4], seed=9, output_type="pt").images
    c = generate(str(folder), num_samples=5, class_labels=[0, 1, 2, 3, 4], seed=9, output_type="pt").images
    assert torch.equal(a, b) and torch.equal(a, c)


def test_from_parts_checks_that_the_halves_match(tmp_path, pipe):
    pipe.tokenizer.save_pretrained(tmp_path / "tok")
    from stage2_prior import save_prior

    save_prior(pipe.prior, tmp_path / "prior")
    again = TwoStagePipeline.from_parts(tmp_path / "tok", tmp_path / "prior", guidance_scale=3.5)
    assert again.config.sampling.guidance_scale == 3.5 and again.class_names == DIGITS
    tiny_tokenizer(codebook_size=32).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not match the prior"):
        TwoStagePipeline.from_parts(tmp_path / "other", tmp_path / "prior")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(class_labels="seven"), ValueError, "unknown class name 'seven'"),
    (dict(class_labels=10), ValueError, "out of range"),
    (dict(class_labels=[1, 2, 3]), ValueError, "3 class labels for num_samples=2"),
    (dict(num_samples=0), ValueError, "num_samples must be a positive integer"),
    (dict(num_samples=-3), ValueError, "num_samples"),
    (dict(guidance_scale=3.0), ValueError, "needs class_labels"),
    (dict(class_labels=1, temperature=0.0), ValueError, "temperature"),
    (dict(class_labels=1, top_p=0.0), ValueError, "top_p"),
    (dict(class_labels=1, top_k=10_000), ValueError, "top_k"),
    (dict(output_type="jpeg"), ValueError, "output_type"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_bad_arguments_are_refused_before_any_work(pipe, kwargs, error, match, monkeypatch):
    import pipelines.sampling

    monkeypatch.setattr(pipelines.sampling, "sample_images", lambda *a, **k: pytest.fail("sampled before refusing"))
    with pytest.raises(error, match=match):
        generate(pipe, **{"num_samples": 2, **kwargs})
    with pytest.raises(error, match=match):
        pipe(**{"num_samples": 2, **kwargs})


def test_family_specific_refusals():
    unconditional = tiny_pipeline(classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        generate(unconditional, num_samples=2, class_labels=1)
    with pytest.raises(ValueError, match="class-conditional"):
        generate(unconditional, num_samples=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="no prior"):
        generate(tiny_tokenizer(), num_samples=2)
    with pytest.raises(ValueError, match="apply to a two-stage pipeline"):
        generate(VAE(latent_dim=4, channels=8), num_samples=2, top_k=5)
    with pytest.raises(ValueError, match="unconditional"):
        generate(VAE(latent_dim=4, channels=8), num_samples=2, class_labels=3)


def test_missing_folder_is_a_clear_error(tmp_path):
    from stage1_tokenizer import ModelLoadError

    with pytest.raises(ModelLoadError, match="neither an existing local folder nor a valid Hub repo id"):
        generate(str(tmp_path / "no" / "such" / "model"), num_samples=1)


@pytest.mark.integration
def test_sampling_script_resumes_without_redoing_shards(tmp_path, saved_pipeline):
    args = ["--model", str(saved_pipeline), "--num_samples", "10", "--batch_size", "4", "--class_labels", "0", "1", "2",
            "--seed", "1", "--out", str(tmp_path / "s")]
    first = sample_main(args)
    assert first["shards_total"] == 3 and first["shards_written_per_process"] == [3]
    data = np.load(tmp_path / "s" / "samples.npz")
    assert data["images"].shape == (10, 28, 28, 1) and data["images"].dtype == np.uint8
    assert data["labels"].tolist() == [i % 3 for i in range(10)]
    direct = generate(saved_pipeline, num_samples=10, class_labels=[i % 3 for i in range(10)], seed=1, batch_size=4,
                      output_type="np").images
    assert np.array_equal(data["images"], (direct * 255).round().astype(np.uint8))
    (tmp_path / "s" / "shards" / "shard-000001.npz").unlink()  # as if killed before this shard was written
    again = sample_main(args)
    assert again["shards_written_per_process"] == [1]
    assert np.array_equal(np.load(tmp_path / "s" / "samples.npz")["images"], data["images"])
    (tmp_path / "s" / "shards" / "shard-000002.npz").unlink()  # the compiled step changes the speed, not the samples
    assert sample_main([*args, "--compile_prior", "yes"])["shards_written_per_process"] == [1]
    assert np.array_equal(np.load(tmp_path / "s" / "samples.npz")["images"], data["images"])
    with pytest.raises(SystemExit, match="another sampling run"):
        sample_main([*args[:-2], "--out", str(tmp_path / "s"), "--temperature", "0.5"])


def test_the_sampling_script_compiles_the_prior_when_asked_and_leaves_auto_to_sample_codes():
    from pipelines.sample import compile_prior, parse_args

    def decision(*flags):
        return compile_prior(parse_args(["--model", "m", "--out", "o", "--num_samples", "4096", *flags]))

    assert decision() is None  # sample_codes' default: compiled on CUDA, eager elsewhere, whatever the job's size
    assert decision("--compile_prior", "no") is False and decision("--compile_prior", "yes") is True


@pytest.mark.integration
def test_two_processes_sample_the_same_set_as_one(tmp_path, saved_pipeline):
    common = ["--model", str(saved_pipeline), "--num_samples", "9", "--batch_size", "2", "--class_labels", "4", "--seed", "2"]
    sample_main([*common, "--out", str(tmp_path / "one")])
    result = launch_two_cpu_processes("pipelines.sample", *common, "--out", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "sampling_summary.json").read_text())
    assert summary["processes_seen"] == 2 and sorted(summary["shards_written_per_process"]) == [2, 3]
    one, two = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    for key in ("images", "labels", "seeds"):
        assert np.array_equal(one[key], two[key]), key
    assert (tmp_path / "two" / "samples.png").is_file()


@pytest.mark.integration
def test_sample_script_help():
    result = subprocess.run([sys.executable, "-m", "pipelines.sample", "--help"], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0 and "--guidance_scale" in result.stdout and "--num_samples" in result.stdout


@pytest.mark.integration
def test_quickstart_chains_both_trainings_and_prints_the_images(tmp_path, capsys):
    from pipelines.quickstart import main as quickstart

    summary = quickstart(["--output_dir", str(tmp_path), "--tokenizer_steps", "2", "--prior_steps", "2",
                          "--max_train_samples", "256"])
    printed = capsys.readouterr().out
    for path in (tmp_path / "tokenizer" / "reconstructions.png", tmp_path / "pipeline" / "samples.png",
                 tmp_path / "overview.png"):
        assert path.is_file() and str(path) in printed
    with Image.open(tmp_path / "pipeline" / "samples.png") as grid:
        assert grid.size[1] > 10 * 28  # one row per digit class
    pipe = TwoStagePipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.class_names == DIGITS and pipe.config.sampling.guidance_scale == 2.0
    assert summary["prior_test_bits_per_pixel_dim"] > 0 and 0 < summary["codebook_usage"] <= 1


@pytest.mark.integration
def test_sampling_killed_half_way_resumes_without_redoing_or_duplicating_shards(tmp_path, saved_pipeline):
    import time

    args = ["--model", str(saved_pipeline), "--num_samples", "60", "--batch_size", "2", "--class_labels", "0", "1",
            "--seed", "4", "--out", str(tmp_path / "s")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "pipelines.sample", *args], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(list((tmp_path / "s" / "shards").glob("shard-*.npz"))) < 3:
        assert run.poll() is None and time.time() < deadline, run.stderr.read()[-3000:]
        time.sleep(0.02)
    run.kill()
    run.wait()
    done = len(list((tmp_path / "s" / "shards").glob("shard-*.npz")))
    assert 3 <= done < 30 and not (tmp_path / "s" / "samples.npz").exists()
    resumed = sample_main(args)
    assert resumed["shards_written_per_process"] == [30 - done]  # nothing redone
    straight = sample_main([*args[:-1], str(tmp_path / "straight")])
    assert straight["shards_written_per_process"] == [30]
    a, b = np.load(tmp_path / "s" / "samples.npz"), np.load(tmp_path / "straight" / "samples.npz")
    assert a["images"].shape == (60, 28, 28, 1)  # nothing duplicated
    for key in ("images", "labels", "seeds"):
        assert np.array_equal(a[key], b[key]), key
