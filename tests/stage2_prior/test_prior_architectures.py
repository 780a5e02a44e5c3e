"""The prior-architecture registry: every registered architecture, and one added by a test, meets the contract."""

import pytest
import torch
from transformers import LlamaConfig

from stage2_prior import (ARCHITECTURES, PriorSettings, PriorVocabulary, TokenizerSpec, build_prior, load_prior,
                          register_architecture, sample_codes, save_prior)

SPEC = TokenizerSpec("tiny-tokenizer", codebook_size=16, grid_shape=(3, 3), image_size=12, image_channels=1)
CLASSES = ["a", "b", "c"]
TOY = "toy-llama-gqa"


def toy_llama_gqa(settings: PriorSettings) -> LlamaConfig:
    """Llama with grouped-query attention (one key/value head) and an untied head: not a built-in name."""
    return LlamaConfig(hidden_size=settings.hidden_size, intermediate_size=2 * settings.hidden_size,
                       num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
                       num_key_value_heads=1, max_position_embeddings=settings.sequence_length,
                       tie_word_embeddings=False, attention_dropout=settings.dropout, **settings.config_fields())


@pytest.fixture
def toy_architecture():
    register_architecture(TOY)(toy_llama_gqa)
    yield TOY
    del ARCHITECTURES[TOY]


def test_adding_an_architecture_is_one_builder(toy_architecture):
    from stage2_prior.train import parse_args

    assert ARCHITECTURES[toy_architecture] is toy_llama_gqa
    assert parse_args(["--tokenizer", "t", "--architecture", toy_architecture]).architecture == toy_architecture
    with pytest.raises(ValueError, match="already registered"):
        register_architecture(toy_architecture)(toy_llama_gqa)


@pytest.mark.parametrize("architecture", [*sorted(ARCHITECTURES), TOY])
def test_every_architecture_meets_the_contract(architecture, toy_architecture, tmp_path):
    torch.manual_seed(0)
    prior = build_prior(SPEC, CLASSES, architecture=architecture, num_layers=2, hidden_size=32, num_heads=4, dropout=0.0)
    vocab = PriorVocabulary(16, len(CLASSES))
    assert prior.config.vocab_size == vocab.size and prior.config.vqgen["vocabulary"] == vocab.to_dict()

    # causal: changing tokens from position 6 on leaves the logits before it alone
    ids = torch.randint(0, vocab.size, (2, 10))
    changed = torch.cat([ids[:, :6], (ids[:, 6:] + 1) % vocab.size], dim=1)
    with torch.no_grad():
        before, after = prior.eval()(input_ids=ids).logits, prior(input_ids=changed).logits
    assert before.shape == (2, 10, vocab.size)
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])

    # trains: the next-token loss of a fixed batch falls
    ids = vocab.sequences(torch.randint(0, 16, (4, 3, 3)), torch.tensor([0, 1, 2, -1]))
    optimizer = torch.optim.AdamW(prior.train().parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = prior(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    # samples through the cache API exactly as without it
    prior.eval()
    kwargs = dict(class_labels=[0, 1, 2], guidance_scale=2.0, top_k=8)
    codes = sample_codes(prior, 3, generator=torch.Generator().manual_seed(0), **kwargs)
    uncached = sample_codes(prior, 3, generator=torch.Generator().manual_seed(0), use_cache=False, **kwargs)
    assert codes.shape == (3, 3, 3) and torch.equal(codes, uncached)

    # round-trips through save_prior / load_prior (safetensors, AutoModelForCausalLM)
    save_prior(prior, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = load_prior(tmp_path)
    assert loaded.config.model_type == prior.config.model_type
    for key, value in prior.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert torch.equal(sample_codes(loaded, 3, generator=torch.Generator().manual_seed(0), **kwargs), codes)


def test_an_unknown_architecture_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown prior architecture 'mamba'; registered: gpt2, llama"):
        build_prior(SPEC, architecture="mamba")


def test_an_architecture_that_drops_the_vqgen_section_is_refused():
    @register_architecture("forgetful")
    def forgetful(settings: PriorSettings) -> LlamaConfig:
        return LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           vocab_size=settings.vocab_size)

    try:
        with pytest.raises(TypeError, match=r"'forgetful' does not keep \['bos_token_id', 'eos_token_id', 'vqgen'\]"):
            build_prior(SPEC, architecture="forgetful")
    finally:
        del ARCHITECTURES["forgetful"]
