"""ViT vision encoder: 3-D patch embed, resampled learned positions, 2-D axial RoPE, per-frame attention, mergers."""

from __future__ import annotations

from itertools import groupby

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from ..modules.rope import apply_rotary


def num_vision_tokens(grid_thw: torch.Tensor | list, merge: int) -> torch.Tensor:
    """Merged tokens per item (n_items,) for grid_thw (n_items, 3) in patch units: t*h*w / merge**2."""
    grid = torch.as_tensor(grid_thw, dtype=torch.long).reshape(-1, 3)
    return grid.prod(dim=-1) // (merge * merge)


def to_merge_order(grid: torch.Tensor, merge: int) -> torch.Tensor:
    """A per-patch (h, w, C) tensor -> (h*w, C) rows in merge-block order (each merge x merge block contiguous)."""
    h, w, c = grid.shape
    blocks = grid.reshape(h // merge, merge, w // merge, merge, c).transpose(1, 2)  # (h/m, w/m, m, m, C)
    return blocks.reshape(h * w, c)


class PatchEmbed(nn.Module):
    """Flattened patches (N, C*tp*p*p) -> embeddings (N, hidden) through a stride = kernel Conv3d's weights."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        kernel = (c.temporal_patch_size, c.patch_size, c.patch_size)
        self.proj = nn.Conv3d(c.in_channels, c.hidden_size, kernel_size=kernel, stride=kernel, bias=True)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        return F.linear(patches.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)  # a conv over one window


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention with a fused qkv, restricted to each temporal frame."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.heads, self.head_dim = c.num_heads, c.head_dim
        self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.proj = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, segments: list[tuple[int, int]], cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        """x (N, D); segments: runs of (frames, tokens per frame) covering N; cos/sin (N, head_dim) fp32."""
        n, d = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, self.head_dim).unbind(1)  # each (N, H, hd)
        out, start = [], 0
        for frames, length in segments:
            end = start + frames * length
            qs, ks, vs = (t[start:end].view(frames, length, self.heads, -1).transpose(1, 2)
                          for t in (q, k, v))  # (F, H, L, hd)
            rc, rs = (t[start:end].view(frames, length, -1) for t in (cos, sin))  # (F, L, hd)
            qs = apply_rotary(qs.float(), rc, rs).to(vs.dtype)
            ks = apply_rotary(ks.float(), rc, rs).to(vs.dtype)
            o = F.scaled_dot_product_attention(qs, ks, vs)  # (F, H, L, hd)
            out.append(o.transpose(1, 2).reshape(end - start, d))
            start = end
        return self.proj(out[0] if len(out) == 1 else torch.cat(out))


class VisionMLP(nn.Module):
    """Two-layer MLP with a GELU (tanh-approximate or exact)."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.approximate = "tanh" if c.hidden_act == "gelu_pytorch_tanh" else "none"
        self.linear_fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.linear_fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate=self.approximate))


