"""ONNX recipe: ``torch.onnx.export`` (dynamo) per component, int4 ``MatMulNBits``, weights in external data.

Files, one per component: ``vision_encoder.onnx``, ``audio_encoder.onnx`` (when the model has audio),
``token_embedding.onnx`` and ``text_decoder.onnx``. The decoder has no state: the KV cache is
explicit. Per layer ``i`` it takes ``past_key_{i}`` / ``past_value_{i}`` (static
``[1, kv_heads, max_context, head_dim]`` float32) and returns ``present_key_{i}`` /
``present_value_{i}``: the same caches with this call's keys/values written at ``cache_position``
(consecutive slots). The caller feeds each call's presents back as the next call's pasts, or binds
both to one buffer (``OnnxBackend`` does; the graph's metadata allows it). ``seq`` (the number of new
tokens) is dynamic. Attention is one ``com.microsoft::GroupQueryAttention`` per layer
(``attention.py``): query ``i`` sees cache slots ``0..cache_position[i]``, as in the eager decoder, so
stale slots never leak.

Weights (``weights.py``): each component is traced with placeholder weights and every linear's
initializer is made from its stored weight as the file is written, one linear at a time, so no fp32
copy of the model ever exists (at 9B it would be 41 GB). int4: every linear's MatMul becomes
``com.microsoft::MatMulNBits`` (symmetric, blocks of ``block_size`` along the input dimension, fp32
scales, no activation quantization; B and scales from onnxruntime's own quantizer), lm_head included.
The one exception is the MoE router's ``[hidden, experts]`` weight: it is not a linear layer, chooses
the experts, and is kept fp32 (torchao leaves it alone for ExecuTorch too). An int4 MoE layer's routed
experts are one ``com.microsoft::QMoE`` node that runs only each token's top-k experts (``experts.py``; the
same int4 codes and scales). ``twin.int4_twin`` applies
the identical rounding to the eager model, giving the "quantized_eager" parity reference. Weights
above ``EXTERNAL_DATA_THRESHOLD`` go to ``<file>.data`` beside the graph (64 KiB-aligned: onnxruntime
maps them).

A quantized checkpoint (``calibrate`` / ``qat``; ``fixed``: fqn -> ``QuantizedLinear``, already loaded
into the model, so the exported fp32 weights are its ``codes * scales``; the model is then all fp32 and
traced with its weights): nothing is rounded here.
``apply_checkpoint_codes`` finds each constant-weight MatMul's linear by value and writes
- int4 layers: ``MatMulNBits`` (bits 4, block = the checkpoint's group size, no zero-point input,
  i.e. the default 8: symmetric) whose B is the checkpoint's codes + 8 packed two per byte (even
  input channel in the low nibble) and whose scales are its fp32 scales. The quantizer builds the
  node; its round-to-nearest B / scales are then replaced, checked against its layout.
- int8 layers (per output channel: the encoders, and int4 layers whose input width the group does
  not divide): ``MatMulNBits`` with bits 8, B = code + 128 (the default zero point for 8 bits), and
  the row's one scale repeated in each block (``_int8_block`` picks the block, 16..256, with the
  fewest bytes; the last block is padded with zero codes). Exact: every weight is code * its row's
  scale. Not ``DequantizeLinear(int8, per-axis) -> MatMul``: onnxruntime (1.31, ORT_ENABLE_ALL) fuses
  that pair into a MatMulNBits with ``accuracy_level`` 4, i.e. int8-quantized activations, which
  moved the encoders' outputs by 1.6e-2 of their scale (measured) instead of ~1e-6.
- no ``accuracy_level`` attribute on any node: fp32 compute, as the eager reference does. Both
  kinds dequantize to ``code * scale`` in fp32, bit for bit the eager model's weight.

``--int8-activations`` (``accuracy_level=4``, either path): every MatMulNBits quantizes its input to int8
per block at run time and runs onnxruntime's int8 kernels (1.4-1.5x faster decode on this machine). The
eager twin keeps fp32 activations, so parity uses the ``int8_activations`` thresholds (``parity.py``).
- every linear the checkpoint leaves fp32 stays a plain fp32 MatMul (listed in ``fp32_matmuls``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoglm_runtime.backends.onnx_backend import IN_PLACE_METADATA
from autoglm_runtime.preprocess.buckets import is_vision_method

from ...components import components
from ...errors import ExportError
from ...model.autoglm import AutoGLM
from ...model.moe import TopKRouter
from ...model.rope import mrope_angles
from ...model.text import TextDecoder
from ...quantize.grid import BLOCK_SIZES, array_digest
from . import attention, experts
from .attention import attend
from .experts import attach_experts, sparse_experts
from .norm import fusable_rms_norms
from .recipe import QUANT_SCHEMES
from .twin import CHECKPOINT_FP32, ROUTER_NOTE, linear_modules
from .weights import (
    attach_weights,
    drop_shared,
    external_tensors,
    initializer_bytes,
    placeholder_weights,
    save_streaming,
)

log = logging.getLogger(__name__)

OPSET = 18
# Above this many bytes of weights, they go to "<file>.data": a protobuf message cannot exceed 2 GiB,
# and onnxruntime maps aligned external data in place but parses inline weights into its own heap
# (measured at the real widths: load peak 1.3x the weights with external data, 1.8x inline).
EXTERNAL_DATA_THRESHOLD = 1 << 26  # 64 MiB


# ---- the decoder with an explicit KV cache


class OnnxTextDecoder(nn.Module):
    """``text_decoder`` with the KV cache as arguments: (embeds, cache_position, position_ids,
    [past_key_0, past_value_0, ...]) -> (logits, present_key_0, present_value_0, ...).

    Runs ``TextDecoder``'s own layers (norms, MLP/MoE, projections, rope helpers); attention and the
    cache update are one ``GroupQueryAttention`` per layer (``attention.py``).
    """

    def __init__(self, text: TextDecoder):
        super().__init__()
        self.text = text

    def forward(self, inputs_embeds, cache_position, position_ids, past: list[torch.Tensor]):
        t = self.text
        angles = mrope_angles(position_ids, t.inv_freq, t.rope_selector)
        cos, sin = angles.cos(), angles.sin()
        x = inputs_embeds
        present = []
        for i, layer in enumerate(t.layers):
            h, k, v = attend(
                layer.self_attn, layer.input_layernorm(x), cos, sin, cache_position, past[2 * i], past[2 * i + 1]
            )
            present += [k, v]
            x = layer.residual_tail(x, h)
        return (t.head(x), *present)


def cache_shape(model: AutoGLM) -> tuple[int, int, int, int]:
    attn = model.text.layers[0].self_attn
    return (1, attn.n_kv_heads, model.shape.max_context, attn.head_dim)


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(past inputs, present outputs), interleaved key/value per layer."""
    past = [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
    return past, ["present" + n[len("past") :] for n in past]


def _name_scopes(node) -> str:
    return next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")


def linear_matmuls(model, linears: list[tuple[str, nn.Linear]]) -> dict[str, list[str]]:
    """Constant-weight MatMul node name -> the nn.Linear fqn(s) whose weight it multiplies.

    Matched by value (B is the linear's weight transposed, bit for bit: the exporter and
    ``gemm_to_matmul`` only transpose it), so it does not depend on the exporter's naming; equal
    weights are told apart by the node's torch name scopes when they can be."""
    from onnx import numpy_helper

    by_value: dict = {}
    for fqn, mod in linears:
        by_value.setdefault(array_digest(mod.weight.detach().float().T.numpy()), []).append(fqn)
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in constant_matmuls(model):
        b = numpy_helper.to_array(inits[node.input[1]])
        if b.dtype != np.float32:
            continue
        fqns = by_value.get(array_digest(b))
        if not fqns:
            continue
        if len(fqns) > 1:
            scopes = _name_scopes(node)
            named = [f for f in fqns if f"'{f}'" in scopes or f".{f}'" in scopes]
            fqns = named if len(named) == 1 else fqns
        out[node.name] = fqns
    return out


def _one_layer(node_name: str, fqns: list[str], fixed: dict) -> str:
    """The checkpoint layer a MatMul computes; equal weights are fine when they carry equal integers."""
    first = fixed.get(fqns[0])
    for f in fqns[1:]:
        q = fixed.get(f)
        same = (q is None and first is None) or (
            q is not None
            and first is not None
            and q.bits == first.bits
            and torch.equal(q.codes, first.codes)
            and torch.equal(q.scales, first.scales)
        )
        if not same:
            raise ExportError(
                f"{node_name}: the weights of {', '.join(fqns)} are equal but the quantized checkpoint "
                "quantizes them differently; cannot tell which layer this MatMul is"
            )
    return fqns[0]


def _nbits_bits(node) -> int:
    from onnx import helper

    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == "bits")


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)


