"""Code2Wav: RVQ codec frames (B, Q, T) at 12.5 Hz -> 24 kHz waveform, offline and frame-by-frame streaming.

Pipeline (Qwen3-Omni `Qwen3OmniMoeCode2Wav`): mean of the Q code embeddings -> causal sliding-window
transformer (72 frames) -> per upsampling ratio f (transposed conv xf + causal ConvNeXt) -> head. Two heads
(`Code2WavConfig.head`):
- "conv" (the reference decoder, Qwen3-Omni layout): causal conv -> 4 decoder blocks (SnakeBeta, transposed
  conv x r, 3 dilated residual units) -> SnakeBeta -> causal conv.
- "istft" (Vocos-style, trains fast on CPU): causal conv k=7 -> LayerNorm -> causal ConvNeXt blocks ->
  LayerNorm -> Linear to log-magnitude and phase of n_fft // 2 + 1 bins -> causal inverse STFT.
Either way the waveform is clamped to [-1, 1].

Everything is causal except what the head holds back. Conv head: its transposed convs (kernel 2r, stride r,
r samples trimmed at both ends) each read the NEXT input sample, so T frames give 1920 T - 555 final samples
(release config). iSTFT head: head frame j (one per hop h of the post-upsampling stack) is the windowed
inverse FFT of n_fft samples ENDING at its own hop, [(j + 1) h - n_fft, (j + 1) h), overlap-added; a sample
is final once the last frame overlapping it exists, so T frames give total_upsample * T - (n_fft - h)
samples (1920 T - 720 for n_fft 960, hop 240), and samples before 0 are dropped. `num_samples(T)` gives the
count for either head; those samples never change when more frames arrive, and the stream emits exactly them
after each push (the last `latency_samples` of each frame's span wait for the next frame: 555 = 23.1 ms for
the conv head, n_fft - h = 30 ms for the iSTFT head). Nothing is pending at the end, so flush() is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..modules.mlp import MLP
from ..modules.norm import RMSNorm
from ..modules.rope import MultimodalRotary, apply_rotary


HEADS = ("conv", "istft")


@dataclass
class Code2WavConfig:
    """Code2Wav hyper-parameters; names follow HF Qwen3OmniMoeCode2WavConfig (defaults = release)."""

    codebook_size: int = 2048
    num_quantizers: int = 16
    hidden_size: int = 1024
    num_hidden_layers: int = 8
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    intermediate_size: int = 3072
    sliding_window: int = 72
    layer_scale_initial_scale: float = 0.01
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8000
    upsampling_ratios: tuple[int, ...] = (2, 2)
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    decoder_dim: int = 1536
    head: str = "conv"  # "conv": reference SnakeBeta decoder; "istft": Vocos-style ConvNeXt + inverse STFT
    istft_n_fft: int = 960  # iSTFT window (Hann, periodic); a multiple of istft_hop, at least 2 hops
    istft_hop: int = 240  # samples per head frame: total_upsample = prod(upsampling_ratios) * istft_hop
    istft_dim: int = 256  # ConvNeXt width at the post-upsampling rate
    istft_layers: int = 2  # ConvNeXt blocks

    def __post_init__(self):
        if self.head not in HEADS:
            raise ConfigError(f"Code2Wav head must be one of {HEADS}, got {self.head!r}")
        if self.head == "istft" and (self.istft_hop < 1 or self.istft_n_fft % self.istft_hop
                                     or self.istft_n_fft < 2 * self.istft_hop):
            raise ConfigError(f"istft_n_fft ({self.istft_n_fft}) must be a multiple of istft_hop "
                              f"({self.istft_hop}) and at least twice it")

    @classmethod
    def istft_demo(cls, **kw) -> Code2WavConfig:
        """~3.7M-parameter iSTFT-head config for CPU training: 8 x 1024 codes at 12.5 Hz -> 24 kHz via 100 Hz frames."""
        demo = dict(codebook_size=1024, num_quantizers=8, hidden_size=192, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, intermediate_size=384, upsampling_ratios=(2, 4),
                    head="istft", istft_n_fft=960, istft_hop=240, istft_dim=128, istft_layers=2)
        return cls(**(demo | kw))

    @classmethod
    def from_hf(cls, d: dict) -> Code2WavConfig:
        """From a code2wav_config dict (config.json or PreTrainedConfig.to_dict())."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        rope = d.get("rope_parameters") or {}
        if "rope_theta" not in kw and "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        for name in ("upsampling_ratios", "upsample_rates"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def total_upsample(self) -> int:
        """Waveform samples per code frame (1920)."""
        head = self.istft_hop if self.head == "istft" else math.prod(self.upsample_rates)
        return math.prod(self.upsampling_ratios) * head

    def num_samples(self, frames: int) -> int:
        """Offline output length for T = `frames` code frames: 1920 T - 555 for the release conv head,
        max(total_upsample T - (istft_n_fft - istft_hop), 0) for the iSTFT head."""
        if self.head == "istft":
            return max(frames * self.total_upsample - (self.istft_n_fft - self.istft_hop), 0)
        n = frames * math.prod(self.upsampling_ratios)
        for r in self.upsample_rates:
            n = max(n - 1, 0) * r
        return n

    @property
    def latency_samples(self) -> int:
        """Samples of a frame's span that wait for the next frame (555 for the release config)."""
        return self.total_upsample - self.num_samples(1)


