"""Stage 2: causal masking, the prefix layout, overfitting, the code cache, mismatch errors, sampling."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stage1_tokenizer import VQVAE
from vqgen.data import image_tensors
from stage2_prior import (PriorVocabulary, TokenizerSpec, build_prior, check_compatible, encode_dataset, load_prior,
                          sample_codes, save_prior)
from stage2_prior.train import drop_labels, main as train_prior
from two_processes import launch_two_cpu_processes

ROOT = Path(__file__).resolve().parents[2]
SPEC = TokenizerSpec("tiny-tokenizer", codebook_size=16, grid_shape=(3, 3), image_size=12, image_channels=1)
CLASSES = ["a", "b", "c"]


def tiny_prior(classes=CLASSES, architecture="gpt2", dropout=0.0):
    torch.manual_seed(0)
    return build_prior(SPEC, classes, architecture=architecture, num_layers=2, hidden_size=32, num_heads=2,
                       dropout=dropout).eval()


def tiny_tokenizer(codebook_size=16, seed=0):
    torch.manual_seed(seed)
    tok = VQVAE(codebook_size=codebook_size, code_dim=4, channels=8, num_res_blocks=1)
    tok.train()
    tok(torch.rand(32, 1, 28, 28))  # initialise the codebook from data
    return tok.eval()


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_logits_at_t_do_not_see_later_tokens(architecture):
    prior = tiny_prior(architecture=architecture)
    ids = torch.randint(0, 16, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(0, 16, (2, 4))
    with torch.no_grad():
        a, b = prior(input_ids=ids).logits, prior(input_ids=changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_vocabulary_layout_and_prefixes():
    vocab = PriorVocabulary(codebook_size=16, num_classes=3)
    assert (vocab.start_token, vocab.class_token(0), vocab.class_token(2), vocab.null_token, vocab.size) == (16, 17, 19, 20, 21)
    assert vocab.prefix(torch.tensor([0, 2, -1]), 3).flatten().tolist() == [17, 19, 20]
    assert vocab.prefix(None, 2).flatten().tolist() == [20, 20]  # no labels on a conditional prior: null class
    unconditional = PriorVocabulary(16)
    assert unconditional.size == 17 and unconditional.prefix(None, 1).item() == 16
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        vocab.prefix(torch.tensor([3]), 1)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.prefix(torch.tensor([0]), 1)
    codes, labels = torch.randint(0, 16, (1000, 9)), torch.randint(0, 3, (1000,))
    ids = vocab.sequences(codes, labels)
    assert torch.equal(ids[:, 1:], codes) and torch.equal(ids[:, 0], labels + 17)
    assert torch.equal(vocab.sequences(codes.view(1000, 3, 3), labels), ids)  # `b h w` grids flatten in raster order
    assert vocab.sequences(codes[:2, :0], None).flatten().tolist() == [20, 20]  # no codes: the prefix alone
    assert torch.equal(unconditional.sequences(codes)[:, 0], torch.full((1000,), 16))
    with pytest.raises(ValueError, match="2 class labels for 3"):
        vocab.sequences(codes[:3], labels[:2])
    dropped = vocab.sequences(codes, drop_labels(labels, 0.3, generator=torch.Generator().manual_seed(0)))
    share = (dropped[:, 0] == vocab.null_token).float().mean().item()
    assert 0.25 < share < 0.35
    assert (vocab.sequences(codes, drop_labels(labels, 0.999))[:, 0] == vocab.null_token).float().mean() > 0.99


def test_a_tiny_prior_overfits_a_handful_of_sequences():
    prior = tiny_prior().train()
    vocab = PriorVocabulary(16, 3)
    torch.manual_seed(1)
    ids = vocab.sequences(torch.randint(0, 16, (4, 9)), torch.tensor([0, 1, 2, 0]))
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(150):
        loss = prior(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    prior.eval()
    with torch.no_grad():
        final = prior(input_ids=ids, labels=ids).loss.item()
    assert final < 0.2 * math.log(16), f"nats/token {final:.3f} vs log K = {math.log(16):.3f}"


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_same_seed_same_codes_with_and_without_cache_and_across_batches(architecture):
    prior = tiny_prior(architecture=architecture)
    kwargs = dict(class_labels=[0, 1, 2, 1], guidance_scale=2.0, top_k=10, top_p=0.9, temperature=0.8)
    a = sample_codes(prior, 4, generator=torch.Generator().manual_seed(0), **kwargs)
    b = sample_codes(prior, 4, generator=torch.Generator().manual_seed(0), use_cache=False, **kwargs)
    assert a.shape == (4, 3, 3) and a.dtype == torch.long and 0 <= a.min() and a.max() < 16
    assert torch.equal(a, b)
    prompt = a[:, 0, :2].reshape(4, 2)
    c = sample_codes(prior, 4, generator=torch.Generator().manual_seed(1), prompt_codes=prompt, **kwargs)
    d = sample_codes(prior, 4, generator=torch.Generator().manual_seed(1), prompt_codes=prompt, use_cache=False, **kwargs)
    assert torch.equal(c, d) and torch.equal(c.flatten(1)[:, :2], prompt)
    # one generator per sample: sample i is the same drawn alone or in a batch
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    batch = sample_codes(prior, 3, class_labels=[0, 1, 2], generator=gens)
    alone = sample_codes(prior, 1, class_labels=[2], generator=[torch.Generator().manual_seed(102)])
    assert torch.equal(batch[2:], alone)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_sampling_uses_the_current_cache_api_without_deprecation_warnings(architecture):
    prior = tiny_prior(architecture=architecture)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample_codes(prior, 2, class_labels=[0, 1], guidance_scale=2.0, prompt_codes=torch.tensor([[1], [2]]))
        sample_codes(prior, 2, use_cache=False)
    deprecations = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not deprecations, [f"{w.filename}:{w.lineno}: {w.message}" for w in deprecations]


def test_top_k_one_is_greedy_and_guidance_changes_samples():
    prior = tiny_prior()
    greedy = sample_codes(prior, 2, class_labels=[0, 0], top_k=1, generator=torch.Generator().manual_seed(0))
    again = sample_codes(prior, 2, class_labels=[0, 0], top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy, again) and torch.equal(greedy[0], greedy[1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_samples=0), "num_samples"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=17), "top_k"),
    (dict(class_labels=[5, 0]), r"class label 5 is out of range: this 3-class prior takes 0..2"),
])
def test_bad_sampling_arguments_are_refused(kwargs, match):
    args = {"num_samples": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_codes(tiny_prior(), args.pop("num_samples"), **args)


def test_guidance_on_an_unconditional_prior_is_refused():
    with pytest.raises(ValueError, match="class-conditional"):
        sample_codes(tiny_prior(classes=None), 2, guidance_scale=3.0)


def test_code_cache_is_reused_and_never_stale(tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    first = encode_dataset(tok, "embedded", "test", cache_dir=tmp_path, max_samples=20)
    assert len(first) == 20 and len(first[0]["codes"]) == 49 and "label" in first.features
    images, _ = image_tensors("embedded", "test", max_samples=2)
    assert torch.equal(torch.tensor(first["codes"][:2]), tok.tokenize(images).flatten(1))
    import stage2_prior.codes as codes_module
    monkeypatch.setattr(codes_module, "load_image_dataset", lambda *a, **k: pytest.fail("cache was not reused"))
    again = encode_dataset(tok, "embedded", "test", cache_dir=tmp_path, max_samples=20)
    assert again["codes"] == first["codes"]
    monkeypatch.undo()
    other = tiny_tokenizer(seed=1)  # other weights: other codes, other cache entry
    fresh = encode_dataset(other, "embedded", "test", cache_dir=tmp_path, max_samples=20)
    assert len(list(tmp_path.iterdir())) == 2 and fresh["codes"] != first["codes"]


def test_code_cache_is_written_as_shards_and_views_add_sequences(tmp_path):
    tok = tiny_tokenizer()
    center = encode_dataset(tok, "embedded", "test", cache_dir=tmp_path, max_samples=6)
    flips = encode_dataset(tok, "embedded", "test", cache_dir=tmp_path, max_samples=6, views="flip", batch_size=4)
    crops = encode_dataset(tok, "embedded", "test", cache_dir=tmp_path, max_samples=6, views="ten_crop")
    assert (len(center), len(flips), len(crops)) == (6, 12, 60)
    images, labels = image_tensors("embedded", "test", max_samples=6)
    # view-major within each batch (of 4, then 2): originals, then their mirror images
    assert flips["codes"][:4] == center["codes"][:4] and flips["label"][:8] == labels[:4].tolist() * 2
    assert torch.equal(torch.tensor(flips["codes"][4:8]), tok.tokenize(images[:4].flip(-1)).flatten(1))
    assert set(crops["label"]) == set(labels.tolist())
    assert all((tmp_path / p.name / "shards.json").is_file() for p in tmp_path.iterdir())


def test_tokenizer_prior_mismatch_is_a_clear_error(tmp_path):
    tok = tiny_tokenizer(codebook_size=16)
    prior = build_prior(TokenizerSpec.from_tokenizer(tok, "tok"), CLASSES, num_layers=1, hidden_size=16, num_heads=2)
    assert check_compatible(prior, tok).tokenizer.codebook_size == 16
    with pytest.raises(ValueError, match="codebook size 32 vs 16"):
        check_compatible(prior, tiny_tokenizer(codebook_size=32))
    save_prior(prior, tmp_path)
    loaded = load_prior(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vqgen"]["tokenizer"]["codebook_size"] == 16
    assert loaded.config.vqgen["class_names"] == CLASSES and (tmp_path / "README.md").is_file()
    for key, value in prior.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_loading_a_plain_lm_as_a_prior_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=1)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vqgen"):
        load_prior(tmp_path)


PRIOR_ARGS = ["--num_layers", "1", "--hidden_size", "32", "--num_heads", "2", "--batch_size", "8",
              "--max_train_samples", "64", "--max_eval_samples", "32", "--eval_batch_size", "16", "--warmup_steps", "0"]


@pytest.mark.parametrize("ema", [[], ["--use_ema", "--ema_max_decay", "0.9"]], ids=["raw", "ema"])
def test_prior_training_resumes_to_the_same_weights(tmp_path, ema):
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    common = ["--tokenizer", str(tmp_path / "tok"), "--cache_dir", str(tmp_path / "cache"), "--lr_scheduler", "constant",
              "--eval_steps", "100", "--sample_steps", "0", *ema, *PRIOR_ARGS]
    train_prior([*common, "--output_dir", str(tmp_path / "a"), "--max_steps", "6", "--checkpointing_steps", "0"])
    train_prior([*common, "--output_dir", str(tmp_path / "b"), "--max_steps", "3", "--checkpointing_steps", "3"])
    summary = train_prior([*common, "--output_dir", str(tmp_path / "b"), "--max_steps", "6",
                           "--checkpointing_steps", "6", "--resume_from_checkpoint", "latest"])
    assert summary["steps"] == 6 and summary["test/bits_per_pixel_dim"] > 0
    a, b = load_prior(tmp_path / "a"), load_prior(tmp_path / "b")
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    if ema:  # the saved prior is the average; the checkpoint keeps the weights it was taken from
        checkpoint = tmp_path / "b" / "checkpoints" / "checkpoint-6"
        averaged, raw = load_file(checkpoint / "ema.safetensors"), load_file(checkpoint / "model.safetensors")
        assert averaged and all(torch.equal(b.state_dict()[key], averaged[key]) for key in averaged)
        assert averaged.keys() <= raw.keys() and not any(torch.equal(raw[key], averaged[key]) for key in averaged)


@pytest.mark.integration
def test_prior_training_under_two_cpu_processes(tmp_path):
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    result = launch_two_cpu_processes(
        "stage2_prior.train", "--tokenizer", str(tmp_path / "tok"), "--output_dir", str(tmp_path / "prior"),
        "--cache_dir", str(tmp_path / "cache"), "--max_steps", "4", "--eval_steps", "2", "--sample_steps", "4",
        "--checkpointing_steps", "2", *PRIOR_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "prior" / "training_summary.json").read_text())
    assert summary["processes_seen"] == 2
    prior = load_prior(tmp_path / "prior")
    assert check_compatible(prior, tok).vocabulary.num_classes == 10
    assert (tmp_path / "prior" / "samples.png").is_file()
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and test codes, written once
