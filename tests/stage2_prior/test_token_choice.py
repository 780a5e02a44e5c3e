"""The token choice's formulas pinned by their direction and their edges, on logits made by hand: guidance moves
draws towards the class (uncond + s * (cond - uncond), conditional rows first), top-k keeps exactly k, top-p keeps
the smallest set that reaches p, the inverse-CDF draw gives each token exactly its interval. Each test was checked
by breaking its formula on purpose and seeing it fail."""

import pytest
import torch

import stage2_prior.token_choice as token_choice
from stage2_prior import TokenizerSpec, build_prior, prior_spec, sample_codes
from stage2_prior.randomness import sample_keys
from stage2_prior.token_choice import TokenChoice, draw, filter_logits
from vqgen.sampling_settings import SamplingSettings

# what class c's rows prefer: code c (here c = 0); the unconditional rows are flat
COND = torch.tensor([2.0, 0.0, 0.0, 0.0])
UNCOND = torch.zeros(4)


def guided_choice(scale: float, n: int = 4000) -> torch.Tensor:
    """`n` draws of one step with guidance `scale`: the conditional rows, then their unconditional twins (none at
    s = 1, where `sample_codes` runs no unconditional rows)."""
    logits = torch.cat([COND.expand(n, -1)] + ([UNCOND.expand(n, -1)] if scale != 1.0 else []))
    keys = sample_keys(n, torch.Generator().manual_seed(0))
    return TokenChoice(4, SamplingSettings(guidance_scale=scale))(logits, keys, 0)


def test_guidance_moves_draws_towards_the_class():
    shares = [(guided_choice(scale) == 0).float().mean().item() for scale in (0.0, 1.0, 1.5, 3.0, 6.0)]
    assert abs(shares[0] - 0.25) < 0.03  # s = 0: the unconditional distribution, flat over 4 codes
    assert abs(shares[1] - 0.711) < 0.03  # s = 1: the conditional one, e^2 / (e^2 + 3)
    assert all(a < b for a, b in zip(shares, shares[1:])), shares  # the class's code gains with every step of s
    assert shares[-1] > 0.99


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.5])
def test_guidance_is_uncond_plus_scale_times_the_difference(monkeypatch, scale):
    seen = []
    monkeypatch.setattr(token_choice, "filter_logits", lambda logits, *args: seen.append(logits) or logits)
    cond, uncond = torch.randn(2, 1, 6, generator=torch.Generator().manual_seed(1))
    special = torch.full((2, 2), 50.0)  # the special tokens' logits, never sampled nor combined
    logits = torch.cat([torch.cat([cond, uncond]), special], dim=1)
    TokenChoice(6, SamplingSettings(guidance_scale=scale))(logits, sample_keys(1, torch.Generator()), 0)
    torch.testing.assert_close(seen[0], uncond + scale * (cond - uncond), rtol=0, atol=1e-6)


def test_guided_greedy_samples_follow_the_formula_through_the_prior():
    # top_k=1 makes every draw the argmax of the guided logits: recompute them by teacher forcing, with the class
    # prefix and with the null class, and check each sampled code (the halves' order in the batch included)
    spec = TokenizerSpec("t", codebook_size=16, grid_shape=(3, 3), image_size=12, image_channels=1)
    torch.manual_seed(0)
    prior = build_prior(spec, ["a", "b", "c"], num_layers=2, hidden_size=32, num_heads=2, dropout=0.0).eval()
    labels, scale = torch.tensor([0, 1, 2, 1]), 3.0
    codes = sample_codes(prior, 4, class_labels=labels, guidance_scale=scale, top_k=1,
                         generator=torch.Generator().manual_seed(0)).flatten(1)
    vocab = prior_spec(prior).vocabulary
    with torch.no_grad():  # the logits before each code, of the class prefix and of the null class
        cond, uncond = (prior(input_ids=vocab.sequences(codes, prefix)).logits[:, :-1, : spec.codebook_size]
                        for prefix in (labels, None))
    guided = uncond + scale * (cond - uncond)
    assert torch.equal(guided.argmax(-1), codes)
    assert not torch.equal(cond.argmax(-1), codes)  # guidance did change some choice: the check has teeth


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_top_k_keeps_exactly_the_k_largest(k):
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.5, 0.0, -0.5, 1.0, 0.7]])
    kept = torch.isfinite(filter_logits(logits, top_k=k))[0]
    assert kept.sum() == k
    assert set(kept.nonzero().flatten().tolist()) == set(logits[0].argsort(descending=True)[:k].tolist())