@dataclass
class Code2WavState:
    """Streaming state: frames seen so far and each module's left context (conv tails, KV windows, iSTFT overlap)."""

    frames: int = 0
    context: dict[nn.Module, object] = field(default_factory=dict)


class CausalConv(nn.Module):
    """Stride-1 Conv1d left-padded with (kernel - 1) * dilation zeros, or with the stream's previous inputs."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, dilation=dilation, groups=groups)
        self.pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        if state is None:
            x = F.pad(x, (self.pad, 0))  # (B, C, pad + T)
        else:
            tail = state.context.get(self)
            if tail is None:
                tail = x.new_zeros(*x.shape[:2], self.pad)
            x = torch.cat([tail, x], dim=-1)  # (B, C, pad + T)
            state.context[self] = x[..., x.shape[-1] - self.pad :]
        return self.conv(x)  # (B, C', T)


class CausalTransConv(nn.Module):
    """ConvTranspose1d (kernel k, stride r) with k - r samples trimmed from both ends: T -> (T + 1 - k/r) r."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int):
        super().__init__()
        if not stride <= kernel_size <= 2 * stride:
            raise ValueError(f"CausalTransConv needs stride <= kernel <= 2 * stride, got {kernel_size}, {stride}")
        self.conv = nn.ConvTranspose1d(cin, cout, kernel_size, stride=stride)
        self.stride = stride
        self.trim = kernel_size - stride
        self.keep = 1 if kernel_size > stride else 0  # past inputs that reach new outputs

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        if state is None:
            y = self.conv(x)  # (B, C', (T - 1) r + k)
            return y[..., self.trim : y.shape[-1] - self.trim]
        past = state.context.get(self)
        if past is None:  # first push: same slice as offline, up to the last final sample
            start = self.trim
        else:
            x = torch.cat([past, x], dim=-1)  # (B, C, keep + T)
            start = past.shape[-1] * self.stride
        state.context[self] = x[..., x.shape[-1] - self.keep :]
        y = self.conv(x)
        return y[..., start : x.shape[-1] * self.stride]  # outputs no later input can touch


