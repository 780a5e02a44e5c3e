"""Stage 2 of vqgen: an autoregressive prior (a transformers causal LM) over a tokenizer's codes."""

from .architectures import ARCHITECTURES, PriorSettings, register_architecture
from .codes import encode_dataset
from .prior import PriorSpec, TokenizerSpec, build_prior, check_compatible, load_prior, prior_spec
from .sampling import sample_codes
from .saving import push_prior, save_prior
from .scoring import sequence_nll
from .vocabulary import PriorVocabulary

__all__ = [
    "ARCHITECTURES", "PriorSettings", "PriorSpec", "PriorVocabulary", "TokenizerSpec", "build_prior", "check_compatible",
    "encode_dataset", "load_prior", "prior_spec", "push_prior", "register_architecture", "sample_codes", "save_prior",
    "sequence_nll",
]