class VisionBlock(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6)."""

    def __init__(self, c: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(c.hidden_size, eps=1e-6)
        self.attn = VisionAttention(c)
        self.mlp = VisionMLP(c)

    def forward(self, x: torch.Tensor, segments: list[tuple[int, int]], cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), segments, cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Each merge block of patches -> one out_hidden_size token; LayerNorm per patch or after the shuffle."""

    def __init__(self, c: VisionConfig, postshuffle_norm: bool):
        super().__init__()
        self.width = c.hidden_size * c.spatial_merge_size**2
        self.postshuffle_norm = postshuffle_norm
        self.ln_q = nn.LayerNorm(self.width if postshuffle_norm else c.hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, c.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) in merge-block order -> (N / merge**2, out_hidden_size)."""
        x = self.ln_q(x.reshape(-1, self.width)) if self.postshuffle_norm else self.ln_q(x).reshape(-1, self.width)
        return self.mlp(x)


class VisionEncoder(nn.Module):
    """pixel_values (N_patches, C*tp*p*p) with grid_thw (n_items, 3) -> merged tokens and deepstack features."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = c = config
        self.patch_embed = PatchEmbed(c)
        self.pos_embed = nn.Embedding(c.num_position_embeddings, c.hidden_size)
        self.blocks = nn.ModuleList(VisionBlock(c) for _ in range(c.depth))
        self.merger = PatchMerger(c, postshuffle_norm=False)
        self.merger_list = nn.ModuleList(PatchMerger(c, postshuffle_norm=True) for _ in c.deepstack_visual_indexes)

    def check_inputs(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
        """Validate the inputs against each other and the config; return the grid as (t, h, w) tuples."""
        c = self.config
        if grid_thw.dim() != 2 or grid_thw.shape[1] != 3 or grid_thw.shape[0] == 0 or grid_thw.is_floating_point():
            raise ValueError(f"grid_thw must be a non-empty integer tensor (n_items, 3), got {tuple(grid_thw.shape)} "
                             f"{grid_thw.dtype}")
        grid = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
        m = c.spatial_merge_size
        for i, (t, h, w) in enumerate(grid):
            if min(t, h, w) <= 0 or h % m or w % m:
                raise ValueError(f"grid_thw item {i} (t, h, w) = {(t, h, w)}: all must be positive and h, w "
                                 f"multiples of spatial_merge_size {m}")
        if pixel_values.dim() != 2 or pixel_values.shape[1] != c.patch_dim:
            raise ValueError(f"pixel_values must have shape (N_patches, {c.patch_dim}) = (N, in_channels * "
                             f"temporal_patch_size * patch_size**2), got {tuple(pixel_values.shape)}")
        total = sum(t * h * w for t, h, w in grid)
        if pixel_values.shape[0] != total:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patch rows but grid_thw {grid} describes "
                             f"{total} (sum of t*h*w)")
        return grid

    def grid_tables(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame's position embeddings (h*w, D) and rotary cos, sin (h*w, head_dim), fp32, merge-block order."""
        c = self.config
        side, m, half = c.grid_per_side, c.spatial_merge_size, c.head_dim // 2
        table = self.pos_embed.weight.float().t().reshape(1, -1, side, side)  # (1, D, side, side)
        pos = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)[0].permute(1, 2, 0)  # (h, w, D)
        inv_freq = 1.0 / c.rope_theta ** (torch.arange(0, half, 2, device=table.device, dtype=torch.float) / half)
        fh = torch.arange(h, device=table.device)[:, None] * inv_freq  # (h, hd/4)
        fw = torch.arange(w, device=table.device)[:, None] * inv_freq  # (w, hd/4)
        angles = torch.cat([fh[:, None].expand(h, w, -1), fw[None].expand(h, w, -1)], dim=-1)  # (h, w, hd/2)
        angles = to_merge_order(torch.cat([angles, angles], dim=-1), m)  # (h*w, hd)
        return to_merge_order(pos, m), angles.cos(), angles.sin()

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> merged tokens (sum t*h*w/merge**2, out_hidden_size) and one such tensor per deepstack index."""
        grid = self.check_inputs(pixel_values, grid_thw)
        device = pixel_values.device
        # Items sorted by frame size, so that frames of equal size (across items) attend in one batched call.
        rank = sorted(range(len(grid)), key=lambda i: grid[i][1] * grid[i][2])
        order = restore = None
        if rank != sorted(rank):
            order = _item_rows([t * h * w for t, h, w in grid], rank, device)
            merged_rows = _item_rows(num_vision_tokens(grid_thw, self.config.spatial_merge_size).tolist(), rank, device)
            restore = torch.argsort(merged_rows)
            pixel_values = pixel_values[order]
        items = [grid[i] for i in rank]
        tables = {hw: self.grid_tables(*hw) for hw in {(h, w) for _, h, w in items}}
        pos, cos, sin = (torch.cat([tables[h, w][j].repeat(t, 1) for t, h, w in items]) for j in range(3))  # (N, .)
        segments = [(sum(t for t, _, _ in run), size) for size, run in groupby(items, key=lambda g: g[1] * g[2])]

        x = self.patch_embed(pixel_values)  # (N, D)
        x = x + pos.to(x.dtype)
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, segments, cos, sin)
            if i in self.config.deepstack_visual_indexes:
                deepstack.append(self.merger_list[self.config.deepstack_visual_indexes.index(i)](x))
        merged = self.merger(x)  # (N / merge**2, out_hidden_size)
        if restore is not None:
            merged, deepstack = merged[restore], [d[restore] for d in deepstack]
        return merged, deepstack


def _item_rows(counts: list[int], rank: list[int], device: torch.device) -> torch.Tensor:
    """Row indices of packed items (item i holds counts[i] consecutive rows), listed in the item order `rank`."""
    starts = [0]
    for n in counts[:-1]:
        starts.append(starts[-1] + n)
    return torch.cat([torch.arange(starts[i], starts[i] + counts[i], device=device) for i in rank])
