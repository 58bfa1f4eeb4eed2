"""Swap the decoder's attention for ExecuTorch's fused LLM kernels before export.

``llama::update_cache`` writes K/V in place at ``start_pos`` and ``llama::custom_sdpa`` attends over
the filled part of the cache only (causal from ``start_pos``), with GQA handled inside the kernel:
no repeated K/V copies and no attention over empty cache slots. Same weights, same math as
``model.text.Attention``; the cache layout becomes [1, max_context, kv_heads, head_dim].
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ...model.rope import apply_rotary
from ...model.text import Attention


class ExecuTorchKVCache(nn.Module):
    def __init__(self, max_context: int, num_kv_heads: int, head_dim: int, dtype=torch.float32):
        super().__init__()
        shape = (1, max_context, num_kv_heads, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()


class ExecuTorchAttention(nn.Module):
    """Drop-in for ``Attention``; requires contiguous cache positions (what every runtime sends)."""

    def __init__(self, attn: Attention, max_context: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.interleaved = attn.interleaved
        self.max_context = max_context
        self.kv_cache = ExecuTorchKVCache(max_context, self.n_kv_heads, self.head_dim, attn.kv_cache.k_cache.dtype)

    def forward(self, x, cos, sin, cache_position, mask):
        """``Attention``'s signature (the eager decoder's layers call it): cos, sin [S, rotary_dim]."""
        bsz, seq, _ = x.shape
        q = self.q_proj(x).view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.n_kv_heads, self.head_dim)
        q = apply_rotary(q, cos, sin, self.interleaved).transpose(1, 2)
        k = apply_rotary(k, cos, sin, self.interleaved).transpose(1, 2)
        return self._cached(x, q, k, v, start_position(cache_position, self.max_context))

    def attend(self, x, rotary, start: int):
        """What the lowered decoder calls: ``rotary`` rotates [B, S, heads, head_dim] in place of
        ``apply_rotary`` (no slices, no transposes), ``start`` is the step's first cache slot."""
        bsz, seq, _ = x.shape
        q = rotary(self.q_proj(x).view(bsz, seq, self.n_heads, self.head_dim))
        k = rotary(self.k_proj(x).view(bsz, seq, self.n_kv_heads, self.head_dim))
        v = self.v_proj(x).view(bsz, seq, self.n_kv_heads, self.head_dim)
        return self._cached(x, q, k, v, start)

    def _cached(self, x, q, k, v, start: int):
        """q [B, S, heads, D], k/v [B, S, kv_heads, D]: write k/v at ``start``, attend causally from it."""
        bsz, seq, _ = x.shape
        torch.ops.llama.update_cache(k, self.kv_cache.k_cache, start)
        torch.ops.llama.update_cache(v, self.kv_cache.v_cache, start)
        out = torch.ops.llama.custom_sdpa(q, self.kv_cache.k_cache, self.kv_cache.v_cache, start, None, 0, True)
        return self.o_proj(out.reshape(bsz, seq, self.n_heads * self.head_dim))


def start_position(cache_position: torch.Tensor, max_context: int):
    """The first cache slot of a call (positions are contiguous), as the int the llama:: kernels take."""
    start = cache_position[0].item()
    torch._check(start >= 0)
    torch._check(start < max_context)
    return start


def use_executorch_attention(model) -> None:
    """In place: every decoder layer's attention becomes ExecuTorchAttention (weights shared)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers llama:: ops)

    for layer in model.text.layers:
        layer.self_attn = ExecuTorchAttention(layer.self_attn, model.shape.max_context)


@contextmanager
def executorch_attention(model, enabled: bool = True):
    """ExecuTorchAttention while lowering; the eager attention (the parity reference's) back afterwards."""
    original = [layer.self_attn for layer in model.text.layers]
    if enabled:
        use_executorch_attention(model)
    try:
        yield model
    finally:
        for layer, attn in zip(model.text.layers, original):
            layer.self_attn = attn
