"""Disk space: how big a bundle will be (from the model's structure and the recipe), checked before work.

The estimate counts what a bundle stores per weight: int4 codes at half a byte plus one fp32 scale
per group, int8 codes plus one fp32 scale per row, fp32 otherwise (norms, biases, position
embeddings, the precomputed rotary tables). Scales are counted at 4 bytes even where a target
stores them narrower, so it errs on the large side; targets add their own container overhead
through ``margin``.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .config import ModelConfig
from .errors import ExportError
from .model.autoglm import ExportShape
from .quantize.recipes import QuantRecipe, applied_scheme
from .sizes import human_bytes, kv_cache_bytes

FP32 = 4


@dataclass(frozen=True)
class BundleEstimate:
    components: dict[str, int] = field(default_factory=dict)  # component -> bytes
    kv_cache: int = 0  # fp32 KV cache at the export context; counted in total only when asked

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {human_bytes(v)}" for k, v in self.components.items())
        return f"{human_bytes(self.total)} ({parts})"


def linear_bytes(out_features: int, in_features: int, scheme: str, group_size: int) -> int:
    """Stored bytes of one linear weight under a scheme (bias not included)."""
    n = out_features * in_features
    scheme = applied_scheme(scheme, in_features, group_size)
    if scheme == "8da4w":
        return math.ceil(n / 2) + (n // group_size) * FP32
    if scheme == "8da8w":
        return n + out_features * FP32
    return n * FP32


def embedding_bytes(rows: int, dim: int, bits: str, group_size: int) -> int:
    if bits == "4" and dim % group_size == 0:
        return math.ceil(rows * dim / 2) + (rows * dim // group_size) * FP32
    if bits in ("4", "8"):
        return rows * dim + rows * FP32
    return rows * dim * FP32


def _module_bytes(
    root: nn.Module, prefix: str, recipe: QuantRecipe | None, exclude: frozenset[int] = frozenset()
) -> int:
    """Linears at the recipe's scheme for each (None: fp32); every other parameter (but ``exclude``d
    ids) and constant buffer in fp32. The KV cache is not a constant: a runtime allocates it."""
    total, linear_weights = 0, set(exclude)
    for fqn, mod in root.named_modules():
        if isinstance(mod, nn.Linear):
            scheme = recipe.scheme_for(f"{prefix}.{fqn}") if recipe else "fp32"
            group_size = recipe.group_size if recipe else 32
            total += linear_bytes(mod.out_features, mod.in_features, scheme, group_size)
            linear_weights.add(id(mod.weight))
    for p in root.parameters():
        if id(p) not in linear_weights:
            total += p.numel() * FP32
    for name, b in root.named_buffers():
        if not name.endswith(("k_cache", "v_cache")):
            total += b.numel() * FP32
    return total


def estimate_bundle_bytes(
    cfg: ModelConfig,
    shape: ExportShape,
    recipe: QuantRecipe | None = None,
    *,
    include_kv_cache: bool = False,
) -> BundleEstimate:
    """Bytes per exported component for ``recipe`` (None: all fp32). Builds the model on meta: free."""
    from .loader import meta_model

    embedding, group = (recipe.embedding, recipe.group_size) if recipe else ("none", 32)
    model = meta_model(cfg, shape)
    text = model.text
    embed = embedding_bytes(text.embed_tokens.num_embeddings, text.embed_tokens.embedding_dim, embedding, group)
    # The embedding is its own component; a tied lm_head is stored again, quantized, in the decoder.
    decoder = _module_bytes(text, "text", recipe, frozenset({id(text.embed_tokens.weight)}))
    components = {
        "token_embedding": embed,
        "text_decoder": decoder,
        "vision_encoder": _module_bytes(model.vision, "vision", recipe),
    }
    if model.audio is not None:
        components["audio_encoder"] = _module_bytes(model.audio, "audio", recipe)
    kv = kv_cache_bytes(cfg.text, shape.max_context, FP32)
    if include_kv_cache:
        components["kv_cache"] = kv
    return BundleEstimate(components, kv)


def unpacked_quantized_bytes(cfg: ModelConfig, shape: ExportShape, recipe: QuantRecipe) -> int:
    """Bytes of torchao's unpacked form of every weight ``recipe`` quantizes (one int8 per weight plus an
    fp32 scale and an int8 zero point per group or row): what an ExecuTorch export keeps in its scratch
    folder (``scratch.py``) until the program is written."""
    from .loader import meta_model

    model = meta_model(cfg, shape)

    def quantized(n: int, rows: int, groups: int) -> int:
        return n + groups * (FP32 + 1) if groups else n + rows * (FP32 + 1)

    total = 0
    for fqn, mod in model.named_modules():
        scheme = recipe.scheme_for(fqn) if isinstance(mod, nn.Linear) else "fp32"
        if scheme != "fp32":
            four = applied_scheme(scheme, mod.in_features, recipe.group_size) == "8da4w"
            n = mod.weight.numel()
            total += quantized(n, mod.out_features, n // recipe.group_size if four else 0)
    embed = model.text.embed_tokens
    if recipe.embedding != "none":
        n = embed.weight.numel()
        total += quantized(n, embed.num_embeddings, n // recipe.group_size if recipe.embedding == "4" else 0)
    return total


def free_bytes(path: Path) -> tuple[Path, int]:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def check_free_space(out_dir: Path, needed: int, *, what: str = "the bundle", margin: float = 1.1) -> None:
    """Raise before any work when ``out_dir``'s file system cannot take ``needed`` x ``margin`` bytes."""
    probe, free = free_bytes(out_dir)
    want = int(needed * margin)
    if free < want:
        raise ExportError(
            f"{out_dir}: not enough disk space: {what} needs about {human_bytes(want)} "
            f"(estimate {human_bytes(needed)} + {round((margin - 1) * 100)}% margin) but {probe} has "
            f"{human_bytes(free)} free"
        )
