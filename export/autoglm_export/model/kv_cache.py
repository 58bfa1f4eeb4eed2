"""A static KV cache: one pair of buffers per layer, written in place at ``cache_position``."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(self, max_context: int, num_kv_heads: int, head_dim: int, dtype=torch.float32):
        super().__init__()
        self.shape = (1, num_kv_heads, max_context, head_dim)
        self.allocate(dtype, device=None)  # None: the ambient device, meta while a loader builds the model

    def allocate(self, dtype=torch.float32, device="cpu") -> None:
        # Non-persistent: never part of a checkpoint; exporters see them as mutable buffers.
        self.register_buffer("k_cache", torch.zeros(self.shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(self.shape, dtype=dtype, device=device), persistent=False)

    def update(self, cache_position: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """k, v [1, kv_heads, S, D] written at cache_position [S]; returns the whole cache."""
        self.k_cache.index_copy_(2, cache_position, k)
        self.v_cache.index_copy_(2, cache_position, v)
        return self.k_cache, self.v_cache

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()
