"""The ONNX twin: the eager model holding exactly the weights the int4 graphs hold.

``int4_twin`` rounds every linear as onnxruntime's ``MatMulNBits`` quantizer does (bit for bit),
from the weights as loaded (bf16 memory-mapped at 9B) without an fp32 copy of the model; with a
quantized checkpoint nothing is rounded (its weights are loaded as they are) and
``checkpoint_layers_report`` records what each layer becomes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint import release_pages
from ...model.autoglm import AutoGLM
from ...model.moe import TopKRouter
from ...quantize.recipes import ROW_CHUNK_WEIGHTS

ROUTER_NOTE = "MoE router (expert choice; not a linear layer): fp32"


@torch.no_grad()
def int4_block_codes(weight: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear weight [out, in] rounded as ``MatMulNBits`` (symmetric, 4 bits) stores it: the codes
    ``nibble - 8`` as int8 [out, blocks, block_size] and the fp32 scales [out, blocks, 1].

    Per output row, blocks of ``block_size`` along the input dimension (the last block zero-padded).
    The scale is the block's largest-magnitude value, sign kept, divided by -8, so that value maps
    to -8 exactly. Stored nibble: clip(floor(w * (1 / scale) + 8 + 0.5), 0, 15) in fp32, i.e.
    roundf with the zero point 8 added before rounding (ties go up, not to even: it matters for
    bf16 checkpoints, whose values often land on exact halves). This is onnxruntime's
    ``quantize_matmul_4bits(..., is_symmetric=True)`` bit for bit (tests/export/targets/test_onnx.py
    reads the weights back from the quantized graphs). Rows go through in slices, so a stored (bf16)
    weight is never whole in fp32.
    """
    out_f, in_f = weight.shape
    pad = (-in_f) % block_size
    rows = max(1, ROW_CHUNK_WEIGHTS // in_f)
    codes, scales = [], []
    for i in range(0, out_f, rows):
        blocks = F.pad(weight[i : i + rows].detach().float(), (0, pad)).view(-1, (in_f + pad) // block_size, block_size)
        hi, lo = blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True)
        scale = torch.where(hi.abs() > lo.abs(), hi, lo) / -8.0
        reciprocal = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
        nibble = torch.floor(blocks * reciprocal + 8.0 + 0.5).clamp(0, 15)  # evaluated left to right, as in fp32 C++
        codes.append((nibble - 8.0).to(torch.int8))
        scales.append(scale)
    return torch.cat(codes), torch.cat(scales)


def int4_block_fake_quant(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """``int4_block_codes`` dequantized: w' = (nibble - 8) * scale, the weight the int4 graph computes with."""
    codes, scales = int4_block_codes(weight, block_size)
    return (codes.float() * scales).view(weight.shape[0], -1)[:, : weight.shape[1]].to(weight.dtype)


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


def int4_layers(model: AutoGLM, block_size: int, embedding: str = "fp32") -> dict[str, str]:
    """fqn -> what int4 export does to it, for the manifest (routers listed as kept fp32)."""
    scheme = f"int4 (MatMulNBits, symmetric, block {block_size})"
    layers = {"text.embed_tokens": embedding_scheme(embedding, block_size)}
    layers.update({fqn: scheme for mods in linear_modules(model).values() for fqn, _ in mods})
    layers.update({fqn: ROUTER_NOTE for fqn, mod in model.named_modules() if isinstance(mod, TopKRouter)})
    return layers


def _sliced_linear(mod: nn.Linear, weight_rows, pages: list[torch.Tensor]):
    """``mod``'s forward with its weight made by ``weight_rows(start, stop)`` (fp32 rows), one row slice
    at a time: an fp32 copy of a whole weight never exists (each slice's outputs are those columns of
    the whole call, to float summation order; small weights are one slice, the unsliced call). After
    each call the file pages of ``pages`` (what the rows are made from) go back, so resident memory
    follows the layer being run, not the model."""
    out_f, in_f = mod.out_features, mod.in_features
    rows = max(1, ROW_CHUNK_WEIGHTS // in_f)

    def forward(x):
        b = mod.bias
        out = torch.cat(
            [
                F.linear(x, weight_rows(i, min(i + rows, out_f)), None if b is None else b[i : i + rows])
                for i in range(0, out_f, rows)
            ],
            dim=-1,
        )
        release_pages(pages)
        return out

    return forward


def _fp32_rows(weight: torch.Tensor):
    def rows(i, j):
        return weight[i:j].float()

    return rows


def _dequantized_rows(codes: torch.Tensor, scales: torch.Tensor, in_f: int):
    def rows(i, j):
        return (codes[i:j].float() * scales[i:j]).view(j - i, -1)[:, :in_f]

    return rows


def embedding_scheme(embedding: str, block_size: int) -> str:
    return f"int4 (GatherBlockQuantized, symmetric, block {block_size})" if embedding == "int4" else "fp32"


def _int4_embedding(model: AutoGLM, block_size: int, scratch=None) -> None:
    """The token embedding looks up rows of its int4 table (``GatherBlockQuantized``'s: the codes and scales
    MatMulNBits would make of it, ``int4_block_codes``), dequantized per lookup; the codes live in ``scratch``
    (memory-mapped, one byte a value) when given."""
    mod = model.text.embed_tokens
    codes, scales = int4_block_codes(mod.weight, block_size)
    if scratch is not None:
        codes, scales = scratch.keep(codes), scratch.keep(scales)
        scratch.release()
    release_pages([mod.weight])

    def forward(ids):
        return (codes[ids].float() * scales[ids]).view(*ids.shape, -1)

    mod.forward = forward


def _fp32_embedding(model: AutoGLM) -> None:
    """The token embedding looks up its stored rows and makes only those fp32 (the same numbers)."""
    mod = model.text.embed_tokens
    if mod.weight.dtype != torch.float32:
        mod.forward = lambda ids, w=mod.weight: F.embedding(ids, w).float()


@torch.no_grad()
def int4_twin(model: AutoGLM, block_size: int, scratch=None, embedding: str = "fp32") -> dict[str, str]:
    """In place: every linear of the three towers computes with its int4 MatMulNBits weight (and with
    ``embedding`` int4 the token embedding with its GatherBlockQuantized table).

    The eager twin of the int4 graphs (the "quantized_eager" parity reference). Each weight's codes and
    scales are made once from the weight as loaded (``int4_block_codes``; with ``scratch``, kept on disk
    and memory-mapped: 1 byte per weight, not 4) and dequantized per call in row slices, so neither an
    fp32 copy of the model nor of a large weight is ever held. Returns ``int4_layers``.
    """
    for mods in linear_modules(model).values():
        for _, mod in mods:
            codes, scales = int4_block_codes(mod.weight, block_size)
            if scratch is not None:
                codes, scales = scratch.keep(codes), scratch.keep(scales)
                scratch.release()
            release_pages([mod.weight])
            mod.forward = _sliced_linear(mod, _dequantized_rows(codes, scales, mod.in_features), [codes, scales])
    if embedding == "int4":
        _int4_embedding(model, block_size, scratch)
    else:
        _fp32_embedding(model)
    return int4_layers(model, block_size, embedding)


@torch.no_grad()
def fp32_twin(model: AutoGLM) -> dict[str, str]:
    """In place: linears and the token embedding held as stored (bf16) compute in fp32 (the fp32 graphs'
    weights), one row slice at a time; a model loaded in fp32 is left as it is."""
    for mods in linear_modules(model).values():
        for _, mod in mods:
            if mod.weight.dtype != torch.float32:
                mod.forward = _sliced_linear(mod, _fp32_rows(mod.weight), [mod.weight])
    _fp32_embedding(model)
    layers = {"text.embed_tokens": "fp32"}
    layers.update({fqn: "fp32" for mods in linear_modules(model).values() for fqn, _ in mods})
    return layers


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
