"""vqgen pipelines: chain a tokenizer and a prior, and sample any model family through one call.

Owns: TwoStagePipeline (`pipe(...)`, save/load/push as one folder), `generate` and the batched, seeded
sampling behind it, class labels and seeds as users write them, `python -m pipelines.sample` (sharded,
resumable), `python -m pipelines.evaluate` and its metrics, latent tools, and the quickstart. It programs
against the model interface of pipelines/protocols.py, never against a model's class.

May import: vqgen, stage1_tokenizer and stage2_prior; nothing imports pipelines (docs/architecture.md).
"""

from vqgen.sampling_settings import SamplingSettings

from .generation import generate
from .loading import load_model
from .outputs import ImageGenerationOutput
from .pipeline import PipelineConfig, TwoStagePipeline

__all__ = ["ImageGenerationOutput", "PipelineConfig", "SamplingSettings", "TwoStagePipeline", "generate", "load_model"]
