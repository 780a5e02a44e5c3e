"""Stage 2 of vqgen: an autoregressive prior (a transformers causal LM) over a tokenizer's codes."""

from .codes import encode_dataset
from .prior import PriorSpec, TokenizerSpec, build_prior, check_compatible, load_prior, prior_spec
from .sampling import sample_codes
from .saving import push_prior, save_prior
from .scoring import sequence_nll
from .vocabulary import PriorVocabulary

__all__ = [
    "PriorSpec", "PriorVocabulary", "TokenizerSpec", "build_prior", "check_compatible", "encode_dataset",
    "load_prior", "prior_spec", "push_prior", "sample_codes", "save_prior", "sequence_nll",
]
