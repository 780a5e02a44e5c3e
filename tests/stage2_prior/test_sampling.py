"""The sampler's decoding paths and its counter-based randomness: same codes on every path, sample i
the same in any batch, no random-number call inside the token loop, draws that follow the exact
probabilities (a chi-squared test), arguments refused before any work."""

import math

import pytest
import torch

import stage2_prior.randomness as randomness
from stage2_prior import TokenizerSpec, build_prior, sample_codes
from stage2_prior.token_choice import blocked_cumsum, draw, filter_logits

SPEC = TokenizerSpec("t", codebook_size=32, grid_shape=(3, 3), image_size=12, image_channels=1,
                     class_names=["a", "b", "c"])


def tiny_prior(architecture: str = "gpt2"):
    torch.manual_seed(0)
    return build_prior(SPEC, SPEC.class_names, architecture=architecture, num_layers=2, hidden_size=32,
                       num_heads=2, dropout=0.0).eval()


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_every_decoding_path_gives_the_same_codes(architecture, guidance_scale):
    prior = tiny_prior(architecture)
    common = dict(class_labels=[0, 1, 2, 0, 1, 2, 0], guidance_scale=guidance_scale, top_k=20, top_p=0.9)
    runs = [sample_codes(prior, 7, generator=torch.Generator().manual_seed(4), cache_implementation=cache, **common)
            for cache in ("preallocated", "dynamic", "static")]
    runs.append(sample_codes(prior, 7, generator=torch.Generator().manual_seed(4), use_cache=False, **common))
    for other in runs[1:]:
        assert torch.equal(runs[0], other)


def test_sample_i_is_the_same_in_batches_of_1_7_and_64():
    prior = tiny_prior()
    labels = torch.arange(64) % 3
    gens = lambda idx: [torch.Generator().manual_seed(1000 + i) for i in idx]  # noqa: E731
    full = sample_codes(prior, 64, class_labels=labels, generator=gens(range(64)), guidance_scale=2.0)
    seven = sample_codes(prior, 7, class_labels=labels[10:17], generator=gens(range(10, 17)), guidance_scale=2.0)
    one = sample_codes(prior, 1, class_labels=labels[40:41], generator=gens([40]), guidance_scale=2.0)
    assert torch.equal(full[10:17], seven) and torch.equal(full[40:41], one)
    assert len({tuple(c.flatten().tolist()) for c in full}) > 32  # and the samples differ from one another


@pytest.mark.parametrize("cache", ["preallocated", "dynamic", "static"])
def test_the_callback_sees_every_drawn_code_once_in_order(cache):
    prior, seen = tiny_prior(), []

    def callback(position, codes):
        seen.append((position, codes.clone()))

    kept = torch.tensor([[5, 6], [7, 8]])
    codes = sample_codes(prior, 2, class_labels=[0, 1], guidance_scale=2.0, prompt_codes=kept, callback=callback,
                         cache_implementation=cache, generator=torch.Generator().manual_seed(3))
    assert [p for p, _ in seen] == list(range(2, 9))  # the prompt's codes are kept, not drawn
    for position, so_far in seen:
        assert torch.equal(so_far, codes.flatten(1)[:, : position + 1])
    plain = sample_codes(prior, 2, class_labels=[0, 1], guidance_scale=2.0, prompt_codes=kept,
                         cache_implementation=cache, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, codes)  # watching changes nothing


@pytest.mark.parametrize("num_samples", [1, 16])
def test_no_random_number_call_inside_the_token_loop(monkeypatch, num_samples):
    calls = []
    for name in ("rand", "randn", "randint", "multinomial", "bernoulli"):
        original = getattr(torch, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, counting)
    prior = tiny_prior()
    sample_codes(prior, num_samples, generator=torch.Generator().manual_seed(0))
    assert calls == ["randint"]  # the keys, once, for 9 tokens and any batch size
    calls.clear()
    sample_codes(prior, num_samples, generator=[torch.Generator().manual_seed(i) for i in range(num_samples)])
    assert calls == ["randint"] * num_samples  # one key per sample, still none per token


def _chi2_critical(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty: the chi-squared quantile at the normal quantile z (3.09: p = 0.001)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, None), (0.7, 4, None), (1.3, None, 0.8),
                                                       (1.0, 5, 0.9)])
def test_draws_follow_the_exact_filtered_probabilities(temperature, top_k, top_p):  # one block of the CDF
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0]])
    filtered = filter_logits(logits, temperature, top_k, top_p)
    probs = filtered.softmax(-1)[0].double()
    n = 40_000
    keys = randomness.sample_keys(n, torch.Generator().manual_seed(123))
    tokens = draw(filtered.expand(n, -1), keys, position=5)
    counts = torch.bincount(tokens, minlength=8).double()
    assert counts[probs == 0].sum() == 0  # never a filtered-out token
    kept = probs > 0
    expected = n * probs[kept]
    chi2 = ((counts[kept] - expected) ** 2 / expected).sum().item()
    assert chi2 < _chi2_critical(int(kept.sum()) - 1), (counts, expected)


@pytest.mark.parametrize("v", [1, 5, 127, 128, 129, 300, 16384, 16385 + 128 * 128])
def test_the_blocked_cumsum_is_the_cumsum(v):
    x = torch.rand(3, v, generator=torch.Generator().manual_seed(v))
    assert torch.allclose(blocked_cumsum(x).double(), x.double().cumsum(-1), rtol=1e-5, atol=1e-6)


def test_draws_over_several_cdf_blocks_follow_the_probabilities_and_skip_impossible_tokens():
    # 300 tokens: three blocks of the CDF, with filtered-out tokens on both sides of each boundary
    v = 300
    logits = torch.linspace(1.5, -1.5, v)[None]
    impossible = torch.tensor([0, 126, 127, 128, 129, 255, 256, 257, 299])
    logits[0, impossible] = float("-inf")
    probs = logits.softmax(-1)[0].double()
    n = 200_000
    keys = randomness.sample_keys(n, torch.Generator().manual_seed(11))
    counts = torch.bincount(draw(logits.expand(n, -1), keys, position=3), minlength=v).double()
    assert counts[impossible].sum() == 0
    # grouped into 10 bins of 30 tokens, so every bin expects thousands of draws
    observed, expected = counts.view(10, 30).sum(1), (n * probs).view(10, 30).sum(1)
    assert ((observed - expected) ** 2 / expected).sum().item() < _chi2_critical(9), (observed, expected)


def test_uniforms_are_uniform_and_independent_across_positions():
    keys = randomness.sample_keys(50_000, torch.Generator().manual_seed(7))
    u, v = randomness.uniforms(keys, 0), randomness.uniforms(keys, 1)
    assert 0 <= u.min() and u.max() < 1
    counts = torch.histc(u, 20, 0, 1).double()
    assert ((counts - 2500) ** 2 / 2500).sum() < _chi2_critical(19)
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1]) < 0.02


@pytest.mark.parametrize("bad", [dict(temperature=math.inf), dict(temperature=math.nan), dict(top_k=2.5),
                                 dict(top_k=True), dict(top_p=math.nan), dict(guidance_scale=math.inf),
                                 dict(guidance_scale=math.nan), dict(cache_implementation="paged"),
                                 dict(class_labels=[0.5, 1.0]), dict(compile=True, cache_implementation="dynamic"),
                                 dict(compile=True, use_cache=False)])
def test_bad_arguments_are_refused_before_any_work(bad, monkeypatch):
    prior = tiny_prior()
    monkeypatch.setattr(prior, "forward", lambda *a, **k: pytest.fail("the prior ran"))
    kwargs = {"class_labels": [0, 1], **bad}
    with pytest.raises(ValueError):
        sample_codes(prior, 2, **kwargs)
    with pytest.raises(ValueError):
        sample_codes(prior, 2.0)
    with pytest.raises(TypeError):
        sample_codes(prior, 2, compile=1)  # an int is not a decision to compile


