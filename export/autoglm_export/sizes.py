"""Sizes of a model from its structure alone: parameter counts per tower and KV cache bytes.

Everything here works on a model built on the meta device, so it costs no memory at any size.
"""

from __future__ import annotations

from torch import nn

from .config import TextConfig
from .model.autoglm import AutoGLM


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_counts(model: AutoGLM) -> dict[str, int]:
    """Parameters per part: the text tower split into embedding / layers / head, then the towers."""
    text = model.text
    parts = {
        "text.embed_tokens": count(text.embed_tokens),
        "text.layers": count(text.layers),
        "text.lm_head": 0 if text.lm_head.weight is text.embed_tokens.weight else count(text.lm_head),
        "text.norm": count(text.norm),
        "vision": count(model.vision),
        "audio": count(model.audio),
    }
    parts["text"] = sum(v for k, v in parts.items() if k.startswith("text."))
    parts["total"] = parts["text"] + parts["vision"] + parts["audio"]
    return parts


def kv_cache_bytes(text: TextConfig, context: int, bytes_per_value: int) -> int:
    """Keys and values of every layer for ``context`` tokens (GQA: only the KV heads are stored)."""
    return 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * context * bytes_per_value


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


# Where a model counts as large for the export's checks: above it an fp32 copy of all weights no longer
# fits beside the model, and each eager call through it takes seconds (checks/against_transformers.py,
# checks/probes.py).
LARGE_MODEL_PARAMS = 2_000_000_000
