"""GPTQ (Frantar et al., 2022) onto ``grid.py``'s symmetric per-group grid.

For one linear layer with weight W [out, in] and the Gram matrix of its calibration inputs
H = sum x x^T [in, in], columns are quantized left to right and each column's rounding error is
pushed onto the not-yet-quantized columns through the inverse Hessian, which minimises
||W X - Q X||^2 instead of ||W - Q||^2. Group scales are chosen (torchao's rule) when the sweep
enters a group, from the already-corrected weights, so the result stays on the exact grid
round-to-nearest uses; only the integers change. Lazy batch updates follow the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import grid


class HessianAccumulator:
    """Running sum of x x^T over every token a linear layer sees (fp64 total: long sums of small terms)."""

    def __init__(self, in_features: int):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.h += (x.T @ x).double()  # fp32 products per batch, fp64 running sum
        self.tokens += x.shape[0]

    def merge(self, ranks) -> None:
        """Sum over ranks that each saw a share of the samples (``distributed.Ranks``; one rank: nothing)."""
        if ranks.distributed:
            ranks.sum_(self.h)
            self.tokens = int(ranks.sum_(torch.tensor([self.tokens], dtype=torch.int64))[0])


@dataclass
class GPTQResult:
    codes: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # fp32 [out, in // group_size]
    loss: float  # tr((W - Q) H (W - Q)^T) / (tokens * out): mean squared error of the layer's outputs
    rtn_loss: float  # the same for round-to-nearest, for the record


def output_error(weight: torch.Tensor, dequantized: torch.Tensor, h: torch.Tensor, tokens: int) -> float:
    d = weight.double() - dequantized.double()
    return float(torch.einsum("oi,ij,oj->", d, h, d) / max(tokens * weight.shape[0], 1))


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor, acc: HessianAccumulator, bits: int, group_size: int, damp: float = 0.01, block: int = 128
) -> GPTQResult:
    out_f, in_f = weight.shape
    if in_f % group_size:
        raise ValueError(f"in_features {in_f} is not a multiple of group size {group_size}")
    qmin, qmax = grid.qrange(bits)
    block = max(block, group_size) // group_size * group_size  # groups never straddle a lazy block
    w = weight.detach().double().clone()
    h = acc.h.clone()
    dead = torch.diag(h) == 0  # inputs never non-zero: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(in_f, dtype=h.dtype) * damp * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    codes = torch.zeros(out_f, in_f, dtype=torch.int8)
    scales = torch.zeros(out_f, in_f // group_size, dtype=torch.float32)
    for b0 in range(0, in_f, block):
        b1 = min(b0 + block, in_f)
        w_blk = w[:, b0:b1].clone()
        err_blk = torch.zeros_like(w_blk)
        hinv_blk = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:
                s = grid.group_scales(w_blk[:, i : i + group_size].float(), bits, group_size)[:, 0]
                scales[:, col // group_size] = s
                s_col = s.double()
            q = torch.clamp(torch.round(w_blk[:, i] * (1.0 / s_col)), qmin, qmax)
            codes[:, col] = q.to(torch.int8)
            e = (w_blk[:, i] - q * s_col) / hinv_blk[i, i]
            w_blk[:, i:] -= e[:, None] * hinv_blk[i, i:][None, :]
            err_blk[:, i] = e
        w[:, b1:] -= err_blk @ hinv[b0:b1, b1:]

    rtn_codes, rtn_scales = grid.round_to_nearest(weight.float(), bits, group_size)
    return GPTQResult(
        codes=codes,
        scales=scales,
        loss=output_error(weight, grid.dequantize_codes(codes, scales), acc.h, acc.tokens),
        rtn_loss=output_error(weight, grid.dequantize_codes(rtn_codes, rtn_scales), acc.h, acc.tokens),
    )
