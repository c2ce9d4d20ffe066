"""Mixture of experts: softmax top-k router, fused SwiGLU experts with batched dispatch, optional gated shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import MLP


class Router(nn.Module):
    """Softmax (fp32) over experts, top-k, optional renormalisation of the k weights."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, renormalize: bool):
        super().__init__()
        self.top_k = top_k
        self.renormalize = renormalize
        self.weight = nn.Parameter(torch.randn(num_experts, hidden_size) * 0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, H) -> logits (N, E), weights (N, k) in x.dtype, expert ids (N, k)."""
        logits = F.linear(x, self.weight)
        probs = logits.softmax(dim=-1, dtype=torch.float32)
        weights, idx = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(logits.dtype), idx


class Experts(nn.Module):
    """E SwiGLU experts stored fused: gate_up_proj (E, 2I, H) with gate rows first, down_proj (E, H, I)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(torch.randn(num_experts, 2 * intermediate_size, hidden_size) * 0.02)
        self.down_proj = nn.Parameter(torch.randn(num_experts, hidden_size, intermediate_size) * 0.02)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (N, H), idx/weights (N, k) -> sum_k weights * expert_k(x), (N, H)."""
        if x.shape[0] == 1:
            if torch.compiler.is_compiling():  # no host sync in a compiled graph; inductor fuses the gather
                return self._gathered(x, idx[0], weights[0])
            return self._one_token(x, idx[0].tolist(), weights[0])
        return self._sorted(x, idx, weights)

    def _gathered(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One token, experts chosen by a tensor: (1, H) -> (1, H), as one batched contraction over the k experts."""
        h = torch.einsum("kih,h->ki", self.gate_up_proj[experts], x[0])  # (k, 2I)
        gate, up = h.chunk(2, dim=-1)
        y = torch.einsum("khi,ki->kh", self.down_proj[experts], F.silu(gate) * up)  # (k, H)
        return (y * weights[:, None]).sum(0, keepdim=True)

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU of expert e on x (n, H), reading its weights in place."""
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[e])

    def _one_token(self, x: torch.Tensor, experts: list[int], weights: torch.Tensor) -> torch.Tensor:
        """Decode step: the token's k experts one after another, summed in expert order like the sorted path."""
        order = sorted(range(len(experts)), key=experts.__getitem__)
        out = torch.zeros_like(x)
        for j in order:
            out = out + self._expert(experts[j], x) * weights[j]
        return out

    def _sorted(self, x: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Many tokens (prefill/training): sort (token, expert) pairs by expert, one matmul per expert that got any."""
        k = idx.shape[1]
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)  # (N*k,) pairs grouped by expert
        token = order // k
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = x[token]  # (N*k, H)
        outs, start = [], 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            outs.append(self._expert(e, xs[start : start + c]))
            start += c
        ys = torch.cat(outs) * weights.reshape(-1)[order].unsqueeze(-1)  # (N*k, H)
        return torch.zeros_like(x).index_add_(0, token, ys.to(x.dtype))


class SparseMoE(nn.Module):
    """Routed experts plus an optional shared expert scaled by sigmoid(shared_expert_gate(x))."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 shared_intermediate_size: int = 0, renormalize: bool = True):
        super().__init__()
        self.gate = Router(hidden_size, num_experts, top_k, renormalize)
        self.experts = Experts(num_experts, hidden_size, intermediate_size)
        self.shared_expert = MLP(hidden_size, shared_intermediate_size) if shared_intermediate_size else None
        self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False) if shared_intermediate_size else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, S, H) -> output (B, S, H), router logits (B*S, E)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, H)
        logits, weights, idx = self.gate(flat)
        out = self.experts(flat, idx, weights)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.view(shape), logits


def load_balancing_loss(router_logits: list[torch.Tensor], num_experts: int, top_k: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-style auxiliary loss: E * sum_e (fraction of top-k slots on e) * (mean router prob of e)."""
    counts = router_logits[0].new_zeros(num_experts, dtype=torch.float32)
    probs_sum = router_logits[0].new_zeros(num_experts, dtype=torch.float32)
    rows = 0.0
    mask = None if attention_mask is None else attention_mask.reshape(-1).float()
    for logits in router_logits:
        probs = logits.float().softmax(dim=-1)  # (N, E)
        chosen = probs.topk(top_k, dim=-1).indices  # (N, k)
        w = torch.ones_like(chosen, dtype=torch.float32) if mask is None else mask[:, None].expand_as(chosen)
        counts = counts.scatter_add(0, chosen.reshape(-1), w.reshape(-1))
        probs_sum = probs_sum + (probs if mask is None else probs * mask[:, None]).sum(0)
        rows = rows + (probs.shape[0] if mask is None else mask.sum())
    return (counts / rows * probs_sum / rows).sum() * num_experts