def test_top_k_keeps_every_logit_tied_with_the_kth():
    logits = torch.tensor([[3.0, 1.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=3)).tolist() == [[True, True, True, True, False]]


# probabilities 1/2, 1/4, 1/8, 1/8 (exact in float32): the nucleus is the smallest set of the most likely
# tokens whose mass reaches p, so it includes the token that crosses p and nothing after it
NUCLEUS_LOGITS = torch.tensor([[0.125, 0.5, 0.125, 0.25]]).log()  # unsorted: the order is the filter's job


@pytest.mark.parametrize("top_p, kept", [
    (0.3, [1]), (0.5, [1]), (0.6, [1, 3]), (0.75, [1, 3]), (0.8, [0, 1, 3]), (0.875, [0, 1, 3]), (0.9, [0, 1, 2, 3]),
    (1e-9, [1]), (1e-50, [1]),  # the most likely token always stays, also where p rounds to 0 in float32
])
def test_top_p_keeps_the_smallest_set_that_reaches_p(top_p, kept):
    assert NUCLEUS_LOGITS.softmax(-1).tolist() == [[0.125, 0.5, 0.125, 0.25]]  # exact, so p's edges are exact
    finite = torch.isfinite(filter_logits(NUCLEUS_LOGITS, top_p=top_p))[0]
    assert finite.nonzero().flatten().tolist() == kept


def test_filters_keep_the_survivors_logits_scaled_by_the_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    out = filter_logits(logits, temperature=0.5, top_k=2)
    assert out[0, :2].tolist() == [4.0, 2.0] and torch.isneginf(out[0, 2:]).all()


@pytest.mark.parametrize("u, token", [
    (0.0, 0), (0.2499, 0), (0.25, 2), (0.4999, 2), (0.5, 3), (0.7, 3), (0.9999, 3),
])
def test_the_draw_gives_each_token_its_cdf_interval(monkeypatch, u, token):
    # probabilities 1/4, 0, 1/4, 1/2: token 0 owns [0, 1/4), token 1 nothing, token 2 [1/4, 1/2), token 3 [1/2, 1)
    monkeypatch.setattr(token_choice, "uniforms", lambda keys, position: torch.full((keys.shape[0],), u))
    logits = torch.tensor([[0.25, 0.0, 0.25, 0.5]]).log()
    assert draw(logits, torch.zeros(1, dtype=torch.long), 0).item() == token


def test_the_draw_never_lands_on_a_zero_probability_token_where_the_cdf_rounds_up(monkeypatch):
    # a CDF summed in blocks can step up at a token of zero probability (rounding at a block boundary): a threshold
    # inside that step still draws the next possible token
    def rounded_cumsum(probs):
        return probs.cumsum(-1) + torch.tensor([0.0, 1e-3, 0.0, 0.0])  # token 1 (probability 0) "rounds up"

    monkeypatch.setattr(token_choice, "blocked_cumsum", rounded_cumsum)
    monkeypatch.setattr(token_choice, "uniforms", lambda keys, position: torch.full((keys.shape[0],), 0.2505))
    logits = torch.tensor([[0.25, 0.0, 0.25, 0.5]]).log()
    assert draw(logits, torch.zeros(1, dtype=torch.long), 0).item() == 2


def test_the_draw_at_the_total_mass_takes_the_last_possible_token(monkeypatch):
    # u rounded up to the total (u * total == total) draws the last token of positive probability, not token 0
    monkeypatch.setattr(token_choice, "uniforms", lambda keys, position: torch.ones(keys.shape[0]))
    logits = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).log()
    assert draw(logits, torch.zeros(1, dtype=torch.long), 0).item() == 1
