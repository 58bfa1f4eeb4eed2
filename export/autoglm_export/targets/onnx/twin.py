"""The ONNX twin: the eager model holding exactly the weights the int4 graphs hold.

``fake_quantize_int4`` rounds every linear as onnxruntime's ``MatMulNBits`` quantizer does (bit for
bit); with a quantized checkpoint nothing is rounded (its weights are loaded as they are) and
``checkpoint_layers_report`` records what each layer becomes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...model.autoglm import AutoGLM
from ...model.moe import TopKRouter

ROUTER_NOTE = "MoE router (expert choice; not a linear layer): fp32"


@torch.no_grad()
def int4_block_fake_quant(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """A linear weight [out, in] rounded as ``MatMulNBits`` (symmetric, 4 bits) stores it, dequantized.

    Per output row, blocks of ``block_size`` along the input dimension (the last block zero-padded).
    The scale is the block's largest-magnitude value, sign kept, divided by -8, so that value maps
    to -8 exactly. Stored nibble: clip(floor(w * (1 / scale) + 8 + 0.5), 0, 15) in fp32, i.e.
    roundf with the zero point 8 added before rounding (ties go up, not to even: it matters for
    bf16 checkpoints, whose values often land on exact halves). w' = (nibble - 8) * scale. This is
    onnxruntime's ``quantize_matmul_4bits(..., is_symmetric=True)`` bit for bit
    (tests/export/targets/test_onnx.py reads the weights back from the quantized graphs).
    """
    w = weight.detach().float()
    out_f, in_f = w.shape
    pad = (-in_f) % block_size
    blocks = F.pad(w, (0, pad)).view(out_f, -1, block_size)
    hi, lo = blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True)
    scale = torch.where(hi.abs() > lo.abs(), hi, lo) / -8.0
    reciprocal = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    nibble = torch.floor(blocks * reciprocal + 8.0 + 0.5).clamp(0, 15)  # evaluated left to right, as in fp32 C++
    return ((nibble - 8.0) * scale).view(out_f, -1)[:, :in_f].to(weight.dtype)


def linear_modules(model: AutoGLM) -> dict[str, list[tuple[str, nn.Linear]]]:
    """The nn.Linear layers each component's graph runs, by component (router excluded: not a Linear)."""

    def lins(root: nn.Module, prefix: str):
        return [(f"{prefix}.{n}", m) for n, m in root.named_modules() if isinstance(m, nn.Linear)]

    out = {
        "vision_encoder": lins(model.vision, "vision"),
        "token_embedding": [],
        "text_decoder": lins(model.text, "text"),
    }
    if model.audio is not None:
        out["audio_encoder"] = lins(model.audio, "audio")
    return out


def int4_layers(model: AutoGLM, block_size: int) -> dict[str, str]:
    """fqn -> what int4 export does to it, for the manifest (routers listed as kept fp32)."""
    scheme = f"int4 (MatMulNBits, symmetric, block {block_size})"
    layers = {"text.embed_tokens": "fp32"}
    layers.update({fqn: scheme for mods in linear_modules(model).values() for fqn, _ in mods})
    layers.update({fqn: ROUTER_NOTE for fqn, mod in model.named_modules() if isinstance(mod, TopKRouter)})
    return layers


@torch.no_grad()
def fake_quantize_int4(model: AutoGLM, block_size: int) -> dict[str, str]:
    """In place: every linear weight of the three towers becomes its int4 MatMulNBits value (fp32 storage).

    The eager twin of the int4 graphs (the "quantized_eager" parity reference). Returns ``int4_layers``.
    """
    for mods in linear_modules(model).values():
        for _, mod in mods:
            mod.weight.copy_(int4_block_fake_quant(mod.weight, block_size))
    return int4_layers(model, block_size)


# ---- a quantized checkpoint's integers


CHECKPOINT_FP32 = "fp32 (fp32 in the quantized checkpoint)"


def checkpoint_scheme(q) -> str:
    """The manifest's name for what a checkpoint layer becomes (None: a linear the checkpoint leaves fp32)."""
    if q is None:
        return CHECKPOINT_FP32
    if q.bits == 4:
        return f"int4 (MatMulNBits, symmetric, block {q.group_size}, quantized checkpoint)"
    return "int8 per-channel (MatMulNBits bits 8, quantized checkpoint)"


def checkpoint_layers_report(model: AutoGLM, fixed: dict) -> dict[str, str]:
    """fqn -> what the export does to it with a quantized checkpoint (``int4_layers``' counterpart)."""
    layers = {"text.embed_tokens": "fp32"}
    layers.update(
        {fqn: checkpoint_scheme(fixed.get(fqn)) for mods in linear_modules(model).values() for fqn, _ in mods}
    )
    layers.update({fqn: ROUTER_NOTE for fqn, mod in model.named_modules() if isinstance(mod, TopKRouter)})
    return layers
