"""Test signals: espeak-ng speech, a speech-like harmonic signal, white noise (all float32 mono)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr


def espeak_speech(text: str, voice: str = "en", sample_rate: int = 16000) -> np.ndarray:
    """`text` spoken by espeak-ng, resampled to `sample_rate`; skips the test when espeak-ng is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (shutil.which('espeak-ng') is None); real-speech tests need it")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-w", str(path), text], check=True, capture_output=True)
        audio, native_rate = soundfile.read(path, dtype="float32")  # espeak-ng writes 22050 Hz mono
    if native_rate != sample_rate:
        audio = soxr.resample(audio, native_rate, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def harmonic_speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Voiced-speech stand-in: a gliding 90-240 Hz pitch with formant-shaped harmonics under a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi)) + 8 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = rng.uniform([400, 1000, 2300], [900, 1800, 3200])
    signal = np.zeros_like(t)
    for k in range(1, int(4000 / 90) + 1):  # harmonics up to ~4 kHz
        freq = k * f0
        gain = sum(np.exp(-(((freq - f) / 150.0) ** 2)) for f in formants) + 0.3 / k
        signal += gain * np.sin(k * phase) * (freq < sr / 2)
    syllables = np.clip(np.sin(2 * np.pi * 3.7 * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 0.7
    signal *= syllables * (0.6 + 0.4 * rng.uniform(size=1))
    signal += 0.003 * rng.standard_normal(len(t))  # breath noise so pauses are not digital silence
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def white_noise(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Full-scale white noise, uniform in [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, round(seconds * sr)).astype(np.float32)
