"""Multimodal rotary embeddings (M-RoPE) for the GLM-4.1V text decoder.

Three position planes (temporal, height, width) each own a slice of the rotary frequencies
(``mrope_section``). Only the first ``rotary_dim`` channels of each head rotate.
"""

from __future__ import annotations

import torch


def inverse_frequencies(rotary_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


def plane_selector(mrope_section: tuple[int, ...]) -> torch.Tensor:
    """[3, rotary_dim/2] one-hot: which position plane drives each frequency (section i -> plane i % 3)."""
    planes = torch.cat([torch.full((n,), i % 3) for i, n in enumerate(mrope_section)])
    return (
        torch.nn.functional.one_hot(planes, 3).T.to(torch.float32).contiguous()
    )  # ExecuTorch needs contiguous constants


def mrope_angles(position_ids: torch.Tensor, inv_freq: torch.Tensor, selector: torch.Tensor) -> torch.Tensor:
    """position_ids [3, S] -> rotary angles [S, rotary_dim/2] (or [3, S, 1] with selector [3, 1, R/2] -> [S, 1, R/2]).

    Selecting the plane with a 0/1 mask and a sum is exact, and exports without gathers.
    """
    positions = (position_ids.to(torch.float32)[:, :, None] * selector[:, None, :]).sum(0)  # [S, R/2]
    return positions * inv_freq


def mrope_cos_sin(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, selector: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [3, S] -> cos, sin [S, rotary_dim]."""
    freqs = mrope_angles(position_ids, inv_freq, selector)
    return per_channel(freqs.cos(), interleaved), per_channel(freqs.sin(), interleaved)


def per_channel(table: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """cos or sin per frequency [..., R/2] -> per rotated channel [..., R]."""
    if interleaved:  # GLM-4.1V rotates adjacent pairs (x0, x1), (x2, x3), ...
        return table.repeat_interleave(2, dim=-1)
    return torch.cat([table, table], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama layout: (first half, second half) -> (-second, first). Used by vision and audio towers too."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    return rotate_half(x)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x [B, H, S, D]; rotates the first cos.shape[-1] channels, passes the rest through."""
    rotary_dim = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # as transformers: angles in fp32, applied in x's dtype
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    x_rot = x_rot * cos + _rotate(x_rot, interleaved) * sin
    return torch.cat([x_rot, x_pass], dim=-1)
