"""Streaming AuT encoding: 16 kHz audio in packets of any size -> encoder tokens as soon as their window is whole.

The stream computes exactly what the offline path computes for the same audio and attention window,
    encoder(log_mel([wave], floor="running")[0], [frames], window_frames),
with the running log-mel floor (features.py explains why the reference's global floor cannot stream).
Mel frame i is centred on sample 160 i and final once samples up to 160 i + 199 have arrived (frame 0
reads the reflection of samples 1..200, as torch.stft(center=True) does); a window of W frames is
encoded the moment its last frame is final, so tokens lag the audio by at most 160 W + 39 samples.
finish() reflects the end, drops the last frame like the offline path (frames = samples // 160) and
encodes the remainder with the offline tail rules: chunks padded to the audio's longest chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .encoder import AudioEncoder, conv_out_len
from .features import HOP_LENGTH, MIN_LONGEST, N_FFT, SAMPLE_RATE, LogMel, running_peak, scale_log_mel
from .io import AudioInputError, pcm16_bytes_to_float


@dataclass
class StreamState:
    """What an AudioEncoderStream holds between packets."""

    packets: int = 0  # push() calls so far
    samples: int = 0  # samples received
    started: bool = False  # the start reflection (samples 1..200) is in place
    pieces: list[np.ndarray] = field(default_factory=list)  # unframed samples: raw, or padded from hop 160 * frames
    buffered: int = 0  # samples in pieces
    frames: int = 0  # mel frames computed
    peak: torch.Tensor | None = None  # (1, 1, 1) running max of log10 mel
    mel: list[torch.Tensor] = field(default_factory=list)  # (n_mels, k) pieces of frames not yet encoded
    frames_consumed: int = 0  # mel frames turned into emitted tokens
    tokens_emitted: int = 0
    finished: bool = False


class AudioEncoderStream:
    """Incremental AudioEncoder over a live 16 kHz stream, token-exact against the offline running-floor path."""

    def __init__(self, encoder: AudioEncoder, window_frames: int | None = None):
        self.encoder = encoder
        c = encoder.config
        self.chunk = c.chunk_frames
        self.window_frames = window_frames or self.chunk  # one chunk: live mode (1 s for N=3, 1.28 s for N=4)
        self.window = encoder.window_tokens(conv_out_len(self.chunk, c.num_downsample), self.window_frames)
        self.block = encoder.block_frames(self.window_frames)
        weight = encoder.conv_out.weight
        self.features = LogMel(c.num_mel_bins, floor="running").to(weight.device)
        self.empty = torch.empty(0, c.output_dim, dtype=weight.dtype, device=weight.device)
        self.state = StreamState()

    def reset(self) -> None:
        """Forget everything received: the next push starts a new utterance."""
        self.state = StreamState()

    @property
    def tokens_emitted(self) -> int:
        return self.state.tokens_emitted

    @property
    def frames_consumed(self) -> int:
        return self.state.frames_consumed

    @property
    def samples_received(self) -> int:
        return self.state.samples

    @property
    def latency_seconds(self) -> float:
        """Audio received whose tokens are not out yet (at most one window plus 39 samples between pushes)."""
        return (self.state.samples - HOP_LENGTH * self.state.frames_consumed) / SAMPLE_RATE

    @torch.no_grad()
    def push(self, samples: np.ndarray | torch.Tensor | bytes) -> torch.Tensor:
        """One packet (1-D float 16 kHz samples, or int16 PCM bytes) -> the tokens it completes (n, output_dim)."""
        st = self.state
        index = st.packets
        st.packets += 1
        if st.finished:
            raise RuntimeError(f"packet {index} was pushed after finish(); call reset() to start a new utterance")
        packet = _packet_samples(samples, index)  # (n,) float32
        if not len(packet):
            return self.empty
        st.pieces.append(packet)
        st.buffered += len(packet)
        st.samples += len(packet)
        if not st.started and st.samples >= MIN_LONGEST:
            raw = self._joined()
            st.pieces = [raw[1:MIN_LONGEST][::-1].copy(), raw]  # torch.stft's reflect padding at the start
            st.buffered += MIN_LONGEST - 1
            st.started = True
        if st.started and st.buffered >= N_FFT:
            self._make_frames(self._joined(), st.frames + (st.buffered - N_FFT) // HOP_LENGTH + 1)
        return self._encode(final=False)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """End of audio -> the remaining tokens (n, output_dim): the end reflected, the tail chunk as offline."""
        st = self.state
        if st.finished:
            raise RuntimeError("finish() was called twice; call reset() to start a new utterance")
        if st.samples < MIN_LONGEST:
            raise AudioInputError(f"the stream received {st.samples} samples; need at least {MIN_LONGEST} "
                                  f"(n_fft // 2 + 1) for the STFT's reflect padding")
        padded = self._joined()
        tail = padded[-MIN_LONGEST:-1][::-1]  # torch.stft's reflect padding at the end
        self._make_frames(np.concatenate([padded, tail]), st.samples // HOP_LENGTH)
        st.finished = True
        return self._encode(final=True)

    def _joined(self) -> np.ndarray:
        """The buffered samples as one array (kept as the only piece)."""
        st = self.state
        joined = st.pieces[0] if len(st.pieces) == 1 else np.concatenate(st.pieces)
        st.pieces = [joined]
        return joined

    def _make_frames(self, padded: np.ndarray, upto: int) -> None:
        """Turn padded samples starting at hop 160 * frames into mel frames up to frame `upto` (exclusive)."""
        st = self.state
        n = upto - st.frames
        if n <= 0:
            return
        window = torch.from_numpy(padded[: HOP_LENGTH * (n - 1) + N_FFT]).to(self.features.window.device)
        log_spec = self.features.log_spectrum(window[None])  # (1, n_mels, n)
        peak = running_peak(log_spec, st.peak)  # (1, 1, n)
        st.peak = peak[..., -1:]
        st.mel.append(scale_log_mel(log_spec, peak)[0])  # (n_mels, n)
        st.frames = upto
        st.pieces = [padded[HOP_LENGTH * n :]]
        st.buffered = len(st.pieces[0])

    def _encode(self, final: bool) -> torch.Tensor:
        """Encode every whole window of pending frames, and at the end the rest -> tokens (n, output_dim)."""
        st = self.state
        if not st.mel:
            return self.empty
        mel = torch.cat(st.mel, dim=1) if len(st.mel) > 1 else st.mel[0]  # (n_mels, pending)
        whole = mel.shape[1] // self.window_frames * self.window_frames
        outs = [self.encoder.encode_segment(mel[:, s : min(whole, s + self.block)], self.chunk, self.window)
                for s in range(0, whole, self.block)]  # whole windows: the audio has a whole chunk, pad_to = chunk
        rest = mel[:, whole:]
        if final and rest.shape[1]:
            pad_to = min(self.chunk, st.frames)  # the audio's longest chunk, as offline
            window = self.encoder.window_tokens(conv_out_len(pad_to, self.encoder.config.num_downsample),
                                                self.window_frames)
            outs.append(self.encoder.encode_segment(rest, pad_to, window))
            rest = rest[:, :0]
        st.mel = [rest] if rest.shape[1] else []
        st.frames_consumed = st.frames - rest.shape[1]
        if not outs:
            return self.empty
        tokens = torch.cat(outs)  # (n, output_dim)
        st.tokens_emitted += tokens.shape[0]
        return tokens


def _packet_samples(samples, index: int) -> np.ndarray:
    """One packet as float32 samples (n,), or an AudioInputError naming the packet and what is wrong."""
    if isinstance(samples, (bytes, bytearray, memoryview)):
        try:
            return pcm16_bytes_to_float(samples)
        except AudioInputError as e:
            raise AudioInputError(f"packet {index}: {e}") from e
    if isinstance(samples, torch.Tensor):
        if not samples.is_floating_point():
            raise AudioInputError(f"packet {index} has dtype {samples.dtype}; expected float samples in [-1, 1] "
                                  f"(send int16 PCM as bytes)")
        samples = samples.detach().to("cpu", torch.float32).numpy()
    elif not isinstance(samples, np.ndarray):
        raise AudioInputError(f"packet {index} is a {type(samples).__name__}; expected a 1-D float array or tensor, "
                              f"or int16 PCM bytes")
    elif samples.dtype.kind != "f":
        raise AudioInputError(f"packet {index} has dtype {samples.dtype}; expected float samples in [-1, 1] "
                              f"(send int16 PCM as bytes)")
    if samples.ndim != 1:
        raise AudioInputError(f"packet {index} has shape {tuple(samples.shape)}; expected 1-D mono samples")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported just below
        samples = samples.astype(np.float32)
    bad = len(samples) - int(np.isfinite(samples).sum())
    if bad:
        raise AudioInputError(f"packet {index} has {bad} NaN or infinite samples (as float32) out of {len(samples)}")
    return samples
