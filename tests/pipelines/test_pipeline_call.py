"""The pipeline call in diffusers' shape: an output with `.images` and `.codes`, `generator=`, the batch from the
labels (one rule for the API and the CLI), `output_type="latent"`, prompt codes, `callback_on_step_end` and the
per-code progress bar, `pipe.to(...)` respected, `torch_dtype`."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import ImageGenerationOutput, TwoStagePipeline, generate
from pipelines.labels import batch_labels
from pipelines.sample import main as sample_main
from test_pipelines import family, tiny_pipeline

QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_one_image_per_label_when_num_samples_is_not_given(pipe):
    out = pipe(class_labels=[1, 2, 3], seed=0, **QUIET)
    assert isinstance(out, ImageGenerationOutput) and len(out.images) == 3
    assert all(isinstance(im, Image.Image) and im.size == (28, 28) for im in out.images)
    assert out.class_labels.tolist() == [1, 2, 3] and out.seed == 0
    assert out.codes.shape == (3, 7, 7) and out.codes.dtype == torch.long
    assert out[0] is out.images and out["codes"] is out.codes and out.keys() == ["images", "codes", "class_labels", "seed"]
    unconditional = generate(family("vae"), **QUIET)
    assert len(unconditional.images) == 1 and unconditional.codes is None and unconditional.class_labels is None
    assert unconditional.to_tuple() == (unconditional.images, unconditional.seed)


def test_labels_fill_a_batch_by_one_rule(pipe):
    assert batch_labels(pipe, [0, 1, 2], None)[1].tolist() == [0, 1, 2]
    assert batch_labels(pipe, [0, 1, 2], 7)[1].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert batch_labels(pipe, "7", 3)[1].tolist() == [7, 7, 7] and batch_labels(pipe, None, None) == (1, None)
    assert batch_labels(pipe, torch.tensor([4, 5]), 3)[1].tolist() == [4, 5, 4]
    with pytest.raises(ValueError, match="3 class labels for num_samples=2"):
        batch_labels(pipe, [0, 1, 2], 2)
    with pytest.raises(ValueError, match="0 class labels"):
        batch_labels(pipe, [], None)
    cycled = pipe(num_samples=5, class_labels=[3, 4], seed=1, output_type="latent", **QUIET)
    spelled = pipe(num_samples=5, class_labels=[3, 4, 3, 4, 3], seed=1, output_type="latent", **QUIET)
    assert cycled.class_labels.tolist() == [3, 4, 3, 4, 3] and torch.equal(cycled.images, spelled.images)


def test_the_sampling_cli_fills_its_batch_as_the_api_does(tmp_path, pipe):
    folder = pipe.save_pretrained(tmp_path / "pipeline", sample_grid=False)
    summary = sample_main(["--model", str(folder), "--class_labels", "0", "1", "2", "--out", str(tmp_path / "a")])
    data = np.load(tmp_path / "a" / "samples.npz")
    assert summary["num_samples"] == 3 and data["labels"].tolist() == [0, 1, 2]
    sample_main(["--model", str(folder), "--class_labels", "0", "1", "2", "--num_samples", "5", "--out", str(tmp_path / "b")])
    direct = generate(pipe, num_samples=5, class_labels=[0, 1, 2], seed=0, output_type="np", **QUIET)
    data = np.load(tmp_path / "b" / "samples.npz")
    assert data["labels"].tolist() == direct.class_labels.tolist() == [0, 1, 2, 0, 1]
    assert np.array_equal(data["images"], (direct.images * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match="3 class labels for num_samples=2"):
        sample_main(["--model", str(folder), "--class_labels", "0", "1", "2", "--num_samples", "2",
                     "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit):
        sample_main(["--model", str(folder), "--out", str(tmp_path / "d")])  # neither a count nor labels


def test_a_generator_gives_reproducible_samples_whatever_the_batch(pipe):
    def draw(generator, **kwargs):
        return pipe(num_samples=4, class_labels=[1, 2, 3, 4], generator=generator, output_type="latent",
                    **QUIET, **kwargs)

    first = draw(torch.Generator().manual_seed(0))
    assert first.seed is None
    assert torch.equal(first.images, draw(torch.Generator().manual_seed(0), batch_size=3).images)
    assert not torch.equal(first.images, draw(torch.Generator().manual_seed(1)).images)
    # one generator per sample: sample i depends on its own generator alone
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    many = draw(gens([10, 11, 12, 13])).images
    alone = pipe(class_labels=[3], generator=gens([12]), output_type="latent", **QUIET).images
    assert torch.equal(many[2:3], alone)
    assert len(pipe(generator=gens([1, 2]), output_type="latent", class_labels=5, **QUIET).images) == 2
    with pytest.raises(ValueError, match="seed or generator, not both"):
        pipe(seed=0, generator=torch.Generator(), **QUIET)
    with pytest.raises(ValueError, match="2 generators for num_samples=3"):
        pipe(num_samples=3, generator=gens([1, 2]), **QUIET)
    with pytest.raises(TypeError, match="torch.Generator"):
        pipe(generator=0, **QUIET)
    # the seed path is unchanged: sample i from seed (seed, i), whatever the batch
    seeded = pipe(num_samples=5, class_labels=[1, 2, 3, 4, 5], seed=3, batch_size=2, output_type="latent", **QUIET)
    assert torch.equal(seeded.images[3:], pipe(num_samples=5, class_labels=[1, 2, 3, 4, 5], seed=3,
                                               output_type="latent", **QUIET).images[3:])


def test_latent_output_is_the_code_grids(pipe):
    images = pipe(class_labels=[1, 2], seed=4, output_type="pt", **QUIET)
    latent = pipe(class_labels=[1, 2], seed=4, output_type="latent", **QUIET)
    assert torch.equal(latent.images, latent.codes) and torch.equal(latent.codes, images.codes)
    torch.testing.assert_close(pipe.decode_latent(latent.images), images.images)
    vae = family("vae")
    z = generate(vae, num_samples=2, seed=4, output_type="latent", **QUIET)
    assert z.images.shape == (2, *vae.latent_shape) and z.codes is None
    torch.testing.assert_close(vae.decode(z.images), generate(vae, num_samples=2, seed=4, output_type="pt", **QUIET).images)


def test_prompt_codes_are_kept(pipe):
    full = pipe(class_labels=[1, 2], seed=0, output_type="latent", **QUIET).codes
    upper = full[:, :3].flatten(1)  # the first 3 rows, in raster order
    completed = pipe(class_labels=[1, 2], prompt_codes=upper, seed=5, output_type="latent", **QUIET)
    assert torch.equal(completed.codes[:, :3], full[:, :3]) and not torch.equal(completed.codes, full)
    one_for_all = pipe(num_samples=3, prompt_codes=upper[0], seed=5, output_type="latent", **QUIET).codes
    assert all(torch.equal(c[:3], full[0, :3]) for c in one_for_all)
    assert len(pipe(prompt_codes=upper, **QUIET).images) == 2  # the batch follows the prompts
    with pytest.raises(ValueError, match="prompt_codes"):
        pipe(num_samples=3, prompt_codes=upper, **QUIET)
    with pytest.raises(ValueError, match="apply to a two-stage pipeline"):
        generate(family("vae"), prompt_codes=upper, **QUIET)


def test_the_callback_runs_once_per_code_with_its_step(pipe):
    calls = []

    def callback(called_pipe, step, timestep, callback_kwargs):
        calls.append((called_pipe, step, timestep, callback_kwargs["codes"].clone()))
        return callback_kwargs

    prompt = torch.randint(0, 16, (2, 10), generator=torch.Generator().manual_seed(0))
    out = pipe(class_labels=[3, 4], prompt_codes=prompt, seed=1, callback_on_step_end=callback, **QUIET)
    assert [(s, t) for _, s, t, _ in calls] == [(s, 10 + s) for s in range(49 - 10)]
    assert all(p is pipe for p, *_ in calls)
    assert torch.equal(calls[-1][3], out.codes.flatten(1)) and calls[0][3].shape == (2, 11)
    with pytest.raises(ValueError, match="apply to a two-stage pipeline"):
        generate(family("vae"), callback_on_step_end=callback, **QUIET)


def test_a_progress_bar_follows_the_codes_unless_turned_off(pipe, capsys):
    pipe(class_labels=[1, 2], seed=0)
    assert "codes" in capsys.readouterr().err  # a bar over the code positions
    pipe(class_labels=[1, 2], seed=0, progress=False)
    assert capsys.readouterr().err == ""


def test_the_pipeline_stays_where_it_was_put(monkeypatch):
    pipe = tiny_pipeline().to("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU in sight must not pull the pipeline there
    monkeypatch.setattr(pipe, "to", lambda *a, **k: pytest.fail(f"pipe.to{a} called with device=None"))
    assert pipe(class_labels=[1], seed=0, **QUIET).codes.shape == (1, 7, 7)
    moved = []
    monkeypatch.setattr(pipe, "to", lambda device=None, dtype=None: moved.append(device) or pipe)
    pipe(class_labels=[1], seed=0, device="cpu", **QUIET)
    assert moved == ["cpu"]


def test_float32_by_default_and_bfloat16_runs(tmp_path, pipe):
    folder = pipe.save_pretrained(tmp_path / "pipeline", sample_grid=False)
    assert TwoStagePipeline.from_pretrained(folder).dtype == torch.float32
    half = TwoStagePipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert half.dtype == next(half.tokenizer.parameters()).dtype == torch.bfloat16
    assert half.compiles() is False  # eager below float32, so a seed repeats its images
    out = half(class_labels=[1, 2], seed=0, output_type="pt", **QUIET)
    assert out.images.dtype == torch.float32 and out.images.shape == (2, 1, 28, 28) and out.codes.shape == (2, 7, 7)
    assert torch.equal(out.codes, half(class_labels=[1, 2], seed=0, output_type="latent", **QUIET).images)
    assert TwoStagePipeline.from_parts(folder / "tokenizer", folder / "prior", torch_dtype=torch.float16).dtype == torch.float16
    with pytest.raises(TypeError, match="floating torch.dtype"):
        TwoStagePipeline.from_pretrained(folder, torch_dtype=torch.int8)
