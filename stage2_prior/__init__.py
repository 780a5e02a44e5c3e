"""Stage 2 of vqgen: an autoregressive prior (a transformers causal LM) over a tokenizer's codes.

Owns: building, saving and loading the prior (ARCHITECTURES: gpt2, llama), its vocabulary (codes, class
tokens, null class), the cached code dataset, `sample_codes` with its decoding paths (eager with a
preallocated cache, compiled with a static cache) and token choice, sequence scoring, and
`python -m stage2_prior.train`.

May import: vqgen (the core), and stage1_tokenizer only where training loads the tokenizer whose codes it
learns; the rest knows a tokenizer only through its saved config and tokenize/detokenize. Never pipelines
(docs/architecture.md).
"""

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
