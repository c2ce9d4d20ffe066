"""Gated DeltaNet: causal depthwise conv, L2-normalised q/k, gated delta rule (chunked prefill, recurrent decode)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import DeltaNetState
from ..kernels import fla
from .norm import GatedRMSNorm


def _prepare(q, k, v, g, beta):
    """Expand q/k heads to value heads, cast to fp32 (B, H, S, d), L2-normalise q/k and scale q."""
    rep = v.shape[2] // k.shape[2]
    if rep > 1:  # value head j reads key head j // rep
        q, k = q.repeat_interleave(rep, dim=2), k.repeat_interleave(rep, dim=2)
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, S, d)
    g, beta = g.transpose(1, 2).float(), beta.transpose(1, 2).float()  # (B, H, S)
    q = q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6) * q.shape[-1] ** -0.5
    k = k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)
    return q, k, v, g, beta


def chunk_gated_delta_rule(q, k, v, g, beta, state=None, chunk_size: int = 64):
    """q, k (B, S, Hk, dk), v (B, S, Hv, dv), g/beta (B, S, Hv) -> out (B, S, Hv, dv) in v.dtype, fp32 state.

    The S positions are cut into the fewest chunks of at most `chunk_size`, all of one length (so a short training
    sequence is one chunk, not a padded one); without an incoming state the first chunk skips the state terms."""
    dtype = v.dtype
    b, s = v.shape[:2]
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    h, dk, dv = v.shape[1], k.shape[-1], v.shape[-1]
    n = -(-s // chunk_size)
    c = -(-s // n)
    pad = n * c - s  # zero tail: k = v = beta = g = 0 leaves the state untouched
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    q, k, v = (t.reshape(b, h, n, c, -1) for t in (q, k, v))  # (B, H, N, C, d)
    g, beta = g.reshape(b, h, n, c), beta.reshape(b, h, n, c)

    cum = g.cumsum(-1)  # (B, H, N, C) log-decay from chunk start to each position
    lower = torch.ones(c, c, dtype=torch.bool, device=v.device).tril()
    decay = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~lower, float("-inf")).exp()  # (B,H,N,C,C)
    kb = k * beta.unsqueeze(-1)
    # Intra-chunk delta rule as a unit-lower-triangular system (I + A) X = RHS, A = strictly lower (beta k k^T * decay)
    a = (kb @ k.transpose(-1, -2)) * decay
    u = torch.linalg.solve_triangular(a, v * beta.unsqueeze(-1), upper=False, unitriangular=True)
    first = 0 if state is not None else 1  # chunks before `first` start from a zero state: no state terms
    w = torch.linalg.solve_triangular(a[:, :, first:], (kb * cum.exp().unsqueeze(-1))[:, :, first:], upper=False,
                                      unitriangular=True)  # (B, H, N - first, C, dk)
    attn = (q @ k.transpose(-1, -2)) * decay  # (B, H, N, C, C) causal intra-chunk scores
    q_dec = q * cum.exp().unsqueeze(-1)
    k_dec = k * (cum[..., -1:] - cum).exp().unsqueeze(-1)
    chunk_decay = cum[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1)

    st = v.new_zeros(b, h, dk, dv) if state is None else state.float()
    outs = []
    for i in range(n):
        if i < first:
            v_new = u[:, :, i]  # (B, H, C, dv)
            outs.append(attn[:, :, i] @ v_new)
            st = k_dec[:, :, i].transpose(-1, -2) @ v_new
            continue
        v_new = u[:, :, i] - w[:, :, i - first] @ st
        outs.append(q_dec[:, :, i] @ st + attn[:, :, i] @ v_new)
        st = st * chunk_decay[:, :, i] + k_dec[:, :, i].transpose(-1, -2) @ v_new
    out = torch.stack(outs, dim=2).reshape(b, h, n * c, dv)[:, :, :s].transpose(1, 2)  # (B, S, H, dv)
    return out.to(dtype), st


def recurrent_gated_delta_rule(q, k, v, g, beta, state=None):
    """Token-by-token gated delta rule (used for decode); same arguments and results as the chunked form."""
    dtype = v.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    b, h, s, dv = v.shape
    st = v.new_zeros(b, h, k.shape[-1], dv) if state is None else state.float()
    out = torch.empty_like(v)
    for t in range(s):
        st = st * g[:, :, t].exp()[..., None, None]
        k_t = k[:, :, t]  # (B, H, dk)
        read = torch.einsum("bhkv,bhk->bhv", st, k_t)
        delta = (v[:, :, t] - read) * beta[:, :, t, None]
        st = st + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        out[:, :, t] = torch.einsum("bhkv,bhk->bhv", st, q[:, :, t])
    return out.transpose(1, 2).to(dtype), st


def gated_delta_rule(q, k, v, g, beta, state=None):
    """Dispatch: flash-linear-attention kernels on CUDA when installed, else recurrent (S == 1) or chunked torch."""
    if q.is_cuda and fla.available():
        return fla.gated_delta_rule(q, k, v, g, beta, state)
    if q.shape[1] == 1:
        return recurrent_gated_delta_rule(q, k, v, g, beta, state)
    return chunk_gated_delta_rule(q, k, v, g, beta, state)


class GatedDeltaNet(nn.Module):
    """The linear-attention token mixer of the Qwen3.5 hybrid layers (checkpoint names match `linear_attn.*`)."""

    def __init__(self, hidden_size: int, num_k_heads: int, num_v_heads: int, head_k_dim: int, head_v_dim: int,
                 conv_kernel: int = 4, eps: float = 1e-6):
        super().__init__()
        self.hk, self.hv, self.dk, self.dv = num_k_heads, num_v_heads, head_k_dim, head_v_dim
        self.key_dim, self.value_dim = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.kernel = conv_kernel
        self.in_proj_qkv = nn.Linear(hidden_size, self.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(hidden_size, num_v_heads, bias=False)
        self.in_proj_a = nn.Linear(hidden_size, num_v_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(num_v_heads).uniform_(0.01, 16)))
        self.dt_bias = nn.Parameter(torch.ones(num_v_heads))
        self.norm = GatedRMSNorm(head_v_dim, eps)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, state: DeltaNetState | None = None,
                pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, S, H) -> (B, S, H); `state` is read and advanced in place; pad_mask (B, S) zeroes padded inputs."""
        b, s, _ = x.shape
        if pad_mask is not None:
            x = x * pad_mask.unsqueeze(-1).to(x.dtype)
        mixed = self.in_proj_qkv(x).transpose(1, 2)  # (B, conv_dim, S)
        history = x.new_zeros(b, self.conv_dim, self.kernel - 1) if state is None else state.conv
        seq = torch.cat([history.to(mixed.dtype), mixed], dim=-1)  # (B, conv_dim, K-1+S)
        if state is not None:
            state.conv.copy_(seq[:, :, -(self.kernel - 1):])
        w = self.conv1d.weight  # (C, 1, K)
        if s == 1:  # decode: one dot product per channel is far cheaper than a convolution call
            mixed = (seq.to(w.dtype) * w.squeeze(1)).sum(-1, keepdim=True)
        else:
            mixed = F.conv1d(seq.to(w.dtype), w, groups=self.conv_dim)
        mixed = F.silu(mixed).to(x.dtype).transpose(1, 2)  # (B, S, C)
        q, k, v = mixed.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k = q.reshape(b, s, self.hk, self.dk), k.reshape(b, s, self.hk, self.dk)
        v = v.reshape(b, s, self.hv, self.dv)
        beta = self.in_proj_b(x).sigmoid()  # (B, S, Hv)
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias)  # (B, S, Hv), <= 0
        out, final = gated_delta_rule(q, k, v, g, beta, None if state is None else state.recurrent)
        if state is not None:
            state.recurrent.copy_(final)
        z = self.in_proj_z(x).reshape(b, s, self.hv, self.dv)
        out = self.norm(out, z).reshape(b, s, self.value_dim)
        return self.out_proj(out)