@pytest.mark.integration
@pytest.mark.parametrize("architecture", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_the_compiled_static_path_gives_the_same_codes_through_one_graph(architecture):
    from torch._dynamo.utils import counters

    prior = tiny_prior(architecture)
    common = dict(class_labels=[0, 1, 2, 0], guidance_scale=2.0, top_k=20, top_p=0.9)
    eager = sample_codes(prior, 4, generator=torch.Generator().manual_seed(1), cache_implementation="static", **common)
    before = counters["stats"]["unique_graphs"]
    # twice: the second call reuses the compiled step and the emptied cache of the first
    for _ in range(2):
        compiled = sample_codes(prior, 4, generator=torch.Generator().manual_seed(1), cache_implementation="static",
                                compile=True, **common)
        assert torch.equal(eager, compiled)
    assert counters["stats"]["unique_graphs"] - before == 1  # every position's step, both runs: one graph
    other = sample_codes(prior, 4, generator=torch.Generator().manual_seed(2), cache_implementation="static",
                         compile=True, **common)
    assert not torch.equal(other, compiled)  # a new seed is not served stale codes
    # completing a prompt: prefilled eagerly, then the same compiled step
    prompt = eager.flatten(1)[:, :3]
    seen = []  # the callback runs outside the compiled step: no graph break, no new graph
    completed = [sample_codes(prior, 4, cache_implementation="static", prompt_codes=prompt, compile=compile,
                              generator=torch.Generator().manual_seed(7),
                              callback=lambda position, codes: seen.append((compile, position)), **common)
                 for compile in (False, True)]
    assert torch.equal(*completed) and torch.equal(completed[1].flatten(1)[:, :3], prompt)
    assert counters["stats"]["unique_graphs"] - before == 1
    assert seen == [(c, p) for c in (False, True) for p in range(3, 9)]


@pytest.mark.integration
def test_two_priors_of_the_same_shapes_never_share_a_compiled_step(recwarn):
    # the step is not guarded on the prior's module structure: each prior must compile its own, and count its own
    # recompiles (dynamo's limit, here 1, would otherwise silently turn the second prior's step eager)
    priors = [build_prior(SPEC, SPEC.class_names, num_layers=1, hidden_size=32, num_heads=2).eval() for _ in "ab"]
    with torch.no_grad():  # weights far from their init, so that the activation moves the codes
        for weight in priors[0].parameters():
            weight.normal_(0, 1 if weight.ndim > 1 else 0.1)
    priors[1].load_state_dict(priors[0].state_dict())
    priors[1].transformer.h[0].mlp.act = torch.nn.ReLU()  # the same weights and shapes, another activation
    common = dict(class_labels=[0, 1, 2], top_k=20)
    eager = [sample_codes(prior, 3, generator=torch.Generator().manual_seed(3), **common) for prior in priors]
    assert not torch.equal(*eager)
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for prior, codes in zip(priors, eager):
            compiled = sample_codes(prior, 3, generator=torch.Generator().manual_seed(3), cache_implementation="static",
                                    compile=True, **common)
            assert torch.equal(compiled, codes)
    assert not [warning for warning in recwarn if issubclass(warning.category, RuntimeWarning)]


@pytest.mark.integration
def test_the_compiled_step_follows_the_prior_into_training_mode():
    # the step keeps its guards on the modules' `training` flags: a step traced in eval mode (no dropout) must not
    # serve a prior in train mode
    from torch._dynamo.utils import counters

    prior = build_prior(SPEC, SPEC.class_names, num_layers=1, hidden_size=32, num_heads=2, dropout=0.5).eval()

    def graphs_compiled_by_sampling():
        before = counters["stats"]["unique_graphs"]
        sample_codes(prior, 3, class_labels=[0, 1, 2], cache_implementation="static", compile=True)
        return counters["stats"]["unique_graphs"] - before

    graphs_compiled_by_sampling()
    assert graphs_compiled_by_sampling() == 0  # the counter counts: an unchanged prior reuses its step
    prior.train()
    assert graphs_compiled_by_sampling() > 0
    prior.eval()
    assert graphs_compiled_by_sampling() == 0


@pytest.mark.slow
@pytest.mark.integration
def test_a_step_that_fails_to_compile_falls_back_to_the_compiled_forward_pass(monkeypatch):
    from stage2_prior.decoding import compiled_step

    prior = tiny_prior()
    common = dict(class_labels=[0, 1, 2], top_k=20)
    eager = sample_codes(prior, 3, generator=torch.Generator().manual_seed(5), cache_implementation="static", **common)
    step = compiled_step(prior)
    monkeypatch.setattr(step, "fused", lambda *args: (_ for _ in ()).throw(RuntimeError("lowering failed")))
    with pytest.warns(RuntimeWarning, match="lowering failed"):
        compiled = sample_codes(prior, 3, generator=torch.Generator().manual_seed(5), cache_implementation="static",
                                compile=True, **common)
    assert torch.equal(eager, compiled) and step.unfusable == {3}
