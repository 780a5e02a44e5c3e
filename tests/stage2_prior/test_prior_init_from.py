"""Starting a prior from a trained one (--init_from): the class-embedding rule, the tokenizer check, fine-tuning runs."""

import json

import pytest
import torch

from stage2_prior import TokenizerSpec, build_prior, load_prior, prior_spec
from stage2_prior.prior import retarget_prior
from stage2_prior.train import main as train_prior
from test_prior import PRIOR_ARGS, SPEC, tiny_tokenizer

K = SPEC.codebook_size
CODES = torch.randint(0, K, (4, SPEC.num_codes), generator=torch.Generator().manual_seed(0))


def trained(classes, architecture):
    torch.manual_seed(0)
    prior = build_prior(SPEC, classes, architecture=architecture, num_layers=1, hidden_size=16, num_heads=2, dropout=0.0)
    with torch.no_grad():  # every row distinct from a fresh initialisation
        for p in prior.parameters():
            p.add_(torch.randn_like(p))
    return prior.eval()


def code_logits(prior, prefix_tokens):
    ids = torch.cat([torch.tensor(prefix_tokens).view(-1, 1), CODES[: len(prefix_tokens)]], dim=1)
    with torch.no_grad():
        return prior(input_ids=ids).logits[..., :K]  # the codes' columns: what the prior predicts


def embedding(prior):
    return prior.get_input_embeddings().weight


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_the_same_classes_keep_the_prior_as_it_is(architecture):
    prior = trained(["a", "b"], architecture)
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    other = TokenizerSpec("elsewhere/tok", K, SPEC.grid_shape, SPEC.image_size, SPEC.image_channels)
    same, notice = retarget_prior(prior, other, ["a", "b"])
    assert same is prior and notice is None
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in before.items())
    assert prior_spec(same).tokenizer.name_or_path == "elsewhere/tok"  # the tokenizer it now belongs to


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_a_new_class_set_keeps_rows_by_name_and_initialises_the_new_ones(architecture):
    old = trained(["a", "b", "c"], architecture)
    new, notice = retarget_prior(old, SPEC, ["c", "a", "d"])
    assert "fresh rows for ['d']" in notice and "dropped ['b']" in notice
    ov, nv = prior_spec(old).vocabulary, prior_spec(new).vocabulary
    assert prior_spec(new).class_names == ["c", "a", "d"] and new.config.vocab_size == nv.size
    e_old, e_new = embedding(old), embedding(new)
    assert torch.equal(e_new[: K + 1], e_old[: K + 1])  # codes and the start token
    assert torch.equal(e_new[nv.class_token(0)], e_old[ov.class_token(2)])  # "c" moved
    assert torch.equal(e_new[nv.class_token(1)], e_old[ov.class_token(0)])  # "a" moved
    assert torch.equal(e_new[nv.null_token], e_old[ov.null_token])
    assert not any(torch.equal(e_new[nv.class_token(2)], row) for row in e_old)  # "d" is fresh
    # the network itself is the trained one: "c" and the null class predict the codes as before
    torch.testing.assert_close(code_logits(new, [nv.class_token(0), nv.null_token]),
                               code_logits(old, [ov.class_token(2), ov.null_token]))


def test_conditional_to_unconditional_and_back():
    old = trained(["a", "b"], "gpt2")
    unconditional, notice = retarget_prior(old, SPEC, None)
    assert "none (unconditional)" in notice and unconditional.config.vocab_size == K + 1
    # the start token takes the null class's row: the prior begins as the old one's unconditional model
    torch.testing.assert_close(code_logits(unconditional, [K] * 4), code_logits(old, [prior_spec(old).vocabulary.null_token] * 4))
    conditional, _ = retarget_prior(unconditional, SPEC, ["x"])
    vocabulary = prior_spec(conditional).vocabulary
    assert torch.equal(embedding(conditional)[: K + 1], embedding(unconditional))
    assert not torch.equal(embedding(conditional)[vocabulary.null_token], embedding(unconditional)[K])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from")
    tiny_tokenizer().save_pretrained(root / "tok")
    shape, data = PRIOR_ARGS[:6], PRIOR_ARGS[6:]  # --num_layers 1 --hidden_size 32 --num_heads 2; the rest
    common = ["--tokenizer", str(root / "tok"), "--cache_dir", str(root / "cache"), "--lr_scheduler", "constant",
              "--eval_steps", "100", "--sample_steps", "0", "--checkpointing_steps", "0", *data]
    train_prior([*common, *shape, "--output_dir", str(root / "base"), "--max_steps", "2"])
    return root, common


@pytest.mark.integration
def test_a_prior_fine_tunes_from_a_trained_one_and_resumes_from_its_folder_alone(runs, tmp_path, capsys):
    root, common = runs
    start = [*common, "--init_from", str(root / "base"), "--unconditional"]
    straight = train_prior([*start, "--output_dir", str(tmp_path / "straight"), "--max_steps", "4"])
    assert straight["steps"] == 4 and "fresh rows for []" in capsys.readouterr().out
    prior = load_prior(tmp_path / "straight")
    assert prior.config.n_layer == 1 and prior.config.n_embd == 32  # the trained prior's shape, no flag given
    assert prior_spec(prior).class_names is None and prior.config.vocab_size == K + 1
    train_prior([*start, "--output_dir", str(tmp_path / "split"), "--max_steps", "2", "--checkpointing_steps", "2"])
    train_prior(["--output_dir", str(tmp_path / "split"), "--resume_from_checkpoint", "latest", "--max_steps", "4"])
    resumed = load_prior(tmp_path / "split")
    for key, value in prior.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert json.loads((tmp_path / "split" / "run_args.json").read_text())["init_from"] == str(root / "base")


def test_init_from_refuses_shape_flags_and_another_tokenizers_prior(runs, tmp_path, capsys):
    root, common = runs
    with pytest.raises(SystemExit):
        train_prior([*common, "--init_from", str(root / "base"), "--num_layers", "3", "--output_dir", str(tmp_path)])
    assert "--num_layers: with --init_from the prior's architecture is the trained one's" in capsys.readouterr().err
    tiny_tokenizer(codebook_size=32).save_pretrained(tmp_path / "tok32")
    other = [a if a != str(root / "tok") else str(tmp_path / "tok32") for a in common]
    with pytest.raises(SystemExit, match="codebook size 32 vs 16"):
        train_prior([*other, "--init_from", str(root / "base"), "--output_dir", str(tmp_path / "x"), "--max_steps", "1"])
    with pytest.raises(SystemExit, match="--init_from"):
        train_prior([*common, "--init_from", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "y"),
                     "--max_steps", "1"])
