"""The ExecuTorch twin: the eager model quantized in place by torchao, the very model that is lowered."""

from __future__ import annotations

import torch
from torch import nn

from ...quantize import QuantRecipe, QuantReport, apply_recipe, qcheckpoint


def quantize_twin(model, recipe: QuantRecipe, qc=None, scratch=None, backend: str = "xnnpack") -> QuantReport:
    """torchao's recipe applied in place; a quantized checkpoint's integers replace round-to-nearest's.
    With ``scratch`` the quantized tensors live on disk, memory-mapped (``scratch.py``)."""
    if qc is not None:
        qcheckpoint.recipe_matches(qc, recipe)
    report = apply_recipe(model, recipe, fixed=qc.linears if qc is not None else None, scratch=scratch)
    if backend == "xnnpack":
        round_group_scales(model, torch.bfloat16)
    return report


def xnnpack_groupwise(weight) -> bool:
    """Whether XNNPACK stores this torchao weight's scales per group (its ``per_channel_group``
    rule in executorch's ``quant_params.py``: int4 always, int8 only for groups narrower than a row)."""
    group = weight.block_size[-1]
    return weight.target_dtype == torch.int4 or group < weight.shape[-1]


@torch.no_grad()
def round_group_scales(model: nn.Module, dtype: torch.dtype) -> int:
    """Round every group-quantized linear's scales to ``dtype``, in place; returns how many linears.

    XNNPACK keeps per-group weight scales in bf16 (executorch's ``node_visitor.get_quant_params``
    casts them), so the .pte computes with rounded scales. Without the same rounding the twin differs
    from the program by up to 2^-9 of every weight, enough to flip int8 activation roundings in the
    next layer; over 40 random layers that measured as cosine 0.9975 instead of > 0.999. The
    rounded scales are what ships, so the twin and the fp32 cost both describe the real program."""
    count = 0
    for mod in model.modules():
        weight = getattr(mod, "weight", None)
        if isinstance(mod, nn.Linear) and hasattr(weight, "target_dtype") and xnnpack_groupwise(weight):
            weight.scale.copy_(weight.scale.to(dtype).to(weight.scale.dtype))
            count += 1
    return count