def _set_int4_codes(graph, node, q, fqn: str, inits: dict) -> None:
    """Replace a MatMulNBits node's B / scales by a checkpoint layer's codes (+ 8, packed) and fp32 scales."""
    from onnx import helper, numpy_helper

    from ...quantize import grid

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    n_out, k = q.codes.shape
    want = {"bits": 4, "block_size": q.group_size, "K": k, "N": n_out}
    if any(attrs.get(key) != value for key, value in want.items()) or (len(node.input) > 3 and node.input[3]):
        raise ExportError(
            f"{fqn}: MatMulNBits node {node.name} has { ({k_: attrs.get(k_) for k_ in want}) }"
            f"{' and zero points' if len(node.input) > 3 and node.input[3] else ''}; the quantized "
            f"checkpoint needs {want}, symmetric"
        )
    blocks = k // q.group_size
    packed = grid.pack_int4(q.codes).numpy().reshape(n_out, blocks, q.group_size // 2)
    old_b, old_s = inits[node.input[1]], inits[node.input[2]]
    if tuple(old_b.dims) != packed.shape or int(np.prod(old_s.dims)) != n_out * blocks:
        raise ExportError(
            f"{fqn}: MatMulNBits B {tuple(old_b.dims)} / scales {tuple(old_s.dims)}, expected "
            f"{packed.shape} / {n_out * blocks} values (onnxruntime's layout changed?)"
        )
    b_name, s_name = f"{fqn}.qweight_int4", f"{fqn}.scales"
    if b_name not in inits:
        inits[b_name] = numpy_helper.from_array(packed, b_name)
        inits[s_name] = numpy_helper.from_array(q.scales.float().numpy().reshape(tuple(old_s.dims)), s_name)
        graph.initializer.extend([inits[b_name], inits[s_name]])
    node.input[1], node.input[2] = b_name, s_name


def _int8_block(k: int) -> int:
    """MatMulNBits block for an int8 per-channel row of ``k`` weights: the fewest bytes (padding plus one
    fp32 scale per block), the larger block on a tie."""
    return min(BLOCK_SIZES, key=lambda b: (-(-k // b) * (b + 4), -b))


def _int8_matmul_nbits(graph, node, q, fqn: str, inits: dict):
    """``MatMulNBits`` (bits 8, fp32 compute) replacing a MatMul: B = codes + 128 (the default zero point),
    the row's scale repeated in every block, the last block padded with zero codes."""
    from onnx import helper, numpy_helper

    n_out, k = q.codes.shape
    if q.group_size != k:
        raise ExportError(f"{fqn}: int{q.bits} in groups of {q.group_size}; int8 layers are per output channel")
    block = _int8_block(k)
    blocks = -(-k // block)
    b_name, s_name = f"{fqn}.qweight_int8", f"{fqn}.scales"
    if b_name not in inits:
        u = np.full((n_out, blocks * block), 128, np.uint8)
        u[:, :k] = (q.codes.numpy().astype(np.int16) + 128).astype(np.uint8)
        scales = np.repeat(q.scales.float().numpy().reshape(n_out, 1), blocks, axis=1).reshape(-1)
        inits[b_name] = numpy_helper.from_array(u.reshape(n_out, blocks, block), b_name)
        inits[s_name] = numpy_helper.from_array(scales, s_name)
        graph.initializer.extend([inits[b_name], inits[s_name]])
    new = helper.make_node(
        "MatMulNBits",
        [node.input[0], b_name, s_name],
        list(node.output),
        name=f"{node.name}_Q8",
        domain="com.microsoft",
        K=k,
        N=n_out,
        bits=8,
        block_size=block,
    )
    new.metadata_props.extend(node.metadata_props)
    return new


def apply_checkpoint_codes(
    model,
    component: str,
    linears: list[tuple[str, nn.Linear]],
    fixed: dict,
    block_size: int,
    excluded: list[str],
    record: OnnxFile,
):
    """A component's graph with a quantized checkpoint's integers (see the module docstring); fills
    ``record``'s counts. ``excluded``: the router MatMuls (kept fp32). Every checkpoint layer of the
    component must be found, and nothing else is quantized."""
    mapping = {n: _one_layer(n, fqns, fixed) for n, fqns in linear_matmuls(model, linears).items()}
    want = {fqn for fqn, _ in linears if fqn in fixed}
    missing = sorted(want - set(mapping.values()))
    if missing:
        raise ExportError(
            f"{component}: quantized-checkpoint layers not found among the graph's MatMul weights: "
            f"{', '.join(missing[:5])}"
        )
    int4 = {n: f for n, f in mapping.items() if f in fixed and fixed[f].bits == 4}
    if int4:
        outputs = {node.output[0]: int4[node.name] for node in model.graph.node if node.name in int4}
        model = quantize_int4(model, block_size, [n.name for n in constant_matmuls(model) if n.name not in int4])
        inits = {i.name: i for i in model.graph.initializer}
        done = set()
        for node in model.graph.node:
            if node.op_type == "MatMulNBits" and node.output[0] in outputs:
                fqn = outputs[node.output[0]]
                _set_int4_codes(model.graph, node, fixed[fqn], fqn, inits)
                done.add(node.output[0])
        if done != set(outputs):
            raise ExportError(
                f"{component}: int4 checkpoint layers without a MatMulNBits node: "
                f"{', '.join(sorted(outputs[o] for o in set(outputs) - done))[:300]}"
            )
    int8 = {n: f for n, f in mapping.items() if f in fixed and fixed[f].bits == 8}
    if int8:
        from onnx import helper

        inits = {i.name: i for i in model.graph.initializer}
        nodes = [
            _int8_matmul_nbits(model.graph, n, fixed[int8[n.name]], int8[n.name], inits) if n.name in int8 else n
            for n in model.graph.node
        ]
        model.graph.ClearField("node")
        model.graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _drop_unused_initializers(model.graph)
    nbits = [_nbits_bits(n) for n in model.graph.node if n.op_type == "MatMulNBits"]
    record.quantized_matmuls = len(nbits)
    record.int8_matmuls = nbits.count(8)
    record.fp32_matmuls = []
    for node in constant_matmuls(model):
        if node.name in excluded:
            record.fp32_matmuls.append(f"{node.name}: {ROUTER_NOTE}")
        elif node.name in mapping and mapping[node.name] not in fixed:
            record.fp32_matmuls.append(f"{node.name}: {mapping[node.name]}, {CHECKPOINT_FP32}")
        else:
            raise ExportError(
                f"{component}: constant-weight MatMul {node.name} is neither a linear layer nor a router; "
                "the eager reference would not match the graph"
            )
    if nbits.count(4) != len(int4) or nbits.count(8) != len(int8) or len(nbits) != len(int4) + len(int8):
        raise ExportError(
            f"{component}: {nbits.count(4)} int4 / {nbits.count(8)} int8 MatMulNBits "
            f"for {len(int4)} int4 / {len(int8)} int8 checkpoint MatMuls"
        )
    return model


# ---- export


@dataclass
class OnnxFile:
    component: str
    file: str
    external_data: str | None
    inputs: list[dict]
    outputs: list[dict]
    bytes: int = 0
    quantized_matmuls: int = 0
    fp32_matmuls: list[str] = field(default_factory=list)  # constant-weight MatMuls left in fp32, and why
    int8_matmuls: int = 0  # of the MatMulNBits, those with bits 8 (a quantized checkpoint's int8 per-channel layers)
    shared_data: str | None = None  # another graph's external data file this one also reads (image buckets)
    qmoe_layers: int = 0  # MoE layers whose routed experts are one QMoE node (only the top-k run; experts.py)

    def to_dict(self) -> dict:
        out = {
            "file": self.file,
            "external_data": self.external_data,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "bytes": self.bytes,
            "matmul_nbits": self.quantized_matmuls,
            "fp32_matmuls": self.fp32_matmuls,
        }
        if self.int8_matmuls:
            out["matmul_nbits_int8"] = self.int8_matmuls
        if self.shared_data:
            out["shared_external_data"] = self.shared_data
        if self.qmoe_layers:
            out["qmoe_layers"] = self.qmoe_layers
        return out


@dataclass
class OnnxExport:
    files: dict[str, OnnxFile] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet():
    """torch.onnx / onnxscript / the quantizer log every pass at INFO, and torch.onnx warns on every
    export that torchvision's ops are not registered; keep the CLI's log readable (unless -v)."""
    names = ("onnxscript", "onnx_ir", "onnxruntime", "torch.onnx", "torch.export", "torch._export")
    saved = {n: logging.getLogger(n).level for n in names}
    if not log.isEnabledFor(logging.DEBUG):
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _export_program(module: nn.Module, args: tuple, input_names, output_names, dynamic_shapes):
    module.eval()
    with torch.no_grad(), _quiet():
        try:
            return torch.onnx.export(
                module,
                args,
                dynamo=True,
                custom_translation_table={**attention.TRANSLATIONS, **experts.TRANSLATIONS},
                opset_version=OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                verbose=False,
                optimize=True,
            )
        except Exception as e:  # the exporter's errors are long; the first line says what failed
            raise ExportError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0][:500]}") from e


def name_dynamic_dims(model, name: str = "seq") -> None:
    """The exporter names the decoder's shared dynamic dim after an internal symbol ("s29"); call it ``name``."""
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    params = {d.dim_param for v in graph.input for d in v.type.tensor_type.shape.dim if d.dim_param}
    if len(params) != 1:
        return
    (old,) = params
    for v in values:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = name


def drop_stack_traces(model) -> None:
    """Remove the exporter's per-node Python stack traces: they hold this checkout's absolute file
    paths and line numbers, so the same export from another folder gave different bytes (and
    shipped the exporting machine's paths). Name scopes stay: ``linear_matmuls`` reads them."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)


def gemm_to_matmul(model) -> int:
    """Rewrite ``Gemm(A, B_const[, C])`` (alpha = beta = 1, no transA) to ``MatMul(A, B') [+ Add C]``.

    The exporter emits Gemm for linears on 2-D inputs (vision tower); MatMulNBits only replaces
    MatMul. Returns how many nodes were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.domain not in ("", "ai.onnx")
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            new_nodes.append(node)
            continue
        b = numpy_helper.to_array(inits[node.input[1]])
        weight_name = node.input[1]
        if attrs.get("transB", 0):
            weight_name = f"{node.input[1]}_t"
            if weight_name not in inits:
                inits[weight_name] = numpy_helper.from_array(np.ascontiguousarray(b.T), weight_name)
                graph.initializer.append(inits[weight_name])
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        mm = helper.make_node("MatMul", [node.input[0], weight_name], [mm_out], name=f"{node.name}_matmul")
        mm.metadata_props.extend(node.metadata_props)
        new_nodes.append(mm)
        if has_bias:
            add = helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            add.metadata_props.extend(node.metadata_props)
            new_nodes.append(add)
        count += 1
    if count:
        graph.ClearField("node")
        graph.node.extend(new_nodes)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [i for i in graph.initializer if i.name in used]
        graph.ClearField("initializer")
        graph.initializer.extend(keep)
    return count


def constant_matmuls(model) -> list:
    """MatMul nodes whose second input is an initializer (a constant weight)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def _router_matmuls(model, routers: list[np.ndarray]) -> list[str]:
    """Names of the constant MatMuls whose weight is a router's (matched by value: exporter-independent)."""
    from onnx import numpy_helper

    if not routers:
        return []
    inits = {i.name: i for i in model.graph.initializer}
    names = []
    for node in constant_matmuls(model):
        b = numpy_helper.to_array(inits[node.input[1]])
        if any(b.shape == r.shape and np.array_equal(b, r) for r in routers):
            names.append(node.name)
    return names


def quantize_int4(model, block_size: int, exclude: list[str]):
    """MatMulNBits (4 bits, symmetric, fp32 compute) on every constant-weight MatMul not in ``exclude``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        q = MatMulNBitsQuantizer(
            model, bits=4, block_size=block_size, is_symmetric=True, nodes_to_exclude=list(exclude)
        )
        q.process()
    return q.model.model


def set_accuracy_level(model, level: int) -> int:
    """``accuracy_level`` on every MatMulNBits (4: int8 activations, onnxruntime's int8 kernels); returns how many."""
    from onnx import helper

    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("accuracy_level", level)])
    return len(nodes)


def _dims(value_info) -> list:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]


def io_specs(model) -> tuple[list[dict], list[dict]]:
    """Graph inputs and outputs as {"name", "shape" (dynamic dims by name), "dtype"}."""
    from onnx import helper

    def spec(v):
        return {
            "name": v.name,
            "shape": _dims(v),
            "dtype": str(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)),
        }

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def weight_bytes(model) -> int:
    from onnx import external_data_helper

    total = 0
    for t in model.graph.initializer:
        if external_data_helper.uses_external_data(t):
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def save_model(model, path: Path, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> str | None:
    """Write ``model`` to ``path``; weights go to ``<name>.data`` next to it when they exceed the threshold.
    A graph whose weights already sit in an external file (``weights.save_streaming``) is written
    without touching them. Returns the external data file name, or None.
    """
    import onnx
    from onnx import external_data_helper

    path = Path(path)
    written = {
        e.value
        for t in model.graph.initializer
        if external_data_helper.uses_external_data(t)
        for e in t.external_data
        if e.key == "location"
    }
    if written:
        onnx.save_model(model, str(path))
        own = f"{path.name}.data"
        return own if own in written else None  # None: it only reads another graph's file (shared_data)
    external = weight_bytes(model) > external_data_threshold
    location = f"{path.name}.data" if external else None
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=location,
            size_threshold=1024,
            convert_attribute=False,
        )
    else:
        onnx.save_model(model, str(path))
    return location


def _component_modules(model: AutoGLM, max_seq_len: int):
    """(name, module, example args, input names, output names, dynamic_shapes) per ONNX file."""
    from torch.export import Dim

    seq = Dim("seq", min=1, max=model.shape.max_context)
    for comp in components(model, max_seq_len):
        if is_vision_method(comp.name) or comp.name == "audio_encoder":  # one static graph per image bucket
            yield comp.name, comp.module, comp.example_inputs, comp.input_names, comp.output_names, None
        elif comp.name == "token_embedding":
            yield comp.name, comp.module, comp.example_inputs, comp.input_names, comp.output_names, ({1: seq},)
    layers = len(model.text.layers)
    past, present = cache_names(layers)
    n = min(4, max_seq_len)
    hidden = model.cfg.text.hidden_size
    caches = [torch.zeros(cache_shape(model)) for _ in past]
    args = (torch.zeros(1, n, hidden), torch.arange(n), torch.arange(n).expand(3, n).contiguous(), caches)
    dyn = ({1: seq}, {0: seq}, {1: seq}, [None for _ in past])  # the list flattens to one graph input per cache
    yield (
        "text_decoder",
        OnnxTextDecoder(model.text),
        args,
        ("inputs_embeds", "cache_position", "position_ids", *past),
        ("logits", *present),
        dyn,
    )


def _ir_constant_matmuls(model) -> list:
    """An ``onnx_ir`` graph's MatMul / Gemm nodes whose weight (second input) is a constant."""
    return [
        n
        for n in model.graph
        if n.op_type in ("MatMul", "Gemm")
        and len(n.inputs) > 1
        and n.inputs[1] is not None
        and n.inputs[1].const_value is not None
    ]


def _ir_router_matmuls(model, routers: list[np.ndarray]) -> list[str]:
    """Names of an ``onnx_ir`` graph's constant MatMuls / Gemms whose weight is a router's (by value,
    either layout: the exporter writes a router on 2-D tokens as Gemm with the weight untransposed)."""
    names = []
    for node in _ir_constant_matmuls(model):
        b = node.inputs[1]
        shape = tuple(b.shape.numpy()) if b.shape is not None else None
        if any(shape == w.shape and np.array_equal(b.const_value.numpy(), w) for r in routers for w in (r, r.T)):
            names.append(node.name)
    return names


def _router_weights(model: AutoGLM) -> list[np.ndarray]:
    """Each MoE router's weight as the graph's MatMul B (``[hidden, experts]`` fp32)."""
    return [m.weight.detach().float().T.contiguous().numpy() for m in model.modules() if isinstance(m, TopKRouter)]


def _trace(out: OnnxExport, name: str, module, args, in_names, out_names, dynamic_shapes):
    """``torch.onnx.export`` of one component, timed as ``export <name>``; returns the ONNXProgram.
    Its RMSNorms are traced in the form onnxruntime fuses (``norm.py``)."""
    t0 = time.perf_counter()
    with fusable_rms_norms(module):
        program = _export_program(module, args, in_names, out_names, dynamic_shapes)
    out.seconds[f"export {name}"] = round(time.perf_counter() - t0, 3)
    return program


def _finish_file(proto, record: OnnxFile, out_dir: Path, threshold: int, out: OnnxExport, quant: str, progress):
    """The graph's dims named, stack traces dropped, its I/O recorded, written (or its proto rewritten)."""
    name_dynamic_dims(proto)
    drop_stack_traces(proto)
    if record.component == "text_decoder":  # GroupQueryAttention may update its past in place
        entry = proto.metadata_props.add()
        entry.key, entry.value = IN_PLACE_METADATA
    record.inputs, record.outputs = io_specs(proto)
    path = Path(out_dir) / record.file
    record.external_data = save_model(proto, path, threshold)
    record.bytes = path.stat().st_size + (
        (Path(out_dir) / record.external_data).stat().st_size if record.external_data else 0
    )
    out.files[record.component] = record
    if progress:
        progress(
            f"exported {record.file} ({record.bytes / 1e6:.1f} MB"
            + (f", {record.quantized_matmuls} MatMulNBits" if quant == "int4" else "")
            + (f" ({record.int8_matmuls} of them int8)" if record.int8_matmuls else "")
            + (f", {record.qmoe_layers} QMoE (top-k experts)" if record.qmoe_layers else "")
            + (f", weights in {record.external_data}" if record.external_data else "")
            + ")"
        )


@torch.no_grad()
def export_onnx_files(
    model: AutoGLM,
    out_dir: Path,
    quant: str = "int4",
    block_size: int = 32,
    max_seq_len: int = 128,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    progress=None,
    fixed: dict | None = None,
    accuracy_level: int = 0,
    embedding: str = "fp32",
) -> OnnxExport:
    """Export every component of the model to ``out_dir/<component>.onnx``; int4 makes every linear a
    ``MatMulNBits``, ``embedding`` int4 the token embedding a ``GatherBlockQuantized``.

    The model is not modified. Without ``fixed`` the weights never exist in fp32 all at once: the
    graphs are traced with placeholders and each linear is quantized (or made fp32) from its stored
    weight as the file is written (``weights.py``). Raises ExportError if the int4 graphs do not
    quantize exactly the linear layers the eager twin rounds (the parity reference would not match).
    ``fixed``: a quantized checkpoint's linears, already loaded into ``model`` (fp32): their integers
    are written as they are (``apply_checkpoint_codes``) and no other linear is quantized.
    ``accuracy_level`` 4: every MatMulNBits quantizes its activations to int8 at run time.
    """
    if quant not in QUANT_SCHEMES:
        raise ExportError(f"--quant {quant}: expected one of {', '.join(QUANT_SCHEMES)}")
    if fixed is not None and quant == "int4":
        return _export_checkpoint_codes(
            model, out_dir, block_size, max_seq_len, external_data_threshold, progress, fixed, accuracy_level
        )
    import onnx

    out = OnnxExport()
    linears, routers = linear_modules(model), _router_weights(model)
    vision_weights: dict = {}  # the first vision graph's external linear weights, shared by the other buckets
    sparse = sparse_experts(model, block_size, accuracy_level) if quant == "int4" else contextlib.nullcontext(({}, []))
    with sparse as (experts, in_qmoe), placeholder_weights(model) as placeholders:
        for name, *traced in _component_modules(model, max_seq_len):
            ir_model = _trace(out, name, *traced).model
            t1 = time.perf_counter()
            record = OnnxFile(name, f"{name}.onnx", None, [], [])
            component = "vision_encoder" if is_vision_method(name) else name  # whose linears the graph holds
            excluded = _ir_router_matmuls(ir_model, routers)
            record.quantized_matmuls, made = attach_weights(
                ir_model, placeholders, quant, block_size, accuracy_level, embedding
            )
            record.qmoe_layers, expert_tensors = attach_experts(ir_model, experts)
            made += expert_tensors
            if quant == "int4":
                left = [n.name for n in _ir_constant_matmuls(ir_model)]
                record.fp32_matmuls = [f"{n}: {ROUTER_NOTE}" for n in left if n in excluded]
                stray = [n for n in left if n not in excluded]
                expected = len([fqn for fqn, _ in linears.get(component, []) if fqn not in in_qmoe])
                if stray or record.quantized_matmuls != expected:
                    raise ExportError(
                        f"{name}: int4 rewrote {record.quantized_matmuls} MatMuls but the model has {expected} "
                        "linear layers"
                        + (f"; constant-weight MatMuls left in fp32: {', '.join(stray)}" if stray else "")
                        + "; the eager int4 reference would not match the graph"
                    )
            path = Path(out_dir) / record.file
            reused = drop_shared(ir_model, vision_weights, made) if is_vision_method(name) else []
            save_streaming(ir_model, path, initializer_bytes(ir_model) > external_data_threshold, placeholders)
            del ir_model
            proto = onnx.load(str(path), load_external_data=False)
            if reused:  # another image bucket: its linears are the first vision graph's, in that graph's file
                proto.graph.initializer.extend(vision_weights[n] for n in reused)
                record.shared_data = next(iter(vision_weights.values())).external_data[0].value
            elif is_vision_method(name):
                vision_weights = external_tensors(proto, made)
            _finish_file(proto, record, out_dir, external_data_threshold, out, quant, progress)
            out.seconds[f"{'int4' if quant == 'int4' else 'fp32'} weights {name}"] = round(time.perf_counter() - t1, 3)
    return out


def _export_checkpoint_codes(
    model: AutoGLM,
    out_dir: Path,
    block_size: int,
    max_seq_len: int,
    external_data_threshold: int,
    progress,
    fixed: dict,
    accuracy_level: int,
) -> OnnxExport:
    """``export_onnx_files`` with a quantized checkpoint: the model holds its fp32 ``codes * scales`` (every
    parameter was overwritten by ``load_into_model``), found in the traced graphs by value."""
    out = OnnxExport()
    linears, routers = linear_modules(model), _router_weights(model)
    for name, *traced in _component_modules(model, max_seq_len):
        proto = _trace(out, name, *traced).model_proto
        record = OnnxFile(name, f"{name}.onnx", None, [], [])
        component = "vision_encoder" if is_vision_method(name) else name
        t1 = time.perf_counter()
        gemm_to_matmul(proto)
        proto = apply_checkpoint_codes(
            proto, component, linears.get(component, []), fixed, block_size, _router_matmuls(proto, routers), record
        )
        out.seconds[f"checkpoint codes {name}"] = round(time.perf_counter() - t1, 3)
        if accuracy_level:
            set_accuracy_level(proto, accuracy_level)
        _finish_file(proto, record, out_dir, external_data_threshold, out, "int4", progress)
        del proto
    return out