class SnakeBeta(nn.Module):
    """x + sin^2(x e^alpha) / (e^beta + 1e-9), per channel, alpha and beta in log space; stateless."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        alpha = self.alpha.exp()[None, :, None]  # (1, C, 1)
        beta = self.beta.exp()[None, :, None]
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv k=7 -> LayerNorm -> Linear 4x -> GELU -> Linear -> gamma, residual."""

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = CausalConv(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        h = self.dwconv(x, state).transpose(1, 2)  # (B, T, C)
        h = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        return x + h.transpose(1, 2)  # (B, C, T)


class LayerScale(nn.Module):
    """Learned per-channel scale of a residual branch."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class SlidingAttention(nn.Module):
    """Causal attention over the last `sliding_window` frames (self included), RoPE, GQA."""

    def __init__(self, c: Code2WavConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.window = c.sliding_window
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                state: Code2WavState | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2), cos, sin)  # (B, H, T, D)
        k = apply_rotary(self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2), cos, sin)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        past = 0
        if state is not None:
            if self in state.context:
                pk, pv = state.context[self]
                past = pk.shape[2]
                k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)  # (B, Hkv, past + T, D)
            keep = self.window - 1
            state.context[self] = (k[:, :, max(k.shape[2] - keep, 0) :], v[:, :, max(v.shape[2] - keep, 0) :])
        qi = torch.arange(T, device=x.device)[:, None] + past  # query i at key index past + i
        kj = torch.arange(k.shape[2], device=x.device)[None, :]
        allowed = (kj <= qi) & (kj > qi - self.window)  # (T, past + T)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, past + T, D)
        scores = (q @ k.transpose(2, 3)) * self.head_dim**-0.5
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        out = scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))  # (B, T, hidden)


class TransformerLayer(nn.Module):
    """Pre-norm attention and SwiGLU, each residual branch scaled by LayerScale."""

    def __init__(self, c: Code2WavConfig):
        super().__init__()
        self.self_attn = SlidingAttention(c)
        self.mlp = MLP(c.hidden_size, c.intermediate_size)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(c.hidden_size, c.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(c.hidden_size, c.layer_scale_initial_scale)

    def forward(self, x, cos, sin, state: Code2WavState | None = None) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, state))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class PreTransformer(nn.Module):
    """Sliding-window causal transformer over frame embeddings; positions continue across pushes."""

    def __init__(self, c: Code2WavConfig):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rotary = MultimodalRotary(c.head_dim, c.rope_theta)

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        start = 0 if state is None else state.frames
        pos = torch.arange(start, start + x.shape[1], device=x.device)[None]  # (1, T)
        cos, sin = self.rotary(pos, x.dtype)  # (1, T, D)
        for layer in self.layers:
            x = layer(x, cos, sin, state)
        return self.norm(x)  # (B, T, hidden)


class ResidualUnit(nn.Module):
    """SnakeBeta -> dilated causal conv k=7 -> SnakeBeta -> conv k=1, residual."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x), state)), state)


class DecoderBlock(nn.Module):
    """SnakeBeta -> transposed conv x rate (halving channels) -> residual units with dilation 1, 3, 9."""

    def __init__(self, cin: int, cout: int, rate: int):
        super().__init__()
        units = [ResidualUnit(cout, d) for d in (1, 3, 9)]
        self.block = nn.ModuleList([SnakeBeta(cin), CausalTransConv(cin, cout, 2 * rate, rate), *units])

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        for m in self.block:
            x = m(x, state)
        return x


class ISTFTHead(nn.Module):
    """Vocos-style causal head: (B, hidden, M) at the post-upsampling rate -> (B, 1, samples) by causal iSTFT.

    Head frame j's spectrum (magnitude exp(a) clipped at 100, phase p) is inverse-FFT'd to n_fft samples,
    multiplied by the synthesis window w / env and added at [(j + 1) hop - n_fft, (j + 1) hop). w is the
    periodic Hann window and env[n] = sum_k w[(n + k hop) mod n_fft]^2 its steady-state squared-window sum
    (1.5 for n_fft = 4 hop), a fixed normalisation: if spectrum j is the rfft of w times a signal over frame
    j's span, the overlap-add returns that signal.
    Every emitted sample has its full overlap, so offline and streaming agree exactly.
    """

    def __init__(self, c: Code2WavConfig):
        super().__init__()
        self.n_fft, self.hop = c.istft_n_fft, c.istft_hop
        self.embed = CausalConv(c.hidden_size, c.istft_dim, 7)
        self.norm = nn.LayerNorm(c.istft_dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(c.istft_dim, 1 / max(c.istft_layers, 1))
                                    for _ in range(c.istft_layers))
        self.final_norm = nn.LayerNorm(c.istft_dim, eps=1e-6)
        self.out = nn.Linear(c.istft_dim, 2 * (c.istft_n_fft // 2 + 1))
        self.register_buffer("window", torch.empty(c.istft_n_fft), persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute the synthesis window w / env (n_fft,) in fp32."""
        w = torch.hann_window(self.n_fft, device=self.window.device)
        env = w.pow(2).view(-1, self.hop).sum(0)  # (hop,), steady-state sum of squared windows
        self.window = w / env.repeat(self.n_fft // self.hop)

    def forward(self, x: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        h = self.norm(self.embed(x, state).transpose(1, 2)).transpose(1, 2)  # (B, dim, M)
        for block in self.blocks:
            h = block(h, state)
        h = self.out(self.final_norm(h.transpose(1, 2))).float()  # (B, M, 2 bins)
        mag, phase = h.chunk(2, dim=-1)  # (B, M, bins)
        mag = mag.exp().clamp(max=1e2)
        return self.synthesize(torch.complex(mag * phase.cos(), mag * phase.sin()), state).to(x.dtype)

    def synthesize(self, spec: torch.Tensor, state: Code2WavState | None = None) -> torch.Tensor:
        """Complex spectra (B, M, n_fft // 2 + 1) -> the samples they make final (B, 1, n), by overlap-add."""
        frames = torch.fft.irfft(spec, n=self.n_fft) * self.window  # (B, M, n_fft)
        B, M, _ = frames.shape
        total = (M - 1) * self.hop + self.n_fft  # positions [hop - n_fft, M hop) past the stream's start
        y = F.fold(frames.transpose(1, 2), (1, total), (1, self.n_fft), stride=(1, self.hop)).view(B, total)
        pending = self.n_fft - self.hop  # later frames still overlap the last `pending` positions
        if state is None:  # stream start: drop the positions before 0
            return y[:, pending : M * self.hop].unsqueeze(1)
        tail, skip = state.context.get(self, (y.new_zeros(B, pending), pending))
        y = torch.cat([y[:, :pending] + tail, y[:, pending:]], dim=-1)  # (B, M hop + pending)
        state.context[self] = (y[:, M * self.hop :], max(skip - M * self.hop, 0))
        return y[:, min(skip, M * self.hop) : M * self.hop].unsqueeze(1)  # (B, 1, final)


class Code2Wav(nn.Module):
    """Codes (B, Q, T) -> waveform (B, 1, num_samples(T)); conv head: state_dict names match HF
    Qwen3OmniMoeCode2Wav; istft head: `head.*` replaces `decoder.*`."""

    def __init__(self, config: Code2WavConfig):
        super().__init__()
        c = self.config = config
        if c.head == "conv" and c.decoder_dim % 2 ** len(c.upsample_rates):
            raise ValueError(f"decoder_dim {c.decoder_dim} must be divisible by 2**{len(c.upsample_rates)}")
        self.pre_transformer = PreTransformer(c)
        self.code_embedding = nn.Embedding(c.codebook_size * c.num_quantizers, c.hidden_size)
        self.register_buffer("code_offset", torch.empty(1, c.num_quantizers, 1, dtype=torch.long), persistent=False)
        self.init_buffers()
        self.upsample = nn.ModuleList(
            nn.ModuleList([CausalTransConv(c.hidden_size, c.hidden_size, f, f), ConvNeXtBlock(c.hidden_size)])
            for f in c.upsampling_ratios)
        if c.head == "istft":
            self.head = ISTFTHead(c)
            return
        dims = [c.decoder_dim // 2**i for i in range(len(c.upsample_rates) + 1)]
        blocks = [DecoderBlock(dims[i], dims[i + 1], r) for i, r in enumerate(c.upsample_rates)]
        self.decoder = nn.ModuleList(
            [CausalConv(c.hidden_size, c.decoder_dim, 7), *blocks, SnakeBeta(dims[-1]), CausalConv(dims[-1], 1, 7)])

    def init_buffers(self) -> None:
        """(Re)compute each quantizer's offset into the shared embedding table, (1, Q, 1)."""
        c = self.config
        self.code_offset = (torch.arange(c.num_quantizers, device=self.code_offset.device)
                            * c.codebook_size).view(1, -1, 1)

    def check_codes(self, codes: torch.Tensor) -> None:
        """Raise ValueError unless codes is an integer (B, Q, T) tensor of in-range codebook entries."""
        c = self.config
        if codes.dim() != 3 or codes.shape[1] != c.num_quantizers:
            raise ValueError(f"codes must be (batch, {c.num_quantizers} quantizers, frames), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= c.codebook_size):
            raise ValueError(f"codes must lie in [0, {c.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")

    def _decode(self, codes: torch.Tensor, state: Code2WavState | None) -> torch.Tensor:
        x = self.code_embedding(codes + self.code_offset).mean(1)  # (B, T, hidden)
        return self._decode_embeddings(x, state)

    def decode_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Offline decode of frame embeddings x (B, T, hidden), i.e. what forward() computes after averaging
        the Q code embeddings, -> wav (B, 1, config.num_samples(T)). For training Code2Wav from continuous
        (e.g. straight-through quantised) latents: forward(codes) == decode_embeddings(code_embedding(codes +
        code_offset).mean(1))."""
        if x.dim() != 3 or x.shape[-1] != self.config.hidden_size:
            raise ValueError(f"embeddings must be (batch, frames, {self.config.hidden_size}), got {tuple(x.shape)}")
        return self._decode_embeddings(x, None)

    def _decode_embeddings(self, x: torch.Tensor, state: Code2WavState | None) -> torch.Tensor:
        x = self.pre_transformer(x, state).transpose(1, 2)  # (B, hidden, T)
        for trans, convnext in self.upsample:
            x = convnext(trans(x, state), state)  # (B, hidden, T * f)
        if self.config.head == "istft":
            return self.head(x, state).clamp(-1, 1)  # (B, 1, samples)
        for m in self.decoder:
            if x.shape[-1] == 0:  # a first frame too short to finalize any sample (small upsampling ratios)
                return x.new_zeros(x.shape[0], 1, 0)
            x = m(x, state)  # (B, 1, samples) at the end
        return x.clamp(-1, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Offline decode: codes (B, Q, T) -> wav (B, 1, config.num_samples(T))."""
        self.check_codes(codes)
        return self._decode(codes, None)

    def chunked_decode(self, codes: torch.Tensor, chunk_size: int = 300, left_context_size: int = 25) -> torch.Tensor:
        """HF's chunked decode: windows of chunk_size frames re-run with left_context_size frames before them."""
        wavs, start, total = [], 0, codes.shape[-1]
        while start < total:
            end = min(start + chunk_size, total)
            ctx = left_context_size if start - left_context_size > 0 else start
            wav = self(codes[..., start - ctx : end])
            wavs.append(wav[..., ctx * self.config.total_upsample :])
            start = end
        return torch.cat(wavs, dim=-1)

    def step(self, codes: torch.Tensor, state: Code2WavState) -> torch.Tensor:
        """Streaming decode of new frames (B, Q) or (B, Q, T) -> the samples they make final (B, 1, n)."""
        if codes.dim() == 2:
            codes = codes.unsqueeze(-1)
        self.check_codes(codes)
        if codes.shape[-1] == 0:
            return self.code_embedding.weight.new_zeros(codes.shape[0], 1, 0)
        wav = self._decode(codes, state)
        state.frames += codes.shape[-1]
        return wav


class Code2WavStream:
    """Frame-by-frame Code2Wav whose concatenated output equals the offline forward of all frames pushed."""

    def __init__(self, model: Code2Wav, batch_size: int = 1):
        self.model = model
        self.batch_size = batch_size
        self.state = Code2WavState()
        self.samples = 0

    @property
    def latency_samples(self) -> int:
        """Samples of the latest frame's span held back until the next frame (555 for the release config)."""
        return self.model.config.latency_samples

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """New frames (B, Q) or (B, Q, T) -> new PCM samples (B, 1, n), n = total so far - emitted so far."""
        if codes.shape[0] != self.batch_size:
            raise ValueError(f"stream was opened for batch {self.batch_size}, got codes of batch {codes.shape[0]}")
        wav = self.model.step(codes, self.state)
        self.samples += wav.shape[-1]
        return wav

    def flush(self) -> torch.Tensor:
        """End of the code sequence: every sample is already out, so (B, 1, 0); the stream starts afresh."""
        self.state = Code2WavState()
        self.samples = 0
        return self.model.code_embedding.weight.new_zeros(self.batch_size, 1, 0)
