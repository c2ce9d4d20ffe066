"""Rotary position embedding with partial rotary dims and interleaved multimodal sections (TM-RoPE / MRoPE)."""

import torch
from torch import nn


class MultimodalRotary(nn.Module):
    """cos/sin tables from 3-row (temporal, height, width) positions, frequency slots interleaved T,H,W,T,H,W..."""

    def __init__(self, head_dim: int, theta: float, partial_rotary_factor: float = 1.0, mrope_section=(1, 1, 0)):
        super().__init__()
        self.rotary_dim = int(head_dim * partial_rotary_factor)
        self.theta, self.mrope_section = theta, tuple(mrope_section)
        self.register_buffer("inv_freq", torch.empty(self.rotary_dim // 2), persistent=False)
        self.register_buffer("axis", torch.empty(self.rotary_dim // 2, dtype=torch.long), persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute the constant tables in fp32 on the module's device (also after a meta-device build)."""
        device = self.inv_freq.device
        steps = torch.arange(0, self.rotary_dim, 2, dtype=torch.float, device=device) / self.rotary_dim
        self.inv_freq = 1.0 / self.theta ** steps
        # axis[i]: which position row drives frequency slot i. H takes slots 1,4,.. below 3*section[1],
        # W takes 2,5,.. below 3*section[2]; T keeps the rest.
        axis = torch.zeros(self.rotary_dim // 2, dtype=torch.long, device=device)
        for row, offset in ((1, 1), (2, 2)):
            axis[offset : 3 * self.mrope_section[row] : 3] = row
        self.axis = axis

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (B, S) or (3, B, S) -> cos, sin each (B, S, rotary_dim) in `dtype`."""
        if position_ids.dim() == 2:
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        freqs = position_ids.float().unsqueeze(-1) * self.inv_freq  # (3, B, S, n)
        idx = self.axis.view(1, 1, 1, -1).expand(1, *freqs.shape[1:])
        freqs = freqs.gather(0, idx).squeeze(0)  # (B, S, n)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, S, rotary_dim)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] channels of x (B, H, S, D) by rotate-half; the rest pass through."""
    r = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, S, r)
    rot, rest = x[..., :r], x[..., r:]
    x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
    rotated = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated
