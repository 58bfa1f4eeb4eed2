"""The rounding floor: how far the quantized eager model moves from itself under float-level noise.

int8 dynamic activations make a model discontinuous. A few-ULP difference in a linear's input (XNNPACK
sums in another order than torch) flips some int8 roundings, each flip moves a value by a whole step,
and the next layers carry it on. Measured at the real widths: the vision merger alone turns a 3e-5
difference into 7e-4, and 24 random blocks compound it. A faithful export is then judged against
what the twin itself does under the same kind of noise, not against a fixed 0.999.

When a faithfulness row of kind ``int8_dynamic`` misses its fixed thresholds, the gate runs the twin
again with every activation-quantized linear's input multiplied by ``1 + JITTER * N(0, 1)`` (seeded),
and re-judges that row with thresholds widened to ``FLOOR_FACTOR`` times the distance between the
two twin runs (``widened``). A real difference stands far above it: the twin's fp32 weight scales
against XNNPACK's bf16 ones measured 40x the floor on 8 real-width-style layers.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from autoglm_runtime.parity import Metrics, Thresholds

FLOOR_FACTOR = 4.0
JITTER = 2.0**-21  # relative, about 4 ULPs of fp32: the size of a reordered sum's difference
ROUNDED_AT_RUN_TIME = ("int8_dynamic",)  # kinds whose twin rounds activations as the program does


def needs_floor(report) -> tuple[str, ...]:
    """The components whose faithfulness row missed and may be re-judged against the floor."""
    return tuple(
        r["component"]
        for r in report.rows
        if not r["passed"] and r["reference"] == "quantized_eager" and r["quant_kind"] in ROUNDED_AT_RUN_TIME
    )


@contextmanager
def jittered(model: nn.Module, rel: float = JITTER, seed: int = 0):
    """Every linear whose weight quantizes its activations at run time sees its input times 1 + rel * N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def before(mod, args):
        x = args[0]
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.dtype)
        return (x * (1 + rel * noise), *args[1:])

    handles = [
        m.register_forward_pre_hook(before)
        for m in model.modules()
        if isinstance(m, nn.Linear) and getattr(m.weight, "activation_quantization", None) is not None
    ]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def widened(th: Thresholds, floor: Metrics) -> Thresholds:
    """``th`` loosened, where the floor is wider, to ``FLOOR_FACTOR`` times the floor's distance."""

    def at_least(limit, distance):
        return None if limit is None else max(limit, FLOOR_FACTOR * distance)

    def at_most(limit, agreement):
        return None if limit is None else min(limit, 1 - FLOOR_FACTOR * (1 - agreement))

    return Thresholds(
        max_rel_abs=at_least(th.max_rel_abs, floor.rel_max_abs),
        min_cosine=at_most(th.min_cosine, floor.cosine),
        min_top1=at_most(th.min_top1, floor.top1_agreement if floor.top1_agreement is not None else 1.0),
        max_kl=at_least(th.max_kl, floor.kl_mean or 0.0),
    )
