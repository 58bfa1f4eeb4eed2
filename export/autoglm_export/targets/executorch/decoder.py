"""The text decoder as XNNPACK lowers it: one delegated subgraph per layer in a single-token step.

What splits the decoder into many XNNPACK subgraphs is every non-delegated op between two delegated
ones. While lowering, with the same weights and the same math as ``model.text``:

- RMSNorm's mean over the last dim (XNNPACK lowers mean only over dims 2-3 of 4-D tensors) becomes a
  linear with a constant 1/D row;
- partial rotary's slices and interleaved pair swaps become two constant matrices: angles spread to
  head_dim channels (cos 1 / sin 0 on the channels that pass through) and the pair rotation as a
  [head_dim, head_dim] +-1 matrix, each output a single product, so exact;
- FusedSwiGLU's ``chunk`` (a split XNNPACK does not take) becomes two slices;
- the cache position becomes an int once per call, not once per layer;
- a second method, ``text_decoder_step``, takes exactly one token: every reshape is static, so
  delegable. It shares the KV cache with ``text_decoder`` (same buffer names; the program is emitted
  with ``share_mutable_buffers``), so a prompt prefilled by one is decoded by the other. Its weights are
  stored once in the .pte, but XNNPACK packs them again when the method loads (measured on ``small``:
  +124 MB RSS, about the decoder's int4 bytes), and on this machine it decoded no faster than
  ``text_decoder`` with the rewrites above (BENCHMARKS.md): ``--no-decode-step`` leaves it out.

What is left outside XNNPACK per layer is ExecuTorch's ``update_cache`` x2 and ``custom_sdpa``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from autoglm_runtime.backends.executorch_backend import STEP_METHOD

from ...components import Component, components
from ...model.rope import mrope_angles
from ...model.text import FusedSwiGLU, RMSNorm
from .attention import executorch_attention, start_position


class LinearRMSNorm(nn.Module):
    """RMSNorm with the mean of squares as ``F.linear(x * x, [[1/D, ...]])`` (same weight, same eps)."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps
        dim = norm.weight.shape[0]
        self.register_buffer("mean_row", torch.full((1, dim), 1.0 / dim, dtype=norm.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(F.linear(x * x, self.mean_row) + self.eps))


class RotaryTables(nn.Module):
    """M-RoPE as constant matrices: angles [S, R/2] -> cos/sin over all head_dim channels, and the
    pair rotation as a linear, so no op slices a head."""

    def __init__(self, head_dim: int, rotary_dim: int, interleaved: bool):
        super().__init__()
        half = rotary_dim // 2
        spread = torch.zeros(head_dim, half)  # channel <- frequency
        rotation = torch.zeros(head_dim, head_dim)  # F.linear weight: rotated[c] = sum_k rotation[c, k] x[k]
        for j in range(half):
            a, b = (2 * j, 2 * j + 1) if interleaved else (j, j + half)  # the pair frequency j rotates
            spread[a, j] = spread[b, j] = 1.0
            rotation[a, b], rotation[b, a] = -1.0, 1.0  # (x_a, x_b) -> (-x_b, x_a)
        passthrough = torch.zeros(head_dim)
        passthrough[rotary_dim:] = 1.0
        self.register_buffer("spread", spread, persistent=False)
        self.register_buffer("rotation", rotation, persistent=False)
        self.register_buffer("passthrough", passthrough, persistent=False)

    def forward(self, angles: torch.Tensor):
        """angles [S, 1, R/2] -> a function rotating x [B, S, heads, head_dim]."""
        cos = F.linear(angles.cos(), self.spread) + self.passthrough  # [S, 1, head_dim]: broadcasts over heads
        sin = F.linear(angles.sin(), self.spread)
        return lambda x: x * cos + F.linear(x, self.rotation) * sin


class ExecuTorchDecoderEntry(nn.Module):
    """``text_decoder``'s signature over the model's layers, with ExecuTorchAttention.attend."""

    def __init__(self, model, rotary: RotaryTables):
        super().__init__()
        self.model, self.rotary = model, rotary

    def forward(self, inputs_embeds, cache_position, position_ids):
        text = self.model.text
        start = start_position(cache_position, text.max_context)
        # [S, 1, R/2] from the start: no reshape of a symbolic size between here and the layers
        rotate = self.rotary(mrope_angles(position_ids[:, :, None], text.inv_freq, text.rope_selector[:, None]))
        x = inputs_embeds
        for layer in text.layers:
            x = layer.residual_tail(x, layer.self_attn.attend(layer.input_layernorm(x), rotate, start))
        return text.head(x)


class SlicedSwiGLU(nn.Module):
    """FusedSwiGLU with its halves taken by slicing (XNNPACK lowers static slices, not split)."""

    def __init__(self, mlp: FusedSwiGLU):
        super().__init__()
        self.gate_up_proj, self.down_proj = mlp.gate_up_proj, mlp.down_proj
        self.half = mlp.down_proj.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        return self.down_proj(gate_up[..., self.half :] * F.silu(gate_up[..., : self.half]))


def step_component(decoder: Component, module: nn.Module, hidden: int) -> Component:
    """``text_decoder`` at one token, static shapes."""
    example = (torch.zeros(1, 1, hidden), torch.zeros(1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long))
    return replace(decoder, name=STEP_METHOD, module=module, example_inputs=example, dynamic_shapes=None)


SWAPS = {RMSNorm: LinearRMSNorm, FusedSwiGLU: SlicedSwiGLU}  # same weights, delegable ops


def _swap_modules(text) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in list(text.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in SWAPS:
                setattr(parent, name, SWAPS[type(child)](child))
                swapped.append((parent, name, child))
    return swapped


@contextmanager
def executorch_decoder(model, max_seq_len: int, enabled: bool = True, step: bool = True):
    """The components to lower, with the decoder above while ``enabled`` (the llama:: kernels are
    used), plus ``text_decoder_step`` with ``step``; the eager model (the parity reference's) back afterwards."""
    comps = components(model, max_seq_len)
    if not enabled:
        yield comps
        return
    text = model.text.cfg
    with executorch_attention(model):
        swapped = _swap_modules(model.text)
        try:
            rotary = RotaryTables(text.head_dim, text.rotary_dim, text.rope_interleaved)
            out = []
            for comp in comps:
                if comp.name == "text_decoder":
                    comp = replace(comp, module=ExecuTorchDecoderEntry(model, rotary))
                    out.append(comp)
                    if step:
                        out.append(step_component(comp, ExecuTorchDecoderEntry(model, rotary), text.hidden_size))
                else:
                    out.append(comp)
            yield out
        finally:
            for parent, name, module in swapped:
                setattr(parent, name, module)
