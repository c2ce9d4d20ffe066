"""Softmax attention with GQA, q/k RMSNorm, (partial) multimodal rotary and an optional sigmoid output gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import KVCache
from .norm import RMSNorm
from .rope import apply_rotary


class Attention(nn.Module):
    """Causal self-attention; with `output_gate` q_proj also yields a per-head gate ([q_h | g_h] rows, Qwen3.5)."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float = 1e-6,
                 zero_centered_norm: bool = False, output_gate: bool = False, bias: bool = False):
        super().__init__()
        self.h, self.hkv, self.d = num_heads, num_kv_heads, head_dim
        self.output_gate = output_gate
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim * (2 if output_gate else 1), bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps, zero_centered_norm)
        self.k_norm = RMSNorm(head_dim, eps, zero_centered_norm)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None,
                start: int = 0, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """x (B, S, H) -> (B, S, H). mask: bool (B, 1, S, T) of allowed keys, or None with `is_causal`."""
        b, s, _ = x.shape
        q = self.q_proj(x)
        gate = None
        if self.output_gate:
            q, gate = q.view(b, s, self.h, 2 * self.d).chunk(2, dim=-1)  # (B, S, H, D) each
            gate = gate.reshape(b, s, self.h * self.d)
        q = self.q_norm(q.reshape(b, s, self.h, self.d)).transpose(1, 2)  # (B, H, S, D)
        k = self.k_norm(self.k_proj(x).view(b, s, self.hkv, self.d)).transpose(1, 2)  # (B, Hkv, S, D)
        v = self.v_proj(x).view(b, s, self.hkv, self.d).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(start, k, v)  # (B, Hkv, T, D)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                           scale=self.d ** -0.5, enable_gqa=self.h != self.hkv)
        o = o.transpose(1, 2).reshape(b, s, self.h * self.d)  # (B, S, H*D)
        if gate is not None:
            o = o * torch.sigmoid(gate)
        return self.o_proj(o)
