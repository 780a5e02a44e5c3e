"""vqgen pipelines: chain a tokenizer and a prior, and sample any model family through one call."""

from vqgen.sampling_settings import SamplingSettings

from .generation import generate
from .loading import load_model
from .pipeline import PipelineConfig, TwoStagePipeline

__all__ = ["PipelineConfig", "SamplingSettings", "TwoStagePipeline", "generate", "load_model"]
