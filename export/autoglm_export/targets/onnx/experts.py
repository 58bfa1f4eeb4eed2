"""MoE layers as onnxruntime's ``com.microsoft::QMoE``: only the router's top-k experts run per token.

The eager ``MoE`` runs every expert on every token and mixes them with the router's dense weights (zero
outside the top-k): right for a static graph, but decode then costs all experts' bytes. For int4 graphs
each MoE layer's routed experts are instead one ``QMoE`` node:

- ``router_probs`` and ``router_weights`` are both the router's dense weights ``[tokens, experts]``:
  QMoE picks the ``k`` largest (exactly the router's choice: the others are zero and the chosen are
  positive) and mixes the chosen experts with those same weights (``normalize_routing_weights=0``: the
  router has already normalized and scaled them). Group-limited routing stays in the router's graph.
- ``fc1`` is each expert's gate and up projections with their rows interleaved (``swiglu_fusion=1``, the
  only layout onnxruntime's CPU kernel takes), ``fc2`` its down projection; SwiGLU with alpha 1, beta 0
  and no limit is ``silu(gate) * up``. Weights are MatMulNBits' codes and scales for the same rows
  (``weights.int4_matmul_nbits``: symmetric int4, zero point 8, blocks along the input), so the graph
  computes what the eager int4 twin computes, summed in another order.
- The shared experts stay ordinary linears (MatMulNBits).

The layer is traced as the custom op ``autoglm::qmoe`` on placeholder weights and written as QMoE by
``TRANSLATIONS``; ``attach_experts`` gives the placeholders their stacked values, made from the stored
weights one expert at a time when the file is written. A quantized checkpoint's experts, fp32 graphs and
widths the block does not divide keep the dense form (every expert, as in eager).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import ExportError
from ...model.moe import MoE
from .weights import int4_matmul_nbits


@torch.library.custom_op("autoglm::qmoe", mutates_args=())
def qmoe(
    x: torch.Tensor,
    routing: torch.Tensor,
    fc1: torch.Tensor,
    fc1_scales: torch.Tensor,
    fc2: torch.Tensor,
    fc2_scales: torch.Tensor,
    k: int,
    block_size: int,
    accuracy_level: int,
) -> torch.Tensor:
    raise RuntimeError("autoglm::qmoe only exists to be traced into an ONNX QMoE node")


@qmoe.register_fake
def _(x, routing, fc1, fc1_scales, fc2, fc2_scales, k, block_size, accuracy_level):
    return torch.empty_like(x)


def _qmoe_onnx(x, routing, fc1, fc1_scales, fc2, fc2_scales, k: int, block_size: int, accuracy_level: int):
    from onnxscript import values

    qmoe_op = values.Op(values.Opset("com.microsoft", 1), "QMoE", _qmoe_schema())
    attrs = {"accuracy_level": accuracy_level} if accuracy_level else {}
    return qmoe_op(
        x, routing, fc1, fc1_scales, None, fc2, fc2_scales, None, None, None, None, None, None, None, routing,
        k=k, activation_type="swiglu", swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0,
        normalize_routing_weights=0, expert_weight_bits=4, block_size=block_size, **attrs,
    )  # fmt: skip


# QMoE's inputs up to router_weights (onnxruntime 1.31), name -> (type, optional)
_QMOE_INPUTS = (
    ("input", "T", False), ("router_probs", "T", False), ("fc1_experts_weights", "T1", False),
    ("fc1_scales", "T", True), ("fc1_experts_bias", "T", True), ("fc2_experts_weights", "T1", False),
    ("fc2_scales", "T", True), ("fc2_experts_bias", "T", True), ("fc3_experts_weights", "T1", True),
    ("fc3_scales", "T", True), ("fc3_experts_bias", "T", True), ("fc1_zero_points", "T1", True),
    ("fc2_zero_points", "T1", True), ("fc3_zero_points", "T1", True), ("router_weights", "T", True),
)  # fmt: skip
_QMOE_ATTRS = {
    "k": "INT", "activation_type": "STRING", "swiglu_fusion": "INT", "activation_alpha": "FLOAT",
    "activation_beta": "FLOAT", "normalize_routing_weights": "INT", "expert_weight_bits": "INT",
    "block_size": "INT", "accuracy_level": "INT",
}  # fmt: skip


def _qmoe_schema():
    """The part of ``com.microsoft::QMoE``'s schema used here: onnx's registry, which the exporter's op
    builder reads, has no onnxruntime contrib ops."""
    from onnx.defs import OpSchema

    option = {True: OpSchema.FormalParameterOption.Optional, False: OpSchema.FormalParameterOption.Single}
    return OpSchema(
        "QMoE",
        "com.microsoft",
        1,
        inputs=[OpSchema.FormalParameter(n, t, param_option=option[opt]) for n, t, opt in _QMOE_INPUTS],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)"], ""), ("T1", ["tensor(uint8)"], "")],
        attributes=[
            OpSchema.Attribute(n, getattr(OpSchema.AttrType, t), required=False) for n, t in _QMOE_ATTRS.items()
        ],
    )


TRANSLATIONS = {torch.ops.autoglm.qmoe.default: _qmoe_onnx}


PARTS = ("fc1", "fc1_scales", "fc2", "fc2_scales")  # QMoE's weight inputs, in its input order


class _StackedLayer:
    """One MoE layer's experts as QMoE's four stacked inputs, quantized once (per ``fc1`` / ``fc2``) when the
    first of a pair is written and let go when its partner has been."""

    def __init__(self, experts: list, block_size: int):
        self.experts, self.block_size = experts, block_size  # per expert: (gate, up, down) as loaded, [out, in]
        self._pending: dict[str, np.ndarray] = {}

    def _quantize(self, fc: str) -> tuple[np.ndarray, np.ndarray]:
        codes, scales = [], []
        for gate, up, down in self.experts:
            w = torch.stack([gate, up], dim=1).reshape(2 * gate.shape[0], gate.shape[1]) if fc == "fc1" else down
            c, s = int4_matmul_nbits(w, self.block_size)
            codes.append(c.reshape(c.shape[0], -1))
            scales.append(s.reshape(c.shape[0], -1))
        return np.stack(codes), np.stack(scales)

    def value(self, part: str) -> np.ndarray:
        if part not in self._pending:
            fc = part.split("_")[0]
            self._pending[fc], self._pending[f"{fc}_scales"] = self._quantize(fc)
        return self._pending.pop(part)


@dataclass
class ExpertWeights:
    """One of QMoE's stacked weight inputs for one MoE layer, made from the stored weights when written."""

    fqn: str  # the MoE module
    part: str  # one of PARTS
    layer: _StackedLayer

    def value(self) -> np.ndarray:
        return self.layer.value(self.part)


