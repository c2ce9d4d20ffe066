"""Generation: sampling, batched generate, streaming token iterators, the streaming speech session."""

from .generate import GenerationResult, generate, stream
from .sampling import SamplingParams, sample
from .session import AudioChunk, SpeechResult, SpeechSession, SpeechTokens, TextDelta

__all__ = ["AudioChunk", "GenerationResult", "SamplingParams", "SpeechResult", "SpeechSession", "SpeechTokens",
           "TextDelta", "generate", "sample", "stream"]
