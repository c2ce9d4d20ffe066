"""Explicit inference state: preallocated KV caches for attention layers, conv + recurrent state for DeltaNet layers."""

from __future__ import annotations

import torch

from .config import FULL, TextConfig


class CacheFullError(RuntimeError):
    """More tokens were fed than the cache was allocated for."""


class _Rows:
    """A layer's state as batch-first tensors named in `fields`: rows copied out, or reordered in place (beams)."""

    fields: tuple[str, ...] = ()

    def rows(self, rows: torch.Tensor):
        """A new state of the same kind holding rows `rows` of this one."""
        out = object.__new__(type(self))
        for name in self.fields:
            setattr(out, name, getattr(self, name).index_select(0, rows))
        return out

    def reorder_(self, rows: torch.Tensor) -> None:
        """Row i becomes the old row rows[i], in place."""
        for name in self.fields:
            tensor = getattr(self, name)
            tensor.copy_(tensor.index_select(0, rows))


class KVCache(_Rows):
    """Keys and values of one attention layer, (B, H_kv, max_len, D), written in place (gpt-fast style)."""

    fields = ("k", "v")

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, S, D) at [start, start+S) and return all keys/values so far.

        A tensor `start` (the static decode step) writes one slot and returns the whole buffer, so shapes never
        change between steps; the caller's mask hides the slots not yet written."""
        if isinstance(start, torch.Tensor):
            self.k.index_copy_(2, start, k)
            self.v.index_copy_(2, start, v)
            return self.k, self.v
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()


class DeltaNetState(_Rows):
    """Last K-1 pre-conv inputs (B, conv_dim, K-1) and the fp32 delta-rule state (B, H_v, d_k, d_v)."""

    fields = ("conv", "recurrent")

    def __init__(self, batch: int, conv_dim: int, kernel: int, heads: int, dk: int, dv: int, dtype, device):
        self.conv = torch.zeros(batch, conv_dim, kernel - 1, dtype=dtype, device=device)
        self.recurrent = torch.zeros(batch, heads, dk, dv, dtype=torch.float32, device=device)

    def reset(self) -> None:
        self.conv.zero_()
        self.recurrent.zero_()


class InferenceCache:
    """Per-layer state of a decoder for a batch of rows that share one (left-padded) timeline."""

    def __init__(self, config: TextConfig, batch_size: int, max_len: int, dtype=torch.float32, device="cpu"):
        self.batch_size = batch_size
        self.max_len = max_len
        conv_dim = 2 * config.linear_num_key_heads * config.linear_key_head_dim + (
            config.linear_num_value_heads * config.linear_value_head_dim
        )
        self.layers: list[KVCache | DeltaNetState] = [
            KVCache(batch_size, config.num_key_value_heads, max_len, config.head_dim, dtype, device)
            if kind == FULL
            else DeltaNetState(batch_size, conv_dim, config.linear_conv_kernel_dim, config.linear_num_value_heads,
                               config.linear_key_head_dim, config.linear_value_head_dim, dtype, device)
            for kind in config.layer_types
        ]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # key padding mask
        # next position per row: max position so far + 1 (float: Qwen3-Omni video time can be fractional)
        self.next_pos = torch.zeros(batch_size, dtype=torch.float32, device=device)
        self.length = 0  # slots used; identical for every row
        self.padded = False  # any invalid slot so far

    def reserve(self, mask: torch.Tensor) -> int:
        """Claim slots for S new tokens with validity `mask` (B, S); return the start slot."""
        b, s = mask.shape
        if b != self.batch_size:
            raise ValueError(f"batch of {b} rows fed to a cache built for {self.batch_size}")
        if self.length + s > self.max_len:
            raise CacheFullError(
                f"{self.length} cached + {s} new tokens exceeds the cache's max_len of {self.max_len} tokens"
            )
        start = self.length
        self.valid[:, start : start + s] = mask
        self.padded = self.padded or not bool(mask.all())
        self.length += s
        return start

    def rows(self, rows: torch.Tensor) -> InferenceCache:
        """A new cache of rows `rows` of this one (a row may repeat: beams that share a prefix)."""
        out = object.__new__(InferenceCache)
        out.__dict__.update(self.__dict__)
        out.batch_size = len(rows)
        out.layers = [layer.rows(rows) for layer in self.layers]
        out.valid, out.next_pos = self.valid.index_select(0, rows), self.next_pos.index_select(0, rows)
        return out

    def reorder_(self, rows: torch.Tensor) -> None:
        """Row i becomes the old row rows[i] (B,), in place: beams follow their parents."""
        if len(rows) != self.batch_size:
            raise ValueError(f"{len(rows)} rows given to reorder a cache of {self.batch_size}")
        for layer in self.layers:
            layer.reorder_(rows)
        self.valid.copy_(self.valid.index_select(0, rows))
        self.next_pos.copy_(self.next_pos.index_select(0, rows))

    def reset(self) -> None:
        """Forget everything, keeping the allocations for the next request."""
        for layer in self.layers:
            layer.reset()
        self.valid.zero_()
        self.next_pos.zero_()
        self.length = 0
        self.padded = False
