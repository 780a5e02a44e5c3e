"""The prior architectures `build_prior` knows, and the contract every one of them must meet.

An architecture is a function `PriorSettings -> transformers config`; `ARCHITECTURES` maps its name
(what `build_prior(architecture=...)` and `stage2_prior.train --architecture` accept) to it. Adding
one is a new file in this folder holding that function, plus its line in `ARCHITECTURES` (code
outside vqgen uses `@register_architecture("name")` instead).

The contract. The config the function returns must give a prior that

1. is a `transformers` causal LM built with `AutoModelForCausalLM.from_config(config)`, randomly
   initialised: a built-in model type, or one registered in-process with `AutoConfig.register` and
   `AutoModelForCausalLM.register` (`load_prior` never runs remote code);
2. carries `settings.config_fields()` unchanged: `vocab_size` (the codes plus the special tokens of
   `PriorVocabulary`), the start token as `bos_token_id`, no eos or pad token, and the `vqgen`
   section as a config attribute, which `save_pretrained` writes into config.json and `load_prior`,
   `check_compatible` and the pipelines read back;
3. fits `settings.sequence_length` positions (1 prefix token + h * w codes), with `num_layers`
   blocks of width `hidden_size`, `num_heads` attention heads and `dropout` in its dropout layers;
4. takes `input_ids` (`b L` long) and returns `.logits` (`b L vocab_size`) where position t sees
   only tokens 0..t (causal), and `.loss`, the mean next-token cross-entropy, when given
   `labels=input_ids`;
5. follows the transformers cache API: `prior(input_ids=..., cache=DynamicCache(config=prior.config),
   use_cache=True)` fills the cache in place, so feeding the next token alone gives the logits the
   whole sequence would (the sampler relies on it), and `use_cache=False` recomputes everything;
6. round-trips through `save_prior` / `load_prior`: `save_pretrained(safe_serialization=True)`
   writes safetensors and `AutoModelForCausalLM.from_pretrained(use_safetensors=True)` restores
   every weight.

`build_prior` checks point 2; tests/test_prior_architectures.py checks the rest for every registered name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from .gpt2 import gpt2_config
from .llama import llama_config


@dataclass(frozen=True)
class PriorSettings:
    """Everything an architecture is told: the sizes chosen by the user and the vocabulary's layout."""

    vocab_size: int
    sequence_length: int
    num_layers: int
    hidden_size: int
    num_heads: int
    dropout: float
    bos_token_id: int
    vqgen: dict[str, Any]

    def config_fields(self) -> dict[str, Any]:
        """The config fields every architecture passes on unchanged (point 2 of the contract)."""
        return dict(vocab_size=self.vocab_size, bos_token_id=self.bos_token_id, eos_token_id=None, pad_token_id=None,
                    vqgen=self.vqgen)


ConfigBuilder = Callable[[PriorSettings], PretrainedConfig]

ARCHITECTURES: dict[str, ConfigBuilder] = {
    "gpt2": gpt2_config,
    "llama": llama_config,
}


def register_architecture(name: str) -> Callable[[ConfigBuilder], ConfigBuilder]:
    """Decorator adding a config builder to `ARCHITECTURES` under `name`; a taken name is refused."""

    def register(builder: ConfigBuilder) -> ConfigBuilder:
        if name in ARCHITECTURES:
            raise ValueError(f"a prior architecture named {name!r} is already registered ({ARCHITECTURES[name]!r})")
        ARCHITECTURES[name] = builder
        return builder

    return register


def architecture_config(name: str, settings: PriorSettings) -> PretrainedConfig:
    """The transformers config of architecture `name` for `settings`, checked against the contract."""
    builder = ARCHITECTURES.get(name)
    if builder is None:
        raise ValueError(f"unknown prior architecture {name!r}; registered: {', '.join(sorted(ARCHITECTURES))}")
    config = builder(settings)
    broken = {k: getattr(config, k, None) for k, v in settings.config_fields().items() if getattr(config, k, None) != v}
    if broken:
        raise TypeError(
            f"prior architecture {name!r} does not keep {sorted(broken)} as given (see the contract in "
            f"{__name__}): pass **settings.config_fields() to its config."
        )
    return config
