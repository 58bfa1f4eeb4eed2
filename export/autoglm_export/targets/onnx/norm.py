"""RMSNorm in the form onnxruntime fuses into one ``SimplifiedLayerNormalization`` kernel.

The eager norms compute ``x * rsqrt(mean(x^2) + eps) * weight``, which exports as Pow, ReduceMean, Add,
Sqrt, Reciprocal, Mul, Mul: onnxruntime's fusion looks for a Div by the Sqrt instead, so every norm
stayed seven kernels (65 norms per decode step on ``small``). ``x / sqrt(mean(x^2) + eps) * weight`` is the
same function (within float rounding) and is fused.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ...model import text, vision


def _fusable_forward(norm: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return norm.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps))

    return forward


@contextmanager
def fusable_rms_norms(model: nn.Module):
    """Inside, every RMSNorm of ``model`` (text and vision) computes the fusable form; restored on exit."""
    norms = [m for m in model.modules() if isinstance(m, (text.RMSNorm, vision.RMSNorm))]
    for norm in norms:
        norm.forward = _fusable_forward(norm)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward
