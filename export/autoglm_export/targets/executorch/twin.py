"""The ExecuTorch twin: the eager model quantized in place by torchao, the very model that is lowered."""

from __future__ import annotations

from ...quantize import QuantRecipe, QuantReport, apply_recipe, qcheckpoint


def quantize_twin(model, recipe: QuantRecipe, qc=None, scratch=None) -> QuantReport:
    """torchao's recipe applied in place; a quantized checkpoint's integers replace round-to-nearest's.
    With ``scratch`` the quantized tensors live on disk, memory-mapped (``scratch.py``)."""
    if qc is not None:
        qcheckpoint.recipe_matches(qc, recipe.linear, recipe.encoder, recipe.group_size)
    return apply_recipe(model, recipe, fixed=qc.linears if qc is not None else None, scratch=scratch)
