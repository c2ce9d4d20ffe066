"""Audio tokenizer (encoder side): 24 kHz waveform -> RVQ codes (B, Q, T) in the layout Code2Wav consumes.

Pipeline: causal log-mel front (each 512-sample STFT window ends at the current sample, hop 240 = 10 ms)
-> causal conv stack at 100 Hz -> non-overlapping strided conv (8 mel frames -> 1 codec frame, 12.5 Hz)
-> causal conv stack at 12.5 Hz -> projection to `codebook_dim` -> residual vector quantiser (Q codebooks of
K entries). Codes are `torch.long` with values in [0, K); Q and K follow a Code2WavConfig
(`CodecConfig.from_code2wav`), so `Code2Wav(c2w_config)(tokenizer.encode(wave))` type-checks.

Frame count: T = ceil(N / hop). The waveform is right-padded with zeros to a multiple of `hop`; codec frame t
reads samples [0, (t + 1) hop) only, so samples at or after (t + 1) hop never change codes[..., :t + 1]
(causal, streaming-friendly: a frame's codes are final as soon as its 1920 samples have arrived; only the
last, partial frame depends on the zero padding).

Codebook learning is loss-based (VQ-VAE): `codebook_loss` = ||sg(r) - c||^2 pulls the chosen entries towards
the residuals, `commitment_loss` = ||r - sg(c)||^2 pulls the encoder towards its codes; the quantised vector
reaches the encoder through the straight-through estimator. `ResidualVQ.kmeans_init` seeds the codebooks
from data (k-means per stage on the successive residuals), and `replace_dead_codes` re-seeds entries no
residual chose. `CodecDecoder` is a small causal decoder used only to train the codec (Code2Wav is the
real decoder); losses: `reconstruction_loss` (waveform L1 + log-mel L1), `multi_resolution_stft_loss`
(spectral convergence + log magnitude), plus the RVQ's commitment and codebook losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .code2wav import CausalConv, Code2WavConfig
from .features import slaney_mel_filterbank


@dataclass
class CodecConfig:
    """Codec hyper-parameters; defaults: 8 x 1024 codebooks at 12.5 frames/s of 24 kHz audio."""

    sample_rate: int = 24000
    hop: int = 1920  # waveform samples per codec frame (Code2WavConfig.total_upsample)
    num_quantizers: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 64
    n_fft: int = 512  # log-mel window (past samples only)
    mel_hop: int = 240  # 100 mel frames/s; must divide hop
    n_mels: int = 80
    mel_width: int = 192  # channels of the conv stack at the mel rate
    width: int = 384  # channels of the conv stack at the codec frame rate
    mel_layers: int = 2  # residual causal conv units at the mel rate (dilations 1, 3, 9, ...)
    frame_layers: int = 2  # residual causal conv units at the frame rate
    decoder_width: int = 256

    def __post_init__(self):
        if self.hop % self.mel_hop:
            raise ValueError(f"mel_hop {self.mel_hop} must divide hop {self.hop}")
        if self.n_fft < self.mel_hop:
            raise ValueError(f"n_fft {self.n_fft} must be at least mel_hop {self.mel_hop}")

    @classmethod
    def from_code2wav(cls, config: Code2WavConfig, **kw) -> CodecConfig:
        """Codec whose codes (Q, K, samples per frame) Code2Wav(config) consumes."""
        return cls(num_quantizers=config.num_quantizers, codebook_size=config.codebook_size,
                   hop=config.total_upsample, **kw)

    def num_frames(self, num_samples: int) -> int:
        """Codec frames for a waveform of `num_samples` samples: ceil(num_samples / hop)."""
        return -(-num_samples // self.hop)


def check_waveform(wave: torch.Tensor, sample_rate: int | None = None, expected_rate: int = 24000) -> torch.Tensor:
    """A float (N,), (B, N) or (B, 1, N) waveform as (B, N) float32, or a ValueError saying what is wrong."""
    if sample_rate is not None and sample_rate != expected_rate:
        raise ValueError(f"codec expects {expected_rate} Hz audio, got sample_rate={sample_rate}; resample first")
    if not isinstance(wave, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(wave).__name__}")
    if not wave.dtype.is_floating_point:
        raise ValueError(f"waveform must be floating point, got {wave.dtype}")
    if wave.dim() == 3:
        if wave.shape[1] != 1:
            raise ValueError(f"waveform (B, C, N) must be mono (C = 1), got {tuple(wave.shape)}")
        wave = wave[:, 0]
    elif wave.dim() == 1:
        wave = wave[None]
    elif wave.dim() != 2:
        raise ValueError(f"waveform must be (N,), (B, N) or (B, 1, N), got {tuple(wave.shape)}")
    if wave.shape[0] == 0 or wave.shape[1] == 0:
        raise ValueError(f"waveform is empty: shape {tuple(wave.shape)}")
    if not torch.isfinite(wave).all():
        raise ValueError("waveform contains NaN or infinite samples")
    return wave.float()


_FILTERBANKS: dict[tuple, torch.Tensor] = {}


def _mel_filters(n_fft: int, n_mels: int, sample_rate: int, device: torch.device) -> torch.Tensor:
    key = (n_fft, n_mels, sample_rate, str(device))
    if key not in _FILTERBANKS:
        fb = slaney_mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, 0.0, sample_rate / 2)
        _FILTERBANKS[key] = fb.float().to(device)  # (n_freqs, n_mels)
    return _FILTERBANKS[key]


def causal_log_mel(wave: torch.Tensor, sample_rate: int = 24000, n_fft: int = 512, hop: int = 240,
                   n_mels: int = 80) -> torch.Tensor:
    """(B, N) -> log-mel (B, n_mels, N // hop); frame j is the Hann-windowed STFT of samples
    [(j + 1) hop - n_fft, (j + 1) hop) (zeros before the start), so it never reads a later sample."""
    x = F.pad(wave, (n_fft - hop, 0))  # (B, n_fft - hop + N)
    frames = x.unfold(-1, n_fft, hop)  # (B, M, n_fft)
    spec = torch.fft.rfft(frames * torch.hann_window(n_fft, device=x.device, dtype=x.dtype), dim=-1)
    power = spec.real.pow(2) + spec.imag.pow(2)  # (B, M, n_freqs)
    mel = power @ _mel_filters(n_fft, n_mels, sample_rate, x.device)  # (B, M, n_mels)
    return mel.clamp(min=1e-10).log10().transpose(1, 2)  # (B, n_mels, M)


class CausalResUnit(nn.Module):
    """GELU -> dilated causal conv k=3 -> GELU -> conv k=1, residual."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.conv1 = CausalConv(dim, dim, 3, dilation=dilation)
        self.conv2 = CausalConv(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class CodecEncoder(nn.Module):
    """Causal encoder: waveform (B, N) at 24 kHz -> latents (B, T, codebook_dim), T = ceil(N / hop)."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        c = self.config = config
        self.down = c.hop // c.mel_hop
        self.mel_in = CausalConv(c.n_mels, c.mel_width, 3)
        self.mel_stack = nn.ModuleList(CausalResUnit(c.mel_width, 3**i) for i in range(c.mel_layers))
        self.downsample = nn.Conv1d(c.mel_width, c.width, self.down, stride=self.down)  # frame t: its own mels
        self.frame_stack = nn.ModuleList(CausalResUnit(c.width, 2**i) for i in range(c.frame_layers))
        self.proj = nn.Linear(c.width, c.codebook_dim)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.config
        n = wave.shape[-1]
        wave = F.pad(wave, (0, c.num_frames(n) * c.hop - n))  # (B, T hop), zeros after the end
        mel = causal_log_mel(wave, c.sample_rate, c.n_fft, c.mel_hop, c.n_mels)  # (B, n_mels, T down)
        x = self.mel_in((mel + 5.0) / 5.0)  # roughly unit scale
        for unit in self.mel_stack:
            x = unit(x)
        x = self.downsample(F.gelu(x))  # (B, width, T)
        for unit in self.frame_stack:
            x = unit(x)
        return self.proj(F.gelu(x).transpose(1, 2))  # (B, T, codebook_dim)


@dataclass
class RVQOutput:
    """z_q: straight-through quantised latents (B, T, D); codes (B, Q, T) long; losses averaged over stages."""

    z_q: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor


class ResidualVQ(nn.Module):
    """Q codebooks (K, D); stage q quantises the residual left by stages < q to its nearest entry (L2)."""

    def __init__(self, num_quantizers: int, codebook_size: int, dim: int):
        super().__init__()
        self.num_quantizers, self.codebook_size, self.dim = num_quantizers, codebook_size, dim
        self.codebooks = nn.Parameter(torch.randn(num_quantizers, codebook_size, dim) / math.sqrt(dim))
        self.register_buffer("usage", torch.zeros(num_quantizers, codebook_size), persistent=False)

    def _check(self, z: torch.Tensor) -> None:
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"latents must be (batch, frames, {self.dim}), got {tuple(z.shape)}")

    def _nearest(self, r: torch.Tensor, q: int) -> torch.Tensor:
        """Residual (M, D) -> index (M,) of the nearest entry of codebook q."""
        cb = self.codebooks[q].detach()
        d = r.pow(2).sum(-1, keepdim=True) - 2 * r @ cb.T + cb.pow(2).sum(-1)  # (M, K)
        return d.argmin(-1)

    def forward(self, z: torch.Tensor, n_q: int | None = None) -> RVQOutput:
        """Quantise z (B, T, D) with the first n_q (default all) codebooks."""
        self._check(z)
        n_q = self.num_quantizers if n_q is None else n_q
        if not 1 <= n_q <= self.num_quantizers:
            raise ValueError(f"n_q must lie in [1, {self.num_quantizers}], got {n_q}")
        B, T, D = z.shape
        residual, z_q = z.reshape(-1, D), torch.zeros_like(z.reshape(-1, D))
        codes, commit, book = [], z.new_zeros(()), z.new_zeros(())
        for q in range(n_q):
            idx = self._nearest(residual.detach(), q)  # (M,)
            chosen = self.codebooks[q][idx]  # (M, D), carries the codebook gradient
            if residual.numel():
                book = book + F.mse_loss(chosen, residual.detach())
                commit = commit + F.mse_loss(residual, chosen.detach())
            if self.training:
                self.usage[q].index_add_(0, idx, torch.ones_like(idx, dtype=self.usage.dtype))
            z_q = z_q + chosen.detach()
            residual = residual - chosen.detach()
            codes.append(idx)
        flat = z.reshape(-1, D)
        z_q = flat + (z_q - flat).detach()  # straight-through: forward z_q, gradient to z
        codes = torch.stack(codes, 0).view(n_q, B, T).transpose(0, 1)  # (B, n_q, T)
        return RVQOutput(z_q.view(B, T, D), codes, commit / n_q, book / n_q)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """Latents (B, T, D) -> codes (B, Q, T), torch.long in [0, K)."""
        return self(z, n_q).codes

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, Q', T) with Q' <= Q -> sum of the chosen entries (B, T, D)."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.num_quantizers:
            raise ValueError(f"codes must be (batch, <= {self.num_quantizers} quantizers, frames), "
                             f"got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        out = self.codebooks[0][codes[:, 0]]  # (B, T, D)
        for q in range(1, codes.shape[1]):
            out = out + self.codebooks[q][codes[:, q]]
        return out

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, iters: int = 10, seed: int = 0) -> None:
        """Seed every codebook by k-means (Lloyd, `iters` rounds) on that stage's residuals of z (..., D).

        Each stage's entries end as means of their clusters, so on z the mean squared quantisation error never
        grows from one stage to the next. Entries beyond the number of vectors repeat samples.
        """
        r = z.reshape(-1, self.dim).float()
        if r.shape[0] == 0:
            raise ValueError("kmeans_init needs at least one latent vector")
        g = torch.Generator(device="cpu").manual_seed(seed)
        for q in range(self.num_quantizers):
            pick = torch.randperm(r.shape[0], generator=g)[: self.codebook_size]
            pick = pick.repeat(-(-self.codebook_size // pick.numel()))[: self.codebook_size]
            cb = r[pick.to(r.device)].clone()  # (K, D)
            for _ in range(iters):
                d = r.pow(2).sum(-1, keepdim=True) - 2 * r @ cb.T + cb.pow(2).sum(-1)
                idx = d.argmin(-1)
                sums = torch.zeros_like(cb).index_add_(0, idx, r)
                ones = torch.ones_like(idx, dtype=r.dtype)
                counts = torch.zeros(cb.shape[0], device=r.device).index_add_(0, idx, ones)
                hit = counts > 0
                cb[hit] = sums[hit] / counts[hit, None]
            self.codebooks[q].copy_(cb)
            r = r - cb[self._nearest(r, q)]

    @torch.no_grad()
    def replace_dead_codes(self, z: torch.Tensor, min_usage: float = 1.0, seed: int = 0) -> int:
        """Re-seed entries used fewer than `min_usage` times since the last call with random residuals of z;
        reset the usage counters; return how many entries were replaced."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        r, replaced = z.reshape(-1, self.dim).float(), 0
        for q in range(self.num_quantizers):
            dead = (self.usage[q] < min_usage).nonzero().flatten()
            if dead.numel() and r.shape[0]:
                pick = torch.randint(0, r.shape[0], (dead.numel(),), generator=g).to(r.device)
                self.codebooks[q][dead] = r[pick].to(self.codebooks.dtype)
                replaced += dead.numel()
            if r.shape[0]:
                r = r - self.codebooks[q][self._nearest(r, q)]
        self.usage.zero_()
        return replaced


class CodecDecoder(nn.Module):
    """Small causal training decoder: z_q (B, T, D) -> waveform (B, T hop); frame t reads frames <= t only."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        c = self.config = config
        self.inp = CausalConv(c.codebook_dim, c.decoder_width, 3)
        self.stack = nn.ModuleList(CausalResUnit(c.decoder_width, 2**i) for i in range(2))
        self.out = nn.Linear(c.decoder_width, c.hop)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        x = self.inp(z_q.transpose(1, 2))
        for unit in self.stack:
            x = unit(x)
        frames = self.out(F.gelu(x).transpose(1, 2))  # (B, T, hop)
        return torch.tanh(frames).flatten(1)  # (B, T hop)


@dataclass
class CodecOutput:
    codes: torch.Tensor  # (B, Q, T)
    z: torch.Tensor  # encoder latents (B, T, D)
    z_q: torch.Tensor  # straight-through quantised latents (B, T, D)
    wave: torch.Tensor | None  # training decoder's reconstruction (B, T hop), None without decoder
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor


class AudioTokenizer(nn.Module):
    """CodecEncoder + ResidualVQ (+ optional CodecDecoder for training): waveform -> codes (B, Q, T)."""

    def __init__(self, config: CodecConfig, decoder: bool = True):
        super().__init__()
        self.config = config
        self.encoder = CodecEncoder(config)
        self.quantizer = ResidualVQ(config.num_quantizers, config.codebook_size, config.codebook_dim)
        self.decoder = CodecDecoder(config) if decoder else None

    def check_compatible(self, code2wav: Code2WavConfig) -> None:
        """Raise ValueError unless Code2Wav(code2wav) consumes these codes at this frame rate."""
        c = self.config
        if (c.num_quantizers, c.codebook_size, c.hop) != (
                code2wav.num_quantizers, code2wav.codebook_size, code2wav.total_upsample):
            raise ValueError(f"codec (Q={c.num_quantizers}, K={c.codebook_size}, hop={c.hop}) does not match "
                             f"Code2Wav (Q={code2wav.num_quantizers}, K={code2wav.codebook_size}, "
                             f"hop={code2wav.total_upsample})")

    def forward(self, wave: torch.Tensor, sample_rate: int | None = None, n_q: int | None = None) -> CodecOutput:
        wave = check_waveform(wave, sample_rate, self.config.sample_rate)
        z = self.encoder(wave)
        vq = self.quantizer(z, n_q)
        recon = self.decoder(vq.z_q) if self.decoder is not None else None
        return CodecOutput(vq.codes, z, vq.z_q, recon, vq.commitment_loss, vq.codebook_loss)

    @torch.no_grad()
    def encode(self, wave: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Waveform (N,), (B, N) or (B, 1, N) at 24 kHz -> codes (B, Q, ceil(N / hop)), torch.long in [0, K)."""
        wave = check_waveform(wave, sample_rate, self.config.sample_rate)
        return self.quantizer.encode(self.encoder(wave))

    def training_losses(self, wave: torch.Tensor, commitment_weight: float = 0.25, stft_weight: float = 1.0,
                        n_q: int | None = None) -> dict[str, torch.Tensor]:
        """{'reconstruction', 'stft', 'commitment', 'codebook', 'total'} for one batch (needs the decoder)."""
        if self.decoder is None:
            raise ValueError("training_losses needs the training decoder (AudioTokenizer(..., decoder=True))")
        wave = check_waveform(wave)
        out = self(wave, n_q=n_q)
        target = F.pad(wave, (0, out.wave.shape[-1] - wave.shape[-1]))
        losses = {
            "reconstruction": reconstruction_loss(out.wave, target, self.config.sample_rate),
            "stft": multi_resolution_stft_loss(out.wave, target),
            "commitment": out.commitment_loss,
            "codebook": out.codebook_loss,
        }
        losses["total"] = (losses["reconstruction"] + stft_weight * losses["stft"]
                           + commitment_weight * losses["commitment"] + losses["codebook"])
        return losses


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.shape[-1] == 0:
        raise ValueError("cannot compute a loss on empty waveforms")
    return pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])


