"""The integer grid every calibrated weight lives on: symmetric, per group of input channels.

It is torchao's ``MappingType.SYMMETRIC`` rule (what ``Int8DynamicActivationIntxWeightConfig``
does by default), so round-to-nearest here is bit-identical to the ``8da4w`` / ``8da8w`` exports:
``scale = max(|w|) / ((qmax - qmin) / 2)`` per group (at least float32 eps),
``q = clamp(round(w * (1 / scale)), qmin, qmax)``, zero point 0.
int4: q in [-8, 7]; int8: q in [-128, 127]. ``group_size == in_features`` means per output channel.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

BITS = (4, 8)


def qrange(bits: int) -> tuple[int, int]:
    if bits not in BITS:
        raise ValueError(f"{bits}-bit weights: expected one of {BITS}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def group_scales(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """fp32 [out, in // group_size] scales of a [out, in] weight (or of one group: [out, group_size])."""
    qmin, qmax = qrange(bits)
    out_f, in_f = weight.shape
    amax = weight.float().reshape(out_f, in_f // group_size, group_size).abs().amax(-1)
    return (amax / ((qmax - qmin) / 2)).clamp(min=torch.finfo(torch.float32).eps)


def quantize_to_codes(weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes of ``weight`` on the grid ``scales`` (one scale per group along the input dim)."""
    qmin, qmax = qrange(bits)
    group = weight.shape[1] // scales.shape[1]
    inv = (1.0 / scales.float()).repeat_interleave(group, dim=1)
    return torch.clamp(torch.round(weight.float() * inv), qmin, qmax).to(torch.int8)


def dequantize_codes(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    group = codes.shape[1] // scales.shape[1]
    return codes.float() * scales.float().repeat_interleave(group, dim=1)


def round_to_nearest(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    scales = group_scales(weight, bits, group_size)
    return quantize_to_codes(weight, scales, bits), scales


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[out, in] int8 in [-8, 7] -> [out, in // 2] uint8, even column in the low nibble (stored + 8)."""
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


# Block sizes along the input dimension that every target's int4 format takes (ONNX MatMulNBits:
# a power of two from 16; Core ML per-block; torchao groups are a subset, 32..256).
BLOCK_SIZES = (16, 32, 64, 128, 256)


def array_digest(a: np.ndarray) -> tuple:
    """(dtype, shape, blake2b of the bytes): compares weights by value without keeping a copy of them."""
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, hashlib.blake2b(memoryview(a).cast("B"), digest_size=20).digest()
