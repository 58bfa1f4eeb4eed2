"""The Core ML twin: the eager model holding the packages' weights (their int4 / int8 / fp16 rounding).

``quantize_like_coreml`` does coremltools' ``linear_symmetric`` arithmetic in torch; with a quantized
checkpoint, ``checkpoint_weight`` is its codes times the fp16 scales, as the constexpr ops hold them.
A test checks both against the integers and scales inside saved packages.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...checkpoint import release_pages
from ...errors import ExportError
from ...model.autoglm import AutoGLM
from ...quantize import QuantReport
from .recipe import CoreMLRecipe

QUANTIZE_SLICE = 1 << 24  # weights rounded per step: 32 MB of fp16 temporaries at any matrix size


def _coreml_qrange(nbits: int) -> int:
    return 2 ** (nbits - 1) - 1  # linear_symmetric: [-7, 7] for int4, [-127, 127] for int8


def quantize_like_coreml(
    weight: torch.Tensor, scheme: str, block_size: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """coremltools' ``linear_symmetric`` arithmetic on a ``[out, in]`` weight, reproduced in torch.

    coremltools quantizes the fp16 constants of the converted program, in fp16:
    ``scale = (max|w| - (-max|w|)) / (2 * qmax)`` per block, ``q = clip(round(w / scale), -qmax, qmax)``
    (round half to even). Returns ``(q int8 [out, in], scale fp16 [out, in // block])`` with one
    block per row for int8, or None when the weight is not compressed that way (input width not a
    multiple of the block). Rows are independent: done a slice of rows at a time (bounded temporaries),
    from any float dtype (a weight as stored, bf16, is read a slice at a time too).
    """
    out_f, in_f = weight.shape
    if scheme == "int4":
        if in_f % block_size:
            return None
        nbits, block = 4, block_size
    elif scheme == "int8":
        nbits, block = 8, in_f
    else:
        raise ValueError(f"no integer quantization for scheme {scheme!r}")
    qmax = _coreml_qrange(nbits)
    q = torch.empty(out_f, in_f, dtype=torch.int8)
    scale = torch.empty(out_f, in_f // block, dtype=torch.float16)
    rows = max(1, QUANTIZE_SLICE // in_f)
    for i in range(0, out_f, rows):
        blocks = weight[i : i + rows].detach().cpu().to(torch.float16).reshape(-1, in_f // block, block)
        max_abs = blocks.abs().amax(dim=-1, keepdim=True)  # fp16
        s = (max_abs - (-max_abs)) / (2 * qmax)  # fp16 arithmetic, as numpy does on fp16 arrays
        qs = torch.nan_to_num(torch.round(blocks / s), nan=0.0).clamp(-qmax, qmax)  # all-zero block: scale 0, q 0
        q[i : i + rows] = qs.to(torch.int8).reshape(-1, in_f)
        scale[i : i + rows] = s.reshape(-1, in_f // block)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 ``q * scale`` with each scale repeated over its block of input channels."""
    block = q.shape[1] // scale.shape[1]
    return q.float() * scale.float().repeat_interleave(block, dim=1)


def _dequantize_rows(q: torch.Tensor, scale: torch.Tensor, rows: int = 1 << 12) -> torch.Tensor:
    """``dequantize`` a slice of rows at a time (the same numbers; no full-size temporaries beside the result)."""
    out = torch.empty(q.shape, dtype=torch.float32)
    for i in range(0, q.shape[0], rows):
        out[i : i + rows] = dequantize(q[i : i + rows], scale[i : i + rows])
    return out


def checkpoint_scheme(q) -> str:
    """The manifest's name for what a quantized checkpoint's layer becomes (None: a layer it leaves fp32)."""
    if q is None:
        return "fp16 (fp32 in the quantized checkpoint)"
    return f"int4/b{q.group_size} (quantized checkpoint)" if q.bits == 4 else "int8 (quantized checkpoint)"


def checkpoint_scales16(q, name: str = "") -> torch.Tensor:
    """A checkpoint layer's fp32 scales as the package stores them (fp16); refuses scales fp16 cannot hold."""
    s16 = q.scales.to(torch.float16)
    if not torch.isfinite(s16).all() or ((s16 == 0) & (q.scales != 0)).any():
        raise ExportError(
            f"{name}: quantized-checkpoint scales {q.scales.abs().min().item():.3g}..{q.scales.abs().max().item():.3g} "
            "do not fit fp16 (Core ML stores scales in fp16)"
        )
    return s16


def checkpoint_weight(q, name: str = "") -> torch.Tensor:
    """fp32 [out, in]: what the package's constexpr op makes of a checkpoint layer: its integer codes
    times the fp16 scales (exact in fp32), rounded to the op's fp16 output."""
    s16 = checkpoint_scales16(q, name)
    return (q.codes.float() * s16.float().repeat_interleave(q.group_size, dim=1)).to(torch.float16).float()


def _runs_in_fp32(mod: nn.Module) -> None:
    """A module whose weight is held in fp16 (the twin of a stored model) computes with an fp32 copy of
    it made for each call (the same numbers: fp16 -> fp32 is exact), as the fp32 reference path does."""
    if isinstance(mod, nn.Embedding):
        mod.forward = lambda ids: F.embedding(ids, mod.weight, mod.padding_idx).float()
        return
    held = {}

    def before(m, args):
        held["w"] = m.weight
        m.weight = nn.Parameter(held["w"].float(), requires_grad=False)

    def after(m, args, output):
        m.weight = held.pop("w")

    mod.register_forward_pre_hook(before)
    mod.register_forward_hook(after)


def _set_weight(mod: nn.Module, weight: torch.Tensor, keep) -> None:
    """The module's weight becomes ``weight`` (fp32): in place for an fp32 model; for a weight still as
    stored (bf16, memory-mapped: ``stored.py``), a new fp16 tensor kept by ``keep`` (the export's scratch:
    on disk, memory-mapped), which is exactly what the package computes with (its constexpr ops output
    fp16), so nothing the size of the model is ever held in fp32."""
    if mod.weight.dtype == torch.float32:
        mod.weight.copy_(weight)
        return
    stored = mod.weight
    mod.weight = nn.Parameter(keep(weight.to(torch.float16)), requires_grad=False)
    release_pages([stored])
    _runs_in_fp32(mod)


def _quantizable_weights(model: AutoGLM, component: str):
    """(name, module) pairs whose ``weight`` the converters compress, per component."""
    roots = {
        "text_decoder": [("text", model.text)],
        "vision_encoder": [("vision", model.vision)],
        "audio_encoder": [("audio", model.audio)] if model.audio is not None else [],
    }
    if component == "token_embedding":
        yield "text.embed_tokens", model.text.embed_tokens
        return
    for prefix, root in roots[component]:
        for name, mod in root.named_modules():
            if isinstance(mod, nn.Linear):  # ConvAsLinear included
                yield f"{prefix}.{name}", mod


@torch.no_grad()
def apply_coreml_quantization(
    model: AutoGLM, recipe: CoreMLRecipe, dry_run: bool = False, fixed: dict | None = None, keep=None
) -> QuantReport:
    """Put the packages' weight rounding into the eager model, in place (its "quantized_eager" twin).

    The decoder's weights are then exactly what the Core ML program dequantizes (up to the final
    fp16 rounding of ``q * scale``); activations stay fp32 here, fp16 in the package.
    ``dry_run``: only report what each weight gets (for the manifest), touch nothing.
    ``keep``: where the twin's weights of a model loaded as stored go (``_set_weight``; e.g. ``Scratch.keep``),
    one module at a time.
    ``fixed``: a quantized checkpoint's linears (fqn -> ``QuantizedLinear``), already loaded into
    the model: those get ``checkpoint_weight`` (their codes times fp16 scales, as the package holds
    them), every other linear stays unquantized (fp16); only the token embedding follows ``recipe``.
    """
    report = QuantReport()
    if dry_run:
        for comp in ("text_decoder", "vision_encoder", "token_embedding", "audio_encoder"):
            scheme = recipe.scheme(comp)
            for name, mod in _quantizable_weights(model, comp):
                if fixed is not None and comp != "token_embedding":
                    report.layers[name] = checkpoint_scheme(fixed.get(name))
                    if name in fixed:
                        report.calibrated.append(name)
                elif scheme == "int4" and mod.weight.shape[1] % recipe.block_size:
                    report.fallbacks.append(name)
                    report.layers[name] = "int8"
                else:
                    report.layers[name] = {"int4": f"int4/b{recipe.block_size}"}.get(scheme, scheme)
        return report
    model.requires_grad_(False)
    keep = keep or (lambda t: t)
    components = ["text_decoder", "vision_encoder", "token_embedding"] + (
        ["audio_encoder"] if model.audio is not None else []
    )
    for comp in components:
        scheme = recipe.scheme(comp)
        for name, mod in _quantizable_weights(model, comp):
            w = mod.weight  # as stored for a model loaded that way; made fp32 a slice at a time below
            if fixed is not None and comp != "token_embedding":
                q = fixed.get(name)
                _set_weight(mod, w.to(torch.float16).float() if q is None else checkpoint_weight(q, name), keep)
                report.layers[name] = checkpoint_scheme(q)
                if q is not None:
                    report.calibrated.append(name)
                continue
            if scheme == "fp16":
                _set_weight(mod, w.to(torch.float16).float(), keep)
                report.layers[name] = "fp16"
                continue
            used = scheme
            qs = quantize_like_coreml(w, scheme, recipe.block_size)
            if qs is None:  # int4 block doesn't divide the input width: int8 per channel
                used = "int8"
                report.fallbacks.append(name)
                qs = quantize_like_coreml(w, "int8", recipe.block_size)
            _set_weight(mod, _dequantize_rows(*qs), keep)
            report.layers[name] = used if used == "int8" else f"int4/b{recipe.block_size}"
    # Everything else the packages hold as fp16 constants (norms, biases, convs, the towers' position
    # grid and rotary tables): round it too, so the reference differs from the package only by its
    # fp16 activations. Not the decoder's inv_freq: the package's rotary tables come from fp32 angles.
    quantized = {f"{n}.weight" for n in report.layers}
    for name, p in model.named_parameters():
        if name not in quantized:
            p.copy_(p.to(torch.float16).to(p.dtype))
    for tower in (model.vision, model.audio):
        if tower is None:
            continue
        for b in tower.buffers():
            if b.is_floating_point():
                b.copy_(b.to(torch.float16).to(b.dtype))
    for name, b in model.text.named_buffers():
        if name.endswith("e_score_correction_bias"):  # MoE routing bias, an fp16 constant in the package
            b.copy_(b.to(torch.float16).to(b.dtype))
    return report
