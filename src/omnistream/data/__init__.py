"""Deterministic synthetic training and eval data: espeak-ng speech, drawn images and videos, as chat items."""

from .errors import DataError
from .synth import main, read_items, synthesize

__all__ = ["DataError", "main", "read_items", "synthesize"]
