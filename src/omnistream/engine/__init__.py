"""Generation: sampling, batched generate, streaming token iterators."""

from .generate import GenerationResult, generate, stream
from .sampling import SamplingParams, sample

__all__ = ["GenerationResult", "SamplingParams", "generate", "sample", "stream"]
