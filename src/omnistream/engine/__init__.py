"""Generation: batched generate, streaming token iterators, the streaming speech session (sampling re-exported)."""

from .generate import GenerationResult, generate, stream
from ..sampling import SamplingParams, sample
from .session import AudioChunk, SpeechResult, SpeechSession, SpeechTokens, TextDelta

__all__ = ["AudioChunk", "GenerationResult", "SamplingParams", "SpeechResult", "SpeechSession", "SpeechTokens",
           "TextDelta", "generate", "sample", "stream"]
