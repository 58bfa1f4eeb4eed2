"""Post-training quantization recipes, applied in place with torchao's ``quantize_``.

Schemes for linear layers:
- ``8da4w``: int8 dynamic per-token activations, int4 weights in groups of ``group_size``
  (XNNPACK's fast path). A layer whose input width is not a multiple of the group size falls back
  to ``8da8w`` and the fallback is logged by name: nothing is silently left in fp32.
- ``8da8w``: int8 dynamic activations, int8 per-channel weights.
- ``fp32``: unquantized.
Embeddings: ``4`` (int4 groups, falls back to 8 when the width doesn't divide), ``8`` (int8
per-row), or ``none``. Weight-only linear schemes (``4w``/``8w``) are refused for ExecuTorch:
with executorch 1.5.1 + torchao 0.18 their XNNPACK lowering produced wrong outputs here
(cosine 0.32 against the eager reference), so the validation gate would always reject them.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import stored
from ..checkpoint import release_pages
from ..errors import ExportError
from ..scratch import Scratch

log = logging.getLogger(__name__)

LINEAR_SCHEMES = ("8da4w", "8da8w", "fp32")
EMBEDDING_SCHEMES = ("4", "8", "none")
# What a scheme does to activations decides how faithful an export can be (see autoglm_runtime.parity).
QUANT_KINDS = {"8da4w": "int8_dynamic", "8da8w": "int8_dynamic", "fp32": "fp32"}
REFUSED = {
    "4w": "weight-only int4 linears lower to wrong XNNPACK outputs with executorch 1.5.1; use 8da4w",
    "8w": "weight-only int8 linears lower to wrong XNNPACK outputs with executorch 1.5.1; use 8da8w",
}


# The vision tower's layers after its blocks: the 2x2 patch merge's projection and the merger MLP.
MERGER_PREFIXES = ("vision.downsample", "vision.merger.")


@dataclass(frozen=True)
class QuantRecipe:
    linear: str = "8da4w"  # text decoder linears, lm_head included
    group_size: int = 32
    encoder: str = "8da8w"  # vision and audio tower linears
    embedding: str = "8"
    # The vision merger (MERGER_PREFIXES); None: as ``encoder``. Its one wide MLP amplifies what the
    # blocks hand it, so an int4 tower can keep an int8 merger (the 9B preset does).
    merger: str | None = None

    def __post_init__(self):
        for name, value, allowed in (
            ("--quant", self.linear, LINEAR_SCHEMES),
            ("--quant-encoder", self.encoder, LINEAR_SCHEMES),
            ("--quant-merger", self.merger or self.encoder, LINEAR_SCHEMES),
            ("--quant-embedding", self.embedding, EMBEDDING_SCHEMES),
        ):
            if value in REFUSED:
                raise ExportError(f"{name} {value}: {REFUSED[value]}")
            if value not in allowed:
                raise ExportError(f"{name} {value}: expected one of {', '.join(allowed)}")
        if self.group_size not in (32, 64, 128, 256):
            raise ExportError(f"--group-size {self.group_size}: expected 32, 64, 128 or 256")

    def scheme_for(self, fqn: str) -> str:
        """The scheme asked for the linear ``fqn`` (model names: ``text.``, ``vision.``, ``audio.``),
        before the 8da4w -> 8da8w fallback of ``applied_scheme``."""
        if fqn.startswith(MERGER_PREFIXES):
            return self.merger or self.encoder
        return self.encoder if fqn.startswith(("vision.", "audio.")) else self.linear

    def kind(self, component: str) -> str:
        """How the component is quantized, which decides its parity thresholds."""
        if component == "token_embedding":
            return "fp32" if self.embedding == "none" else "weight_only"
        if component == "text_decoder":
            return QUANT_KINDS[self.linear]
        schemes = (self.encoder, self.merger or self.encoder) if component == "vision_encoder" else (self.encoder,)
        return "int8_dynamic" if any(QUANT_KINDS[s] == "int8_dynamic" for s in schemes) else "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class QuantReport:
    """Per-layer decisions, for the manifest and the log."""

    layers: dict[str, str] = field(default_factory=dict)  # fqn -> scheme actually applied
    fallbacks: list[str] = field(default_factory=list)
    calibrated: list[str] = field(default_factory=list)  # integers taken from a quantized checkpoint

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for fqn, scheme in self.layers.items():
            comp = fqn.split(".", 1)[0]
            out.setdefault(comp, {}).setdefault(scheme, 0)
            out[comp][scheme] += 1
        return out


def int_scheme(bits: str, block_size: int | None) -> str:
    """The ``QuantRecipe`` linear scheme whose stored bytes bound another target's int4/int8/float
    weights, for disk estimates: int4 blocks below 32 (not a recipe group size) are counted as int8,
    fp16 as fp32 (both over, never under)."""
    if bits == "int4":
        return "8da4w" if (block_size or 32) >= 32 else "8da8w"
    return "8da8w" if bits == "int8" else "fp32"


def applied_scheme(scheme: str, in_features: int, group_size: int) -> str:
    """The scheme a linear actually gets: 8da4w falls back to 8da8w when the group doesn't divide its input."""
    return "8da8w" if scheme == "8da4w" and in_features % group_size else scheme


