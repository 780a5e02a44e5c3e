"""A causal LM from `transformers`, built from scratch over a tokenizer's code sequences.

The prior's `config.json` carries a `vqgen` section: the tokenizer it was trained on (path or Hub
id, codebook size, grid shape, image geometry), the class names and the vocabulary layout. That is
all the prior knows of stage 1; `check_compatible` compares it with a tokenizer before any work.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from .architectures import PriorSettings, architecture_config
from .vocabulary import PriorVocabulary

PRIOR_FORMAT_VERSION = 1


@dataclass
class TokenizerSpec:
    """What the prior needs to know about its tokenizer, read from the tokenizer's config."""

    name_or_path: str
    codebook_size: int
    grid_shape: tuple[int, int]
    image_size: int
    image_channels: int
    class_names: list[str] | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, name_or_path: str) -> TokenizerSpec:
        config = tokenizer.config
        if not hasattr(config, "codebook_size"):
            raise TypeError(
                f"{type(tokenizer).__name__} is not a discrete tokenizer (no codebook): a prior needs a VQ-VAE."
            )
        return cls(
            name_or_path=str(name_or_path),
            codebook_size=config.codebook_size,
            grid_shape=(config.latent_size, config.latent_size),
            image_size=config.image_size,
            image_channels=config.image_channels,
            class_names=config.class_names,
        )

    @property
    def num_codes(self) -> int:
        """Codes per image, h * w."""
        return self.grid_shape[0] * self.grid_shape[1]


@dataclass
class PriorSpec:
    """The `vqgen` section of a prior's config.json."""

    tokenizer: TokenizerSpec
    vocabulary: PriorVocabulary
    class_names: list[str] | None = None
    format_version: int = PRIOR_FORMAT_VERSION
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": asdict(self.tokenizer),
            "vocabulary": self.vocabulary.to_dict(),
            "class_names": self.class_names,
            "format_version": self.format_version,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorSpec:
        version = data.get("format_version")
        if not isinstance(version, int) or version > PRIOR_FORMAT_VERSION:
            raise ValueError(
                f"this prior's vqgen format_version is {version!r}; this vqgen reads up to {PRIOR_FORMAT_VERSION}. "
                "Upgrade vqgen (pip install -U vqgen)."
            )
        tokenizer = dict(data["tokenizer"])
        tokenizer["grid_shape"] = tuple(tokenizer["grid_shape"])
        return cls(
            tokenizer=TokenizerSpec(**tokenizer),
            vocabulary=PriorVocabulary(**data["vocabulary"]),
            class_names=data.get("class_names"),
            format_version=version,
            training=data.get("training", {}),
        )


def build_prior(
    tokenizer: TokenizerSpec,
    class_names: list[str] | None = None,
    *,
    architecture: str = "gpt2",
    num_layers: int = 8,
    hidden_size: int = 256,
    num_heads: int = 8,
    dropout: float = 0.1,
) -> PreTrainedModel:
    """A randomly initialised causal LM whose vocabulary is the codes plus the special tokens.

    `architecture` is a name in `stage2_prior.architectures.ARCHITECTURES`. Sequence length is
    1 (prefix) + h * w; no pretrained text weights are involved.
    """
    vocabulary = PriorVocabulary(tokenizer.codebook_size, len(class_names or []))
    spec = PriorSpec(tokenizer=tokenizer, vocabulary=vocabulary, class_names=class_names)
    settings = PriorSettings(vocab_size=vocabulary.size, sequence_length=1 + tokenizer.num_codes, num_layers=num_layers,
                             hidden_size=hidden_size, num_heads=num_heads, dropout=dropout,
                             bos_token_id=vocabulary.start_token, vqgen=spec.to_dict())
    return AutoModelForCausalLM.from_config(architecture_config(architecture, settings))


def prior_spec(prior: PreTrainedModel) -> PriorSpec:
    data = getattr(prior.config, "vqgen", None)
    if not isinstance(data, dict):
        raise ValueError(
            "this causal LM has no 'vqgen' section in its config: it was not built by stage2_prior.build_prior, "
            "so it does not know which tokenizer its tokens belong to."
        )
    return PriorSpec.from_dict(data)


def load_prior(name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedModel:
    """Load a prior from a folder or Hub id (safetensors only, never remote code), strictly: every weight
    the config describes comes from the file, and the file holds no other."""
    prior, info = AutoModelForCausalLM.from_pretrained(str(name_or_path), trust_remote_code=False, use_safetensors=True,
                                                       output_loading_info=True, **kwargs)
    prior_spec(prior)  # refuse a plain LM early
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"{name_or_path}: the weights do not match the prior's config.json ({problems}); the "
                         "weights and the config come from different models")
    return prior.eval()