def _magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, center=True, pad_mode="constant",
                      return_complex=True)  # (B, F, frames)
    return (spec.real.pow(2) + spec.imag.pow(2)).clamp(min=1e-7).sqrt()  # finite gradient at silence


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor,
                               ffts: tuple[int, ...] = (512, 1024, 2048)) -> torch.Tensor:
    """Mean over resolutions of spectral convergence ||S_t - S_p||_F / ||S_t||_F plus mean |log S_t - log S_p|
    (Hann windows of n_fft, hop n_fft / 4); pred and target (..., N) of equal shape; 0 when they are equal."""
    pred, target = _check_pair(pred, target)
    total = pred.new_zeros(())
    for n_fft in ffts:
        p, t = _magnitude(pred, n_fft), _magnitude(target, n_fft)
        sc = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-7)
        total = total + sc + F.l1_loss(p.log(), t.log())
    return total / len(ffts)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, sample_rate: int = 24000,
                        mel_weight: float = 1.0, n_fft: int = 1024, n_mels: int = 80) -> torch.Tensor:
    """Waveform L1 + mel_weight * L1 between log-mel spectrograms (Hann n_fft, hop n_fft / 4, log10 of power
    floored at 1e-5); pred and target (..., N) of equal shape."""
    pred, target = _check_pair(pred, target)

    def mel(x):
        return (_magnitude(x, n_fft).pow(2).transpose(1, 2)
                @ _mel_filters(n_fft, n_mels, sample_rate, x.device)).clamp(min=1e-5).log10()

    return F.l1_loss(pred, target) + mel_weight * F.l1_loss(mel(pred), mel(target))
