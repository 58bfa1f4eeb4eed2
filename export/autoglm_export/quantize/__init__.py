"""Quantization: recipes (which scheme for which layers) applied with torchao."""

from .recipes import QUANT_KINDS, QuantRecipe, QuantReport, apply_recipe

__all__ = ["QUANT_KINDS", "QuantRecipe", "QuantReport", "apply_recipe"]
