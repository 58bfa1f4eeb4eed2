"""Units of every size and bandwidth the benchmarks report: decimal GB/MB, like the peer numbers in the notes."""

from __future__ import annotations

GB = 1e9
MB = 1e6


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def fmt_mb(nbytes: float) -> str:
    return f"{nbytes / MB:,.1f} MB"