def _placeholder(shape, dtype, layer: int) -> nn.Parameter:
    """Zero strides (one element), a distinct value per MoE layer among placeholders of one shape (the exporter
    may merge equal initializers; ``attach_experts`` checks that none were)."""
    return nn.Parameter(torch.full((), layer % 255 + 1, dtype=dtype).expand(*shape), requires_grad=False)


def sparse_eligible(moe: MoE, block_size: int) -> bool:
    hidden, inter = moe.experts[0].gate_proj.in_features, moe.experts[0].gate_proj.out_features
    return hidden % block_size == 0 and inter % block_size == 0


@contextmanager
def sparse_experts(model: nn.Module, block_size: int, accuracy_level: int):
    """Inside, every eligible MoE layer's routed experts trace as ``autoglm::qmoe`` on placeholders. Yields
    ({placeholder data_ptr: ExpertWeights}, the fqns of the expert linears QMoE replaces). Enter before
    ``weights.placeholder_weights``: the experts' stored weights are taken here, before those swap them."""
    swapped: dict[int, ExpertWeights] = {}
    covered: list[str] = []
    patched = []
    for fqn, mod in model.named_modules():
        if not isinstance(mod, MoE) or not sparse_eligible(mod, block_size):
            continue
        experts = [(e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight) for e in mod.experts]
        layer = _StackedLayer(experts, block_size)
        n, inter, hidden = len(experts), experts[0][0].shape[0], experts[0][0].shape[1]
        shapes = {
            "fc1": ((n, 2 * inter, hidden // 2), torch.uint8),
            "fc1_scales": ((n, 2 * inter, hidden // block_size), torch.float32),
            "fc2": ((n, hidden, inter // 2), torch.uint8),
            "fc2_scales": ((n, hidden, inter // block_size), torch.float32),
        }
        for part, (shape, dtype) in shapes.items():
            ph = _placeholder(shape, dtype, len(patched))
            swapped[ph.data_ptr()] = ExpertWeights(fqn, part, layer)
            mod.register_parameter(f"qmoe_{part}", ph)  # a parameter, so the graph holds it as an initializer
        covered += [f"{fqn}.experts.{i}.{p}" for i in range(n) for p in ("gate_proj", "up_proj", "down_proj")]
        mod.forward = _sparse_forward(mod, block_size, accuracy_level)
        patched.append(mod)
    try:
        yield swapped, covered
    finally:
        for mod in patched:
            mod.__dict__.pop("forward", None)
            for part in PARTS:
                del mod._parameters[f"qmoe_{part}"]


def _sparse_forward(mod: MoE, block_size: int, accuracy_level: int):
    def forward(x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights = mod.gate(flat).to(flat.dtype)
        parts = [getattr(mod, f"qmoe_{part}") for part in PARTS]
        routed = torch.ops.autoglm.qmoe(flat, weights, *parts, mod.gate.top_k, block_size, accuracy_level)
        return routed.view(shape) + mod.shared_experts(x)

    return forward


def attach_experts(model, swapped: dict[int, ExpertWeights]) -> tuple[int, list[str]]:
    """Give the QMoE placeholders of ``model`` (an ``onnx_ir.Model``) their stacked values as lazy tensors.
    Returns the number of QMoE nodes and the names of the initializers made. Raises ExportError unless every
    QMoE node has its own four."""
    import onnx_ir as ir

    made = []
    for name, value in list(model.graph.initializers.items()):
        raw = getattr(value.const_value, "raw", None)
        if isinstance(raw, torch.Tensor) and raw.data_ptr() in swapped and raw.stride() == (0,) * raw.dim():
            w = swapped[raw.data_ptr()]
            value.const_value = ir.LazyTensor(
                lambda w=w: ir.tensor(w.value()), dtype=value.dtype, shape=value.shape, name=name
            )
            made.append(name)
    nodes = sum(1 for n in model.graph if n.op_type == "QMoE")
    if len(made) != len(PARTS) * nodes:
        raise ExportError(
            f"{nodes} QMoE nodes but {len(made)} expert weight tensors found in the traced graph (expected "
            f"{len(PARTS) * nodes}); the exported experts would not be the model's"
        )
    if nodes:
        model.opset_imports["com.microsoft"] = 1
    return nodes, made
