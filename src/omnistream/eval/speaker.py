"""Speaker similarity: Resemblyzer's d-vector (its GE2E speaker encoder; the weights ship inside the package).

`SpeakerEncoder().embed(wave, rate)` gives a unit-length 256-d embedding of one utterance (Resemblyzer's own
preprocessing: resampled to 16 kHz, volume-normalised, long silences trimmed with WebRTC VAD); the similarity of
two utterances is the cosine of their embeddings (the dot product). A clip with no voiced frames after trimming
gets no embedding (None), and its similarities are NaN.

Install note: Resemblyzer depends on `webrtcvad` 2.0.10, whose module reads its own version through
`pkg_resources` at import; setuptools >= 81 no longer ships `pkg_resources`. `webrtcvad-wheels` (same module,
prebuilt, no `pkg_resources`) avoids that; with the old module we give it a stand-in `pkg_resources` for the one
import (removed again at once) rather than fail.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
import warnings

import numpy as np

MIN_SECONDS = 0.3  # shorter voiced audio (after trimming) gets no embedding


class SpeakerError(RuntimeError):
    """Speaker similarity cannot be computed (Resemblyzer is missing or unusable); the message says what to do."""


def _import_webrtcvad() -> None:
    """Import webrtcvad, lending webrtcvad 2.0.10 a stand-in pkg_resources (see the module docstring)."""
    try:
        importlib.import_module("webrtcvad")
        return
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise
    shim = types.ModuleType("pkg_resources")

    def get_distribution(name):
        try:
            return types.SimpleNamespace(version=importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            return types.SimpleNamespace(version="unknown")

    shim.get_distribution = get_distribution
    sys.modules["pkg_resources"] = shim
    try:
        sys.modules.pop("webrtcvad", None)
        importlib.import_module("webrtcvad")
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


def _resemblyzer():
    """The resemblyzer module, or a SpeakerError saying how to install it."""
    try:
        _import_webrtcvad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.morphology in resemblyzer.audio
            return importlib.import_module("resemblyzer")
    except ImportError as e:
        raise SpeakerError(f"speaker similarity needs resemblyzer, which cannot be imported ({e}): "
                           f"pip install 'omnistream[eval]' (or pip install resemblyzer webrtcvad-wheels)") from None


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Cosine similarity of two embeddings (NaN when either is missing)."""
    if a is None or b is None:
        return float("nan")
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


class SpeakerEncoder:
    """Resemblyzer's VoiceEncoder on the CPU (or `device`): utterance embeddings and their similarities."""

    def __init__(self, device: str = "cpu"):
        rz = _resemblyzer()
        self._preprocess = rz.preprocess_wav
        self.rate = int(rz.hparams.sampling_rate)
        self.encoder = rz.VoiceEncoder(device, verbose=False)

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray | None:
        """The unit-length embedding (256,) of a mono utterance, or None when it has too little voiced audio."""
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise SpeakerError(f"expected mono audio (samples,), got shape {wave.shape}")
        if wave.size == 0 or not np.any(wave) or not np.all(np.isfinite(wave)):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trimmed = self._preprocess(wave, source_sr=sample_rate)
        if trimmed.size < MIN_SECONDS * self.rate:
            return None
        return np.asarray(self.encoder.embed_utterance(trimmed), dtype=np.float32)

    def similarity(self, a: np.ndarray, rate_a: int, b: np.ndarray, rate_b: int) -> float:
        """Cosine similarity of two utterances' embeddings (NaN when either has no voiced audio)."""
        return cosine(self.embed(a, rate_a), self.embed(b, rate_b))


def mean_embedding(embeddings) -> np.ndarray | None:
    """The re-normalised mean of several embeddings (a speaker's centroid), None when there are none."""
    found = [e for e in embeddings if e is not None]
    if not found:
        return None
    mean = np.mean(found, axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