def check_compatible(prior: PreTrainedModel, tokenizer: Any) -> PriorSpec:
    """Raise a clear error if `tokenizer` is not the kind the prior was trained on."""
    spec = prior_spec(prior)
    config = tokenizer.config
    expected = spec.tokenizer
    got_grid = (getattr(config, "latent_size", None),) * 2
    problems = []
    if getattr(config, "codebook_size", None) != expected.codebook_size:
        problems.append(f"codebook size {getattr(config, 'codebook_size', None)} vs {expected.codebook_size}")
    if got_grid != tuple(expected.grid_shape):
        problems.append(f"grid {got_grid} vs {tuple(expected.grid_shape)}")
    if (config.image_size, config.image_channels) != (expected.image_size, expected.image_channels):
        problems.append(f"images {config.image_channels}x{config.image_size} vs {expected.image_channels}x{expected.image_size}")
    if problems:
        raise ValueError(
            "the tokenizer does not match the prior (" + "; ".join(problems) + f"): the prior was trained on "
            f"{expected.name_or_path!r}. Load that tokenizer, or train a prior on this one."
        )
    return spec


def retarget_prior(prior: PreTrainedModel, tokenizer: TokenizerSpec,
                   class_names: list[str] | None) -> tuple[PreTrainedModel, str | None]:
    """A trained prior made the prior of `tokenizer` (checked compatible) and `class_names`, to fine-tune on them.

    The token embedding's rows (and the output layer's) follow their meaning: the codes and the start
    token keep theirs; a class keeps its row by name wherever it now stands; the null class keeps its
    own; a class the prior never saw, and the null class of a prior that was unconditional, get freshly
    initialised rows. An unconditional prior made from a conditional one starts its start token from the
    null class's row: both mean "no class". Returns the prior and what changed (None: the same classes).
    """
    old = prior_spec(prior)
    vocabulary = PriorVocabulary(tokenizer.codebook_size, len(class_names or []))
    vqgen = PriorSpec(tokenizer=tokenizer, vocabulary=vocabulary, class_names=class_names).to_dict()
    old_names, names = old.class_names or [], class_names or []
    if old_names == names:
        prior.config.vqgen = vqgen
        return prior, None
    config = copy.deepcopy(prior.config)
    config.vocab_size, config.vqgen = vocabulary.size, vqgen
    new = AutoModelForCausalLM.from_config(config)
    rows = {token: token for token in range(tokenizer.codebook_size + 1)}  # the codes and the start token
    rows.update({vocabulary.class_token(i): old.vocabulary.class_token(old_names.index(name))
                 for i, name in enumerate(names) if name in old_names})
    if old_names:
        rows[vocabulary.null_token if names else vocabulary.start_token] = old.vocabulary.null_token
    vocab_tensors = [getattr(module, name) for module in (new.get_input_embeddings(), new.get_output_embeddings())
                     for name in ("weight", "bias") if getattr(module, name, None) is not None]
    vocab_ptrs = {t.data_ptr() for t in vocab_tensors}
    state = new.state_dict()
    new.load_state_dict({k: v for k, v in prior.state_dict().items() if state[k].data_ptr() not in vocab_ptrs}, strict=False)
    targets, sources = torch.tensor(list(rows)), torch.tensor(list(rows.values()))
    with torch.no_grad():
        for module, old_module in ((new.get_input_embeddings(), prior.get_input_embeddings()),
                                   (new.get_output_embeddings(), prior.get_output_embeddings())):
            for name in ("weight", "bias"):
                if getattr(module, name, None) is not None:
                    getattr(module, name)[targets] = getattr(old_module, name)[sources]
    kept = [n for n in names if n in old_names]
    notice = (f"classes {old_names or 'none (unconditional)'} -> {names or 'none (unconditional)'}: rows kept for "
              f"{len(kept)} class(es) by name, fresh rows for {[n for n in names if n not in old_names]}, "
              f"dropped {[n for n in old_names if n not in names]}")
    return new, notice


def finetuning_prior(name_or_path: str | os.PathLike, tokenizer: Any, spec: TokenizerSpec, class_names: list[str] | None,
                     print_fn=print) -> PreTrainedModel:
    """`--init_from`: a trained prior to fine-tune, every weight loaded (safetensors, strict), refused (ValueError)
    unless its codes are `tokenizer`'s kind; its class rows follow `retarget_prior`'s rule for `class_names`."""
    prior = load_prior(name_or_path)
    check_compatible(prior, tokenizer)
    if prior_spec(prior).tokenizer.name_or_path != spec.name_or_path:
        print_fn(f"--init_from {name_or_path}: trained on the codes of {prior_spec(prior).tokenizer.name_or_path}, "
                 f"fine-tuned on those of {spec.name_or_path} (same codebook, grid and images)")
    prior, notice = retarget_prior(prior, spec, class_names)
    if notice:
        print_fn(f"--init_from {name_or_path}: {notice}")
    return prior.train()
