"""AuT audio encoder: stride-2 Conv2D stem over log-mel chunks, sinusoidal positions, windowed attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioConfig


def conv_out_len(frames: int | torch.Tensor, blocks: int) -> int | torch.Tensor:
    """Time steps left after `blocks` stride-2, kernel-3, padding-1 convolutions (0 stays 0)."""
    for _ in range(blocks):
        frames = (frames - 1) // 2 + 1
    return frames


def num_audio_tokens(frames: int | torch.Tensor, config: AudioConfig) -> int | torch.Tensor:
    """Encoder tokens for `frames` mel frames: whole chunks at a fixed count, the remainder chunk by the conv rule."""
    chunk = config.chunk_frames
    per_chunk = conv_out_len(chunk, config.num_downsample)
    rest = frames % chunk
    return conv_out_len(rest, config.num_downsample) + (frames // chunk) * per_chunk


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper-style table (length, channels): sin of the first half of frequencies, then cos."""
    step = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-step * torch.arange(channels // 2).float())
    t = torch.arange(length)[:, None] * inv[None, :]  # (length, channels / 2)
    return torch.cat([t.sin(), t.cos()], dim=1)


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer with biased projections and bidirectional attention inside each window."""

    def __init__(self, d_model: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, nn.Linear(d_model, d_model))
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn)
        self.fc2 = nn.Linear(ffn, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (W, L, D) windows padded to L; key_mask (W, 1, 1, L) True where a key is real."""
        w, n, d = x.shape
        a = self.self_attn
        h = self.self_attn_layer_norm(x)
        q, k, v = (p(h).view(w, n, self.heads, -1).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (W, heads, L, hd)
        x = x + a.out_proj(o.transpose(1, 2).reshape(w, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class AudioEncoder(nn.Module):
    """Log-mel (B, mels, T) -> packed audio tokens (sum of tokens, output_dim) in the Thinker's width."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = c = config
        hid = c.downsample_hidden_size
        for i in range(c.num_downsample):
            setattr(self, f"conv2d{i + 1}", nn.Conv2d(1 if i == 0 else hid, hid, 3, 2, padding=1))
        freq = conv_out_len(c.num_mel_bins, c.num_downsample)
        self.conv_out = nn.Linear(hid * freq, c.d_model, bias=False)
        self.register_buffer("positions", torch.empty(c.max_source_positions, c.d_model), persistent=False)
        self.init_buffers()
        self.layers = nn.ModuleList(EncoderLayer(c.d_model, c.encoder_attention_heads, c.encoder_ffn_dim)
                                    for _ in range(c.encoder_layers))
        self.ln_post = nn.LayerNorm(c.d_model)
        self.proj1 = nn.Linear(c.d_model, c.d_model)
        self.proj2 = nn.Linear(c.d_model, c.output_dim)

    def init_buffers(self) -> None:
        """(Re)compute the sinusoidal position table in fp32 on the module's device."""
        self.positions = sinusoids(self.config.max_source_positions, self.config.d_model).to(self.positions.device)

    def token_counts(self, frames: torch.Tensor) -> torch.Tensor:
        """Tokens per audio for mel frame counts (B,)."""
        return num_audio_tokens(frames, self.config)

    def stem(self, chunks: torch.Tensor) -> torch.Tensor:
        """Mel chunks (N, mels, L) -> per-chunk embeddings with positions (N, L', d_model)."""
        x = chunks.unsqueeze(1).to(self.conv_out.weight.dtype)  # (N, 1, mels, L)
        for i in range(self.config.num_downsample):
            x = F.gelu(getattr(self, f"conv2d{i + 1}")(x))  # (N, C, F', L')
        n, c, f, t = x.shape
        x = self.conv_out(x.permute(0, 3, 1, 2).reshape(n, t, c * f))  # (N, L', d_model)
        return x + self.positions[:t].to(x.dtype)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | list[int],
                window_frames: int | None = None) -> torch.Tensor:
        """features (B, mels, T) with valid frame counts `lengths` -> tokens (sum_b tokens_b, output_dim).

        Attention runs inside windows of `window_frames` mel frames (default n_window_infer) of each audio.
        Windows are independent, so long audio is encoded a block of windows at a time: memory stays bounded."""
        lengths = [int(n) for n in lengths]
        size = self.config.chunk_frames
        pad_to = max(min(size, n - s) for n in lengths for s in range(0, n, size))  # the batch's longest chunk
        window = self.window_tokens(conv_out_len(pad_to, self.config.num_downsample), window_frames)
        window_frames = window_frames or self.config.n_window_infer
        step = self.block_frames(window_frames)
        outs = [self.encode_segment(features[b, :, s : min(n, s + step)], pad_to, window)
                for b, n in enumerate(lengths) for s in range(0, n, step)]
        return torch.cat(outs)

    def block_frames(self, window_frames: int) -> int:
        """Mel frames encoded per call on long audio: as many whole windows as fill `conv_chunksize` chunks."""
        return window_frames * max(1, self.config.conv_chunksize // (window_frames // self.config.chunk_frames))

    def encode_segment(self, mel: torch.Tensor, pad_to: int, window: int) -> torch.Tensor:
        """One audio's frames (mels, T), starting at a window boundary -> its tokens (n, output_dim).

        Chunks are right-padded with zeros to `pad_to` frames, as the reference pads to the batch's longest chunk."""
        size = self.config.chunk_frames
        pieces = [mel[:, s : s + size] for s in range(0, mel.shape[1], size)]
        chunks = torch.stack([F.pad(p, (0, pad_to - p.shape[1])) for p in pieces])  # (N, mels, pad_to)
        x = self.stem(chunks)  # (N, L', d)
        valid = [conv_out_len(p.shape[1], self.config.num_downsample) for p in pieces]
        tokens = torch.cat([x[i, :v] for i, v in enumerate(valid)])  # (n, d): padding steps dropped
        return self.encode_tokens(tokens, [tokens.shape[0]], window)

    def window_tokens(self, longest_chunk_tokens: int, window_frames: int | None) -> int:
        """Tokens per attention window: windows hold whole chunks, sized by the batch's longest chunk."""
        frames = window_frames or self.config.n_window_infer
        if frames <= 0 or frames % self.config.chunk_frames:
            raise ValueError(f"attention window of {frames} mel frames is not a positive multiple of the "
                             f"{self.config.chunk_frames}-frame chunk")
        return longest_chunk_tokens * (frames // self.config.chunk_frames)

    def encode_tokens(self, tokens: torch.Tensor, per_audio: list[int], window: int) -> torch.Tensor:
        """Transformer over stem tokens (N_tok, d): windows of `window` tokens that never cross audios."""
        bounds = []
        start = 0
        for n in per_audio:
            bounds += [(s, min(s + window, start + n)) for s in range(start, start + n, window)]
            start += n
        width = max(b - a for a, b in bounds)
        index = torch.full((len(bounds), width), -1, dtype=torch.long)
        for w, (a, b) in enumerate(bounds):
            index[w, : b - a] = torch.arange(a, b)
        real = index >= 0  # (W, L)
        x = tokens[index.clamp(min=0)]  # (W, L, d)
        key_mask = real[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        x = x[real]  # (N_tok, d) in the original order
        return self.proj2(F.gelu(self.proj1(self.ln_post(x))))
