"""GPTQ (Frantar et al., 2022) onto ``grid.py``'s symmetric per-group grid.

For one linear layer with weight W [out, in] and the Gram matrix of its calibration inputs
H = sum x x^T [in, in], columns are quantized left to right and each column's rounding error is
pushed onto the not-yet-quantized columns through the inverse Hessian, which minimises
||W X - Q X||^2 instead of ||W - Q||^2. Group scales are chosen (torchao's rule) when the sweep
enters a group, from the already-corrected weights, so the result stays on the exact grid
round-to-nearest uses; only the integers change (a per-row scale is chosen before the sweep: where it
enters the row's only group). Lazy batch updates of 128 columns follow the reference code.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import grid

ADD_CHUNK_ROWS_X_COLS = 1 << 24  # 128 MB of fp64 at a time


class HessianAccumulator:
    """Running sum of x x^T over every token a linear layer sees (fp64 total: long sums of small terms)."""

    def __init__(self, in_features: int):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        p = x.T @ x  # fp32 products per batch, fp64 running sum
        rows = max(1, ADD_CHUNK_ROWS_X_COLS // p.shape[1])
        for r in range(0, p.shape[0], rows):  # converted a slice at a time: no fp64 copy of the whole product
            self.h[r : r + rows] += p[r : r + rows].double()
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
    return float(_error_sum(weight, dequantized, h) / max(tokens * weight.shape[0], 1))


def _error_sum(weight: torch.Tensor, dequantized: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    d = weight.double() - dequantized.double()
    return torch.einsum("oi,ij,oj->", d, h, d)


# Rows of a weight swept at a time: GPTQ never mixes rows (each row's integers depend on that row and
# the shared inverse Hessian), so a wide matrix (the 151552 x 4096 lm_head: 5 GB in fp64) goes in
# slices of this many weights, 256 MB of fp64 each; smaller weights go whole.
ROW_CHUNK_WEIGHTS = 1 << 25


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    acc: HessianAccumulator,
    bits: int,
    group_size: int,
    damp: float = 0.01,
    block: int = 128,
    chunk_weights: int = ROW_CHUNK_WEIGHTS,
) -> GPTQResult:
    """``weight`` in any float dtype (a bf16 one memory-mapped from a checkpoint too: read a slice of
    rows at a time)."""
    out_f, in_f = weight.shape
    if in_f % group_size:
        raise ValueError(f"in_features {in_f} is not a multiple of group size {group_size}")
    h = acc.h.clone()
    dead = torch.diag(h) == 0  # inputs never non-zero: their weights cannot matter
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))  # = h + damp * mean * I, without an [in, in] identity
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    del h
    rows = max(1, chunk_weights // in_f)
    codes, scales, loss, rtn_loss = [], [], 0.0, 0.0
    for r0 in range(0, out_f, rows):
        w = weight[r0 : r0 + rows]
        c, s = _sweep(w, hinv, dead, bits, group_size, block)
        rtn_codes, rtn_scales = grid.round_to_nearest(w.float(), bits, group_size)
        loss = loss + _error_sum(w, grid.dequantize_codes(c, s), acc.h)
        rtn_loss = rtn_loss + _error_sum(w, grid.dequantize_codes(rtn_codes, rtn_scales), acc.h)
        codes.append(c)
        scales.append(s)
    n = max(acc.tokens * out_f, 1)
    return GPTQResult(
        codes=codes[0] if len(codes) == 1 else torch.cat(codes),
        scales=scales[0] if len(scales) == 1 else torch.cat(scales),
        loss=float(loss / n),
        rtn_loss=float(rtn_loss / n),
    )


def _sweep(weight: torch.Tensor, hinv: torch.Tensor, dead: torch.Tensor, bits: int, group_size: int, block: int):
    """(codes, scales) of some rows of a weight: the column sweep with lazy batch updates."""
    out_f, in_f = weight.shape
    qmin, qmax = grid.qrange(bits)
    w = weight.detach().double().clone()
    w[:, dead] = 0.0
    codes = torch.zeros(out_f, in_f, dtype=torch.int8)
    scales = torch.zeros(out_f, in_f // group_size, dtype=torch.float32)
    # One scale per row (int8 per channel) is chosen before any column moved: from the weight as it is,
    # so the sweep keeps lazy blocks of ``block`` columns. A block as wide as the row would update
    # every remaining column after each one: out x in^2 memory-bound work (hours at 13696 inputs).
    per_row = group_size == in_f and in_f > block
    if per_row:
        s_col = grid.group_scales(w.float(), bits, group_size)[:, 0]
        scales[:, 0] = s_col
        s_col = s_col.double()
    else:
        block = max(block, group_size) // group_size * group_size  # groups never straddle a lazy block
    for b0 in range(0, in_f, block):
        b1 = min(b0 + block, in_f)
        w_blk = w[:, b0:b1].clone()
        err_blk = torch.zeros_like(w_blk)
        hinv_blk = hinv[b0:b1, b0:b1]
        with _one_thread():
            for i in range(b1 - b0):
                col = b0 + i
                if col % group_size == 0 and not per_row:
                    s = grid.group_scales(w_blk[:, i : i + group_size].float(), bits, group_size)[:, 0]
                    scales[:, col // group_size] = s
                    s_col = s.double()
                q = torch.clamp(torch.round(w_blk[:, i] * (1.0 / s_col)), qmin, qmax)
                codes[:, col] = q.to(torch.int8)
                e = (w_blk[:, i] - q * s_col) / hinv_blk[i, i]
                w_blk[:, i:] -= e[:, None] * hinv_blk[i, i:][None, :]
                err_blk[:, i] = e
        w[:, b1:] -= err_blk @ hinv[b0:b1, b1:]
    return codes, scales


@contextmanager
def _one_thread():
    """The column loop's small element-wise ops on one thread: split over threads they mostly wait for
    one another (7x slower on 2 busy cores, measured); element-wise results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
