"""Whisper-style log-mel features at 16 kHz, as Qwen3-Omni's feature extractor computes them.

The extractor floors every value at (the utterance's peak - 8), in log10 units (an 80 dB range). With
floor="global" (the reference) the peak is the max over the whole padded utterance, which a stream
cannot know in advance; with floor="running" each frame is floored at the max over the frames up to
and including itself, so the features of a prefix never change as audio arrives. The two agree wherever
the quiet parts stay within 80 dB of the loudness reached so far; they differ where an utterance opens
quieter than that (digital silence, a soft start): the global floor lifts those frames, the running one
keeps them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms Hann window
HOP_LENGTH = 160  # 10 ms: 100 frames per second
N_MELS = 128
F_MAX = 8000.0
MIN_LONGEST = N_FFT // 2 + 1  # torch.stft reflect-pads n_fft // 2 samples each side: the input must be longer
DYNAMIC_RANGE = 8.0  # log10 units below the peak where values are floored (80 dB)
FLOORS = ("global", "running")


class AudioError(ValueError):
    """A waveform (or audio file) that cannot be turned into features."""


def num_frames(num_samples: int) -> int:
    """Number of log-mel frames for a waveform of `num_samples` samples at 16 kHz."""
    return num_samples // HOP_LENGTH


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per log(6.4))."""
    log_part = 15.0 + torch.log(hz.clamp(min=1000.0) / 1000.0) * (27.0 / math.log(6.4))
    return torch.where(hz >= 1000.0, log_part, 3.0 * hz / 200.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of the Slaney mel scale."""
    log_part = 1000.0 * torch.exp((mel.clamp(min=15.0) - 15.0) * (math.log(6.4) / 27.0))
    return torch.where(mel >= 15.0, log_part, 200.0 * mel / 3.0)


def slaney_mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular mel filters on the Slaney scale with Slaney area normalisation, float64 (n_freqs, n_mels)."""
    f64 = torch.float64
    mel_edges = torch.linspace(_hz_to_mel(torch.tensor(f_min, dtype=f64)).item(),
                               _hz_to_mel(torch.tensor(f_max, dtype=f64)).item(), n_mels + 2, dtype=f64)
    edges = _mel_to_hz(mel_edges)  # (n_mels + 2,) Hz
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,) each
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=f64)[:, None]  # (n_freqs, 1)
    rising = (freqs - lower) / (center - lower)  # (n_freqs, n_mels)
    falling = (upper - freqs) / (upper - center)
    triangles = torch.minimum(rising, falling).clamp(min=0.0)
    return triangles * (2.0 / (upper - lower))  # equal area per filter


def _mel_step(n_mels: int, f_max: float) -> torch.Tensor:
    """Mels between neighbouring bin centres of `slaney_mel_filterbank` from 0 Hz."""
    return _hz_to_mel(torch.tensor(f_max, dtype=torch.float64)) / (n_mels + 1)


def mel_bin_index(hz: torch.Tensor, n_mels: int = N_MELS, f_max: float = F_MAX) -> torch.Tensor:
    """Fractional position of frequencies `hz` on the grid of `slaney_mel_filterbank`'s bins from 0 Hz (0: the first
    bin's centre, 1: the second's, ...)."""
    return _hz_to_mel(hz.to(torch.float64)) / _mel_step(n_mels, f_max) - 1.0


def mel_bin_centres(n_mels: int = N_MELS, f_max: float = F_MAX) -> torch.Tensor:
    """Centre frequency in Hz of each bin of `slaney_mel_filterbank` from 0 Hz, float64 (n_mels,)."""
    return _mel_to_hz(_mel_step(n_mels, f_max) * torch.arange(1, n_mels + 1, dtype=torch.float64))


def _check_waveform(index: int, waveform) -> torch.Tensor:
    """One waveform as a float32 tensor, or an AudioError saying what is wrong with it."""
    if not isinstance(waveform, (np.ndarray, torch.Tensor)):
        raise AudioError(f"waveform {index} is a {type(waveform).__name__}; expected a 1-D numpy array or torch tensor")
    if waveform.ndim != 1:
        raise AudioError(f"waveform {index} has shape {tuple(waveform.shape)}; expected 1-D mono samples "
                         f"(mix multi-channel audio down first)")
    is_float = waveform.is_floating_point() if isinstance(waveform, torch.Tensor) else waveform.dtype.kind == "f"
    if not is_float:
        raise AudioError(f"waveform {index} has dtype {waveform.dtype}; expected float samples in [-1, 1]")
    if len(waveform) < HOP_LENGTH:
        raise AudioError(f"waveform {index} has {len(waveform)} samples; need at least {HOP_LENGTH} "
                         f"(one {HOP_LENGTH / SAMPLE_RATE * 1000:.0f} ms frame at {SAMPLE_RATE} Hz)")
    if isinstance(waveform, np.ndarray):
        with np.errstate(over="ignore"):  # values beyond float32 become inf, reported just below
            samples = torch.from_numpy(np.array(waveform, dtype=np.float32))  # a copy: read-only arrays are fine
    else:
        samples = waveform.detach().to(torch.float32)
    bad = int((~torch.isfinite(samples)).sum())
    if bad:
        raise AudioError(f"waveform {index} has {bad} NaN or infinite samples (as float32) out of {len(samples)}")
    return samples