def linear_config(scheme: str, group_size: int):
    """torchao's PTQ config for a linear scheme (also the base config of QAT)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))


def _embedding_config(bits: str, group_size: int):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if bits == "4":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))


def _like(w, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
    """A torchao quantized tensor of ``w``'s kind (dtype, block size, activation quantization) over
    other integers, scales and zero points."""
    return type(w)(
        qdata=qdata,
        scale=scale,
        zero_point=zero_point,
        target_dtype=w.target_dtype,
        block_size=w.block_size,
        dtype=w.dtype,
        activation_quantization=w.activation_quantization,
    )


def _kept(weight, scratch: Scratch | None):
    """``weight`` with its integers, scales and zero points moved to ``scratch`` (``scratch.py``)."""
    if scratch is None:
        return weight
    return _like(weight, scratch.keep(weight.qdata), scratch.keep(weight.scale), scratch.keep(weight.zero_point))


def _use_fixed_codes(linear: nn.Linear, fqn: str, config, fixed, scratch: Scratch | None = None) -> None:
    """The linear's weight made torchao's ``config`` tensor over calibrated integers and scales (same grid,
    same activation quantization). The weight it replaces is never read: torchao's tensor kind comes
    from one row of ones, so a 9B export never rounds (nor holds in fp32) a weight it then discards."""
    from torchao.quantization import quantize_

    with torch.device("meta"):
        row = nn.Linear(linear.in_features, 1, bias=False)
    row.weight = nn.Parameter(torch.ones(1, linear.in_features), requires_grad=False)
    quantize_(row, config, lambda m, _: isinstance(m, nn.Linear))
    kind, q = row.weight, fixed
    if tuple(kind.block_size) != (1, q.group_size) or kind.target_dtype != getattr(torch, f"int{q.bits}"):
        raise ExportError(
            f"{fqn}: the quantized checkpoint has int{q.bits}/group {q.group_size}, the recipe made "
            f"{kind.target_dtype}/block {tuple(kind.block_size)}"
        )
    zeros = torch.zeros(q.scales.shape, dtype=kind.zero_point.dtype)
    weight = _like(kind, q.codes.to(torch.int8), q.scales.to(kind.scale.dtype), zeros)
    linear.weight = nn.Parameter(_kept(weight, scratch), requires_grad=False)


# Rows per torchao call for a large weight: torchao's temporaries are about 3x the fp32 weight it
# quantizes (measured: +7.6 GB for the 151552 x 4096 lm_head at once), so big matrices go in slices.
ROW_CHUNK_WEIGHTS = 1 << 25  # 32M weights: 128 MB in fp32


def quantize_module(
    mod: nn.Linear | nn.Embedding, config, chunk_weights: int = ROW_CHUNK_WEIGHTS, scratch: Scratch | None = None
) -> None:
    """torchao's ``config`` on one linear or embedding, in place, from fp32 (a weight kept as stored,
    ``stored.py``, is converted slice by slice and its pages given back). With ``scratch`` the
    quantized tensors are moved to disk and memory-mapped (``scratch.py``).

    A weight above ``chunk_weights`` is quantized in slices of whole rows: per-row and per-group
    quantization never mixes rows, so each slice gets exactly the integers and scales of those rows
    in a whole-matrix call, and the slices are joined into one torchao tensor."""
    from torchao.quantization import quantize_

    def is_target(m, fqn):
        return isinstance(m, (nn.Linear, nn.Embedding))

    w = mod.weight
    rows = max(1, chunk_weights // w.shape[1])
    if w.shape[0] <= rows:
        stored.to_fp32(mod)
        quantize_(mod, config, is_target)
        mod.weight = nn.Parameter(_kept(mod.weight, scratch), requires_grad=False)
        return
    parts = []
    for start in range(0, w.shape[0], rows):
        piece = w[start : start + rows]
        with torch.device("meta"):
            tmp = (
                nn.Embedding(*piece.shape)
                if isinstance(mod, nn.Embedding)
                else nn.Linear(piece.shape[1], piece.shape[0], bias=False)
            )
        tmp.weight = nn.Parameter(piece.float(), requires_grad=False)
        quantize_(tmp, config, is_target)
        parts.append(tmp.weight)
        release_pages([piece])
    joined = _like(
        parts[0],
        torch.cat([p.qdata for p in parts]),
        torch.cat([p.scale for p in parts]),
        torch.cat([p.zero_point for p in parts]),
    )
    mod.weight = nn.Parameter(_kept(joined, scratch), requires_grad=False)


@contextmanager
def in_row_slices(model: nn.Module, chunk_weights: int = ROW_CHUNK_WEIGHTS):
    """The quantized eager model run with bounded memory: torchao dequantizes a whole weight per call
    (measured at the real vocabulary: 7.8 GB peak for one decoder call through the 151552 x 4096
    lm_head, 7.8 GB for one embedding lookup). Inside, a quantized linear above ``chunk_weights``
    computes its outputs in slices of weight rows (per-token activation quantization does not depend
    on the weight, so each slice's outputs are those columns of the whole call, to float summation
    order: ~4e-7 relative; 3.7 GB), and a quantized embedding dequantizes only the rows it looks up
    (exact). Small models (no weight above ``chunk_weights``) run unchanged."""
    patched = []
    for mod in model.modules():
        w = mod._parameters.get("weight")
        if w is None or not hasattr(w, "qdata") or w.numel() <= chunk_weights:
            continue
        if isinstance(mod, nn.Linear):
            mod.forward = _sliced_linear(mod, max(1, chunk_weights // w.shape[1]))
        elif isinstance(mod, nn.Embedding):
            mod.forward = _gathered_embedding(mod)
        else:
            continue
        patched.append(mod)
    try:
        yield model
    finally:
        for mod in patched:
            mod.__dict__.pop("forward", None)


def _sliced_linear(mod: nn.Linear, rows: int):
    from torch.nn import functional as F

    def forward(x):
        w, b = mod.weight, mod.bias
        return torch.cat(
            [F.linear(x, w[i : i + rows], None if b is None else b[i : i + rows]) for i in range(0, w.shape[0], rows)],
            dim=-1,
        )

    return forward


def _gathered_embedding(mod: nn.Embedding):
    def forward(ids):
        w, flat = mod.weight, ids.reshape(-1)
        rows = _like(w, w.qdata[flat], w.scale[flat], w.zero_point[flat])
        return rows.dequantize().reshape(*ids.shape, w.shape[1])

    return forward


def _quantize_linears(
    root: nn.Module,
    prefix: str,
    recipe: QuantRecipe,
    report: QuantReport,
    fixed: dict | None = None,
    scratch: Scratch | None = None,
) -> None:
    group_size = recipe.group_size
    chosen: dict[str, str] = {}
    for fqn, mod in root.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        scheme = recipe.scheme_for(f"{prefix}.{fqn}")
        if scheme == "fp32":
            stored.to_fp32(mod)
            report.layers[f"{prefix}.{fqn}"] = "fp32"
            continue
        chosen[fqn] = applied_scheme(scheme, mod.in_features, group_size)
        if chosen[fqn] != scheme:
            report.fallbacks.append(f"{prefix}.{fqn}")
            log.warning(
                "%s.%s: in_features %d is not a multiple of group size %d; using 8da8w (int8 per-channel)",
                prefix,
                fqn,
                mod.in_features,
                group_size,
            )
    modules = dict(root.named_modules())
    configs = {target: linear_config(target, group_size) for target in set(chosen.values())}
    for fqn, target in chosen.items():  # one linear at a time: its fp32 copy lives only until quantized
        name = f"{prefix}.{fqn}"
        if fixed is not None and name in fixed:
            _use_fixed_codes(modules[fqn], name, configs[target], fixed[name], scratch)
            report.calibrated.append(name)
        else:
            quantize_module(modules[fqn], configs[target], scratch=scratch)
        report.layers[name] = target


@torch.no_grad()
def apply_recipe(
    model: nn.Module, recipe: QuantRecipe, fixed: dict | None = None, scratch: Scratch | None = None
) -> QuantReport:
    """Quantize an ``AutoGLM`` in place. Embeddings first: quantize_'s linear filter must not see them.

    Layer by layer: each weight kept as stored (bf16, ``stored.py``) becomes fp32 just before torchao
    quantizes it and its stored pages go back, so only one fp32 weight exists at a time; the numbers
    are those of an fp32-loaded model (bf16 -> fp32 is exact).

    ``fixed``: fqn -> ``qcheckpoint.QuantizedLinear`` whose integers replace round-to-nearest's
    (every one must be used: a layer the recipe leaves fp32 is an error, not a silent skip).
    ``scratch``: quantized tensors go to disk, memory-mapped back, as each layer is done (``scratch.py``).
    """

    report = QuantReport()
    model.requires_grad_(False)
    embed = model.text.embed_tokens
    if recipe.embedding != "none":
        bits = recipe.embedding
        if bits == "4" and embed.embedding_dim % recipe.group_size:
            log.warning(
                "text.embed_tokens: width %d is not a multiple of group size %d; using 8-bit",
                embed.embedding_dim,
                recipe.group_size,
            )
            report.fallbacks.append("text.embed_tokens")
            bits = "8"
        quantize_module(embed, _embedding_config(bits, recipe.group_size), scratch=scratch)
        report.layers["text.embed_tokens"] = f"int{bits} embedding"
    else:
        stored.to_fp32(embed)
        report.layers["text.embed_tokens"] = "fp32"
    _quantize_linears(model.text, "text", recipe, report, fixed, scratch)
    _quantize_linears(model.vision, "vision", recipe, report, fixed, scratch)
    if model.audio is not None:
        _quantize_linears(model.audio, "audio", recipe, report, fixed, scratch)
    left = stored.remaining(model)
    if left:  # a bug, not a user error: a weight the recipe never reached would be lowered in bf16
        raise RuntimeError(f"weights left as stored (not fp32) after quantizing: {left[:5]}")
    unused = sorted(set(fixed or {}) - set(report.calibrated))
    if unused:
        raise ExportError(
            f"the quantized checkpoint has integer weights for {unused[:5]} but the recipe leaves them fp32"
        )
    return report
