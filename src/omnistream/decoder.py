"""The hybrid-attention MoE decoder stack shared by the Thinker and the Talker."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .cache import InferenceCache
from .config import FULL, TextConfig
from .modules.attention import Attention
from .modules.deltanet import GatedDeltaNet
from .modules.mlp import MLP
from .modules.moe import SparseMoE
from .modules.norm import RMSNorm
from .modules.rope import MultimodalRotary


class DecoderLayer(nn.Module):
    """Pre-norm block: x + mixer(norm(x)), then x + mlp(norm(x)); mixer is attention or Gated DeltaNet."""

    def __init__(self, config: TextConfig, idx: int):
        super().__init__()
        c = config
        self.kind = c.layer_types[idx]
        if self.kind == FULL:
            self.self_attn = Attention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                       c.rms_norm_eps, c.zero_centered_norm, c.attn_output_gate, c.attention_bias)
        else:
            self.linear_attn = GatedDeltaNet(c.hidden_size, c.linear_num_key_heads, c.linear_num_value_heads,
                                             c.linear_key_head_dim, c.linear_value_head_dim,
                                             c.linear_conv_kernel_dim, c.rms_norm_eps)
        if c.is_moe_layer(idx):
            self.mlp = SparseMoE(c.hidden_size, c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size,
                                 c.shared_expert_intermediate_size, c.norm_topk_prob)
        else:
            self.mlp = MLP(c.hidden_size, c.intermediate_size)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.zero_centered_norm)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.zero_centered_norm)

    def forward(self, x, cos, sin, state=None, start=0, mask=None, is_causal=False, pad_mask=None):
        """x (B, S, H) -> (B, S, H) and router logits (or None for a dense layer)."""
        h = self.input_layernorm(x)
        if self.kind == FULL:
            h = self.self_attn(h, cos, sin, state, start, mask, is_causal)
        else:
            h = self.linear_attn(h, state, pad_mask)
        x = x + h
        out = self.mlp(self.post_attention_layernorm(x))
        logits = None
        if isinstance(out, tuple):
            out, logits = out
        return x + out, logits


@dataclass
class DecoderOutput:
    """Final-norm hidden states, plus per-layer hidden states and router logits when asked for."""

    last_hidden_state: torch.Tensor
    hidden_states: list[torch.Tensor] = field(default_factory=list)
    router_logits: list[torch.Tensor] = field(default_factory=list)


class Decoder(nn.Module):
    """Token embedding, decoder layers, final norm; positions are 1-row text or 3-row (T, H, W) multimodal ids."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.zero_centered_norm)
        self.rotary = MultimodalRotary(config.head_dim, config.rope_theta, config.partial_rotary_factor,
                                       config.mrope_section)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: InferenceCache | None = None, output_hidden_states: bool = False,
                output_router_logits: bool = False, deepstack: list[torch.Tensor] | None = None) -> DecoderOutput:
        """Run S new tokens. attention_mask (B, S): 1 real, 0 left padding. The cache is advanced in place.

        deepstack: tensors (B, S, H), zero off the visual positions, added to the output of layers 0, 1, ..."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, S, H)
        b, s, _ = x.shape
        pad = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        base = cache.next_pos if cache is not None else torch.zeros(b, device=x.device)
        if position_ids is None:
            ones = torch.ones(b, s, dtype=torch.long, device=x.device)
            steps = ones if pad is None else pad.long()
            position_ids = base[:, None] + (steps.cumsum(1) - 1).clamp(min=0)  # (B, S)
        if position_ids.dim() == 2:
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)  # (3, B, S)
        cos, sin = self.rotary(position_ids, x.dtype)

        start, mask, is_causal = self._attention_mask(cache, pad, b, s, x.device)
        if cache is not None:
            cache.next_pos.copy_(torch.maximum(base, position_ids.amax(dim=(0, 2)).float() + 1))

        out = DecoderOutput(x, [x] if output_hidden_states else [])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            state = cache.layers[i] if cache is not None else None
            x, logits = layer(x, cos, sin, state, start, mask, is_causal, pad)
            if output_router_logits and logits is not None:
                out.router_logits.append(logits)
            if output_hidden_states and i < last:
                out.hidden_states.append(x)  # before deepstack injection, as the reference records them
            if deepstack is not None and i < len(deepstack):
                x = x + deepstack[i].to(x.dtype)
        out.last_hidden_state = self.norm(x)
        if output_hidden_states:
            out.hidden_states.append(out.last_hidden_state)
        return out

    def step(self, tokens: torch.Tensor, cache: InferenceCache, slot: torch.Tensor) -> torch.Tensor:
        """Static-shape decode step for torch.compile: tokens (B, 1) already reserved at `slot` (1,) -> (B, 1, H).

        Attention reads the whole preallocated cache under the validity mask, so no shape depends on the step."""
        x = self.embed_tokens(tokens)  # (B, 1, H)
        cos, sin = self.rotary(cache.next_pos[:, None], x.dtype)
        mask = cache.valid[:, None, None, :]  # (B, 1, 1, max_len)
        for layer, state in zip(self.layers, cache.layers):
            x, _ = layer(x, cos, sin, state, slot, mask)
        return self.norm(x)

    @staticmethod
    def _attention_mask(cache, pad, b, s, device):
        """Claim cache slots; return (start slot, bool mask (B, 1, S, T) or None, is_causal)."""
        if cache is None:
            start, valid = 0, pad
        else:
            start = cache.reserve(pad if pad is not None else torch.ones(b, s, dtype=torch.bool, device=device))
            valid = cache.valid[:, : start + s] if cache.padded else None
        if valid is None and (start == 0 or s == 1):
            return start, None, start == 0 and s > 1
        t = start + s
        q_pos = torch.arange(start, t, device=device)[:, None]  # (S, 1)
        k_pos = torch.arange(t, device=device)[None, :]  # (1, T)
        mask = (k_pos <= q_pos).expand(b, s, t)  # (B, S, T)
        if valid is not None:  # padded queries attend only to themselves, so no row is empty
            mask = mask & (valid[:, None, :] | (k_pos == q_pos))
        return start, mask.unsqueeze(1), False