def running_peak(log_spec: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """Max over frames so far (B, 1, T) of log10 mel (B, n_mels, T), continuing from `before` (B, 1, 1)."""
    peak = log_spec.amax(dim=1, keepdim=True).cummax(dim=2).values  # (B, 1, T)
    return peak if before is None else torch.maximum(peak, before)


def scale_log_mel(log_spec: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """log10 mel floored at `peak` - 8 (peak broadcast over it), mapped to Whisper's feature range."""
    return (torch.maximum(log_spec, peak - DYNAMIC_RANGE) + 4.0) / 4.0


class LogMel(nn.Module):
    """Log-mel (128 bins by default) of 16 kHz waveforms, batched with the Whisper extractor's padding semantics."""

    def __init__(self, n_mels: int = N_MELS, floor: str = "global"):
        super().__init__()
        if floor not in FLOORS:
            raise ValueError(f"floor must be one of {FLOORS}, got {floor!r}")
        self.floor = floor
        filters = slaney_mel_filterbank(N_FFT // 2 + 1, n_mels, SAMPLE_RATE, 0.0, F_MAX)  # (n_freqs, n_mels)
        self.register_buffer("mel_filters", filters.T.to(torch.float32).contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)  # periodic

    def log_spectrum(self, padded: torch.Tensor) -> torch.Tensor:
        """Already padded samples (B, L) -> log10 mel power (B, n_mels, 1 + (L - n_fft) // hop) of every whole frame."""
        stft = torch.stft(padded, N_FFT, HOP_LENGTH, window=self.window, center=False,
                          return_complex=True)  # (B, n_freqs, frames)
        mel = self.mel_filters @ (stft.abs() ** 2)  # (B, n_mels, frames)
        return torch.clamp(mel, min=1e-10).log10()

    def forward(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (list of 1-D, 16 kHz) -> features (B, n_mels, T_max) float32, frame_mask (B, T_max) long."""
        if not isinstance(waveforms, (list, tuple)):
            raise AudioError(f"waveforms must be a list of 1-D arrays or tensors, got a {type(waveforms).__name__}")
        if not waveforms:
            raise AudioError("waveforms is empty; pass at least one 1-D waveform")
        samples = [_check_waveform(i, w) for i, w in enumerate(waveforms)]
        lengths = torch.tensor([len(s) for s in samples], device=self.window.device)  # (B,)
        longest = int(lengths.max())
        if longest < MIN_LONGEST:
            raise AudioError(f"the longest waveform has {longest} samples; need at least {MIN_LONGEST} "
                             f"(n_fft // 2 + 1) for the STFT's reflect padding")
        batch = nn.utils.rnn.pad_sequence([s.to(self.window.device) for s in samples],
                                          batch_first=True)  # (B, L_max), zeros after each waveform
        padded = F.pad(batch[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[:, 0]  # (B, L_max + n_fft)
        log_spec = self.log_spectrum(padded)[..., :-1]  # (B, n_mels, T_max): the last frame is dropped
        if self.floor == "global":
            peak = log_spec.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1), over padded frames too
        else:
            peak = running_peak(log_spec)  # (B, 1, T_max), padded frames come last so never raise it
        features = scale_log_mel(log_spec, peak)
        starts = torch.arange(num_frames(longest), device=lengths.device) * HOP_LENGTH  # (T_max,)
        frame_mask = (starts[None, :] < lengths[:, None]).long()  # (B, T_max): a frame counts if its hop starts inside
        return features, frame_mask


@functools.cache
def _extractor(n_mels: int, floor: str, device: torch.device) -> LogMel:
    """The shared LogMel for a mel count, floor and device, built once."""
    return LogMel(n_mels, floor).to(device)


def log_mel(waveforms: Sequence[np.ndarray | torch.Tensor], n_mels: int = N_MELS,
            device: str | torch.device = "cpu", floor: str = "global") -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms (list of 1-D, 16 kHz) -> features (B, n_mels, T_max) float32, frame_mask (B, T_max) long."""
    return _extractor(n_mels, floor, torch.device(device))(waveforms)
