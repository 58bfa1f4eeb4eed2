"""The ONNX graphs' big weights made one linear at a time from the stored checkpoint: no fp32 model.

``torch.onnx.export`` traces each component with placeholder weights (``placeholder_weights``):
every ``nn.Linear`` weight and the token embedding swapped for a zero-stride tensor of the right
shape (4 bytes), each linear computing ``x @ weight`` on a ``[in, out]`` placeholder so the graph
holds ``MatMul(x, placeholder)`` itself (no Transpose for the optimizer to fold into an fp32 copy,
no Gemm). ``attach_weights`` then gives those initializers their real values as
``onnx_ir.LazyTensor``s:

- int4: the MatMul becomes ``com.microsoft::MatMulNBits`` (symmetric, 4 bits, no zero points) whose
  B / scales onnxruntime's own quantizer computes (``DefaultWeightOnlyQuantizer.qbits_block_quant``,
  what ``MatMulNBitsQuantizer`` calls) from the linear's stored weight made fp32, in row slices;
- fp32: the MatMul keeps its weight, the stored weight made fp32 and transposed;
- the token embedding: the stored table as it is (a bf16 checkpoint's bf16; the graph casts the
  rows it looks up to fp32, which is exact, so the lookups equal the fp32 model's), or with an int4
  embedding ``com.microsoft::GatherBlockQuantized`` over MatMulNBits' codes and scales of the table.

``onnx_ir.save`` evaluates and writes them one at a time into the component's external data file,
at 64 KiB-aligned offsets (onnxruntime memory-maps aligned external data instead of copying it), and
the stored pages are given back after each. Resident memory follows one linear, not the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint import release_pages
from ...errors import ExportError
from ...quantize.recipes import ROW_CHUNK_WEIGHTS
from ...stored import TOKEN_EMBEDDING

ALIGNMENT = 65536  # external data offsets: onnxruntime maps a tensor in place when its offset is aligned


@dataclass
class Placeholder:
    fqn: str  # the module, e.g. "text.layers.0.mlp.down_proj" or "text.embed_tokens"
    weight: torch.Tensor  # the weight as loaded (bf16 memory-mapped for a stored load), [out, in] / [rows, dim]
    linear: bool


def _placeholder(shape, dtype, index: int) -> nn.Parameter:
    """One value repeated (zero strides: 4 bytes), distinct per placeholder: the exporter's optimizer
    merges small initializers with equal bytes, which would merge two linears' weights."""
    return nn.Parameter(torch.full((), float(index + 1), dtype=dtype).expand(*shape), requires_grad=False)


def _matmul_forward(mod: nn.Linear):
    def forward(x):
        y = torch.matmul(x, mod.weight)
        return y if mod.bias is None else y + mod.bias

    return forward


def _lookup_forward(mod: nn.Embedding):
    def forward(ids):
        return F.embedding(ids, mod.weight).float()

    return forward


@contextmanager
def placeholder_weights(model: nn.Module):
    """Inside, every linear and the token embedding hold placeholders (module docstring); yields
    {placeholder data_ptr: Placeholder}. The real weights are back in place on exit."""
    swapped: dict[int, Placeholder] = {}
    saved = []
    embedding = TOKEN_EMBEDDING.rsplit(".", 1)[0]
    for fqn, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            ph = _placeholder((mod.in_features, mod.out_features), torch.float32, len(saved))
            forward = _matmul_forward(mod)
        elif fqn == embedding:
            ph, forward = _placeholder(mod.weight.shape, mod.weight.dtype, len(saved)), _lookup_forward(mod)
        else:
            continue
        saved.append((mod, mod._parameters["weight"]))
        swapped[ph.data_ptr()] = Placeholder(fqn, mod.weight, isinstance(mod, nn.Linear))
        mod._parameters["weight"] = ph
        mod.forward = forward
    try:
        yield swapped
    finally:
        for mod, weight in saved:
            mod._parameters["weight"] = weight
            mod.__dict__.pop("forward", None)


def _row_slices(weight: torch.Tensor):
    rows = max(1, ROW_CHUNK_WEIGHTS // weight.shape[1])
    for i in range(0, weight.shape[0], rows):
        yield i, weight[i : i + rows]


def int4_matmul_nbits(weight: torch.Tensor, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' (B [out, blocks, block_size / 2] uint8, scales [out * blocks] fp32) for a linear
    weight [out, in], by onnxruntime's quantizer. Output rows are quantized independently (blocks run
    along the input), so quantizing them in slices gives the same bytes with one slice's fp32 at a time."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    quantizer = DefaultWeightOnlyQuantizer(
        DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=4)
    )
    packed, scales = [], []
    for _, rows in _row_slices(weight):
        p, s, _ = quantizer.qbits_block_quant(rows.float().t().contiguous().numpy())
        release_pages([rows])  # the stored slice's pages go back as soon as it is done (the lm_head is 1.2 GB)
        packed.append(p)
        scales.append(s)
    return np.concatenate(packed), np.concatenate(scales).reshape(-1)


def fp32_transposed(weight: torch.Tensor) -> np.ndarray:
    """A linear's weight as an fp32 MatMul B [in, out], filled one row slice at a time."""
    out = np.empty((weight.shape[1], weight.shape[0]), np.float32)
    for i, rows in _row_slices(weight):
        out[:, i : i + rows.shape[0]] = rows.float().t().numpy()
        release_pages([rows])
    return out


class _Int4Pair:
    """B and scales of one MatMulNBits (or the data and scales of one GatherBlockQuantized: the same bytes in
    other shapes) as two lazy tensors sharing one quantization (B is written first)."""

    def __init__(self, weight: torch.Tensor, block_size: int, packed_shape, scales_shape):
        self.weight, self.block_size, self._scales = weight, block_size, None
        self.packed_shape, self.scales_shape = packed_shape, scales_shape

    def packed(self):
        import onnx_ir as ir

        packed, self._scales = int4_matmul_nbits(self.weight, self.block_size)
        return ir.tensor(packed.reshape(self.packed_shape))

    def scales(self):
        import onnx_ir as ir

        if self._scales is None:  # written before B (not onnx_ir's order today): quantize again
            self._scales = int4_matmul_nbits(self.weight, self.block_size)[1]
        scales, self._scales = self._scales, None
        return ir.tensor(scales.reshape(self.scales_shape))

    def initializers(self, graph, fqn: str) -> tuple:
        import onnx_ir as ir

        return (
            _initializer(graph, f"{fqn}.weight_Q4", self.packed, ir.DataType.UINT8, self.packed_shape),
            _initializer(graph, f"{fqn}.weight_scales", self.scales, ir.DataType.FLOAT, self.scales_shape),
        )


def _initializer(graph, name: str, func, dtype, shape):
    import onnx_ir as ir

    value = ir.Value(
        name=name,
        shape=ir.Shape(shape),
        type=ir.TensorType(dtype),
        const_value=ir.LazyTensor(func, dtype=dtype, shape=ir.Shape(shape), name=name),
    )
    graph.register_initializer(value)
    return value


def _stored_tensor(weight: torch.Tensor):
    def func():
        from onnx_ir.tensor_adapters import TorchTensor

        class Streamed(TorchTensor):
            """Written to the external data file one row slice at a time, each slice's pages given back."""

            def tofile(self, file) -> None:
                for _, rows in _row_slices(weight):
                    file.write(memoryview(rows.contiguous().view(torch.uint8).reshape(-1).numpy()))
                    release_pages([rows])

        return Streamed(weight)

    return func


def attach_weights(
    model,
    placeholders: dict[int, Placeholder],
    quant: str,
    block_size: int,
    accuracy_level: int = 0,
    embedding: str = "fp32",
) -> tuple[int, list[str]]:
    """Give ``model``'s (an ``onnx_ir.Model`` exported inside ``placeholder_weights``) placeholder
    initializers their real values, as lazy tensors (module docstring); ``embedding`` int4 makes the
    token embedding's Gather a ``GatherBlockQuantized`` (``_int4_lookup``). Returns how many linears became
    MatMulNBits and the names of the initializers made from stored weights. Raises ExportError if a
    placeholder is used other than as a linear's MatMul weight or an embedding's Gather table (its
    zeros would be exported)."""
    import onnx_ir as ir

    graph = model.graph
    found = {}
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(raw, torch.Tensor) and raw.data_ptr() in placeholders and raw.stride() == (0,) * raw.dim():
            found[name] = (value, placeholders[raw.data_ptr()])
    quantized, made = 0, []
    for name, (value, ph) in found.items():
        uses = value.uses()
        ok_op = "MatMul" if ph.linear else "Gather"
        if not uses or any(u.node.op_type != ok_op or u.idx != (1 if ph.linear else 0) for u in uses):
            raise ExportError(
                f"{ph.fqn}: its weight is used by {sorted({u.node.op_type for u in uses})} in the traced graph, "
                f"expected only {ok_op}; the exported weights would not be the model's"
            )
        if not ph.linear and embedding == "int4":
            made += _int4_lookup(graph, name, ph, uses, block_size)
            continue
        if not ph.linear:
            value.const_value = ir.LazyTensor(
                _stored_tensor(ph.weight), dtype=value.dtype, shape=value.shape, name=name
            )
            made.append(name)
            continue
        n_out, k = ph.weight.shape
        if quant != "int4":
            value.const_value = ir.LazyTensor(
                lambda w=ph.weight: ir.tensor(fp32_transposed(w)), dtype=ir.DataType.FLOAT, shape=value.shape, name=name
            )
            made.append(name)
            continue
        blocks = -(-k // block_size)
        b, s = _Int4Pair(ph.weight, block_size, [n_out, blocks, block_size // 2], [n_out * blocks]).initializers(
            graph, ph.fqn
        )
        attrs = {"K": k, "N": n_out, "bits": 4, "block_size": block_size}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        for use in list(uses):
            old = use.node
            new = ir.node("MatMulNBits", [old.inputs[0], b, s], attrs, domain="com.microsoft", name=f"{old.name}_Q4")
            new.metadata_props.update(old.metadata_props)
            ir.convenience.replace_nodes_and_values(graph, old, [old], [new], list(old.outputs), list(new.outputs))
            quantized += 1
        graph.initializers.pop(name)
        made += [b.name, s.name]
    if quantized or embedding == "int4":
        model.opset_imports["com.microsoft"] = 1
    return quantized, made


def _int4_lookup(graph, name: str, ph: Placeholder, uses, block_size: int) -> list[str]:
    """The token embedding's Gather as ``com.microsoft::GatherBlockQuantized``: the table [rows, dim] quantized
    as MatMulNBits quantizes a weight [out, in] (blocks along ``dim``, symmetric; uint8 data, two codes a byte,
    zero point 8: the op's default for uint8), so its lookups are the rows ``twin.int4_block_fake_quant``
    makes, in fp32 (the scales' type). Returns the new initializers' names."""
    import onnx_ir as ir

    rows, dim = ph.weight.shape
    if dim % block_size:
        raise ExportError(
            f"{ph.fqn}: int4 embedding needs its width {dim} to be a multiple of --block-size {block_size}"
        )
    data, scales = _Int4Pair(ph.weight, block_size, [rows, dim // 2], [rows, dim // block_size]).initializers(
        graph, ph.fqn
    )
    attrs = {"block_size": block_size, "gather_axis": 0, "quantize_axis": 1, "bits": 4}
    for use in list(uses):
        old = use.node
        new = ir.node(
            "GatherBlockQuantized", [data, old.inputs[1], scales], attrs, domain="com.microsoft", name=f"{old.name}_Q4"
        )
        new.metadata_props.update(old.metadata_props)
        ir.convenience.replace_nodes_and_values(graph, old, [old], [new], list(old.outputs), list(new.outputs))
        new.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)  # the scales' type (the table's was copied over)
    graph.initializers.pop(name)
    return [data.name, scales.name]


def initializer_bytes(model) -> int:
    """Bytes of all initializers of an ``onnx_ir.Model``, from their shapes (nothing evaluated)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_streaming(model, path, external: bool, placeholders: dict[int, Placeholder]) -> str | None:
    """``model`` written to ``path``; with ``external`` its initializers go to ``<name>.data`` beside it,
    evaluated and written one at a time. The stored weights' pages are given back afterwards (the token
    embedding is written straight from its mapping). Returns the external data file name, or None."""
    import onnx_ir as ir

    location = f"{path.name}.data" if external else None
    ir.save(model, str(path), external_data=location, size_threshold_bytes=1024, alignment=ALIGNMENT)
    release_pages([p.weight for p in placeholders.values()])
    return location


# ---- image buckets: one vision graph per bucket, one copy of its weights


def external_tensors(proto, names: list[str]) -> dict:
    """The initializers ``names`` of a saved graph whose data sit in its external file (name -> TensorProto
    pointing into that file), for the other buckets' graphs to reference instead of writing them again."""
    from onnx import external_data_helper

    wanted = set(names)
    return {
        t.name: t for t in proto.graph.initializer if t.name in wanted and external_data_helper.uses_external_data(t)
    }


def drop_shared(model, shared: dict, names: list[str]) -> list[str]:
    """Remove from ``model`` (onnx_ir) the initializers among ``names`` that ``shared`` already holds
    (same name: made from the same stored weight, so the same bytes); returns them, to be added back to
    the saved graph as references into the shared file (``shared[name]``)."""
    reused = [n for n in names if n in shared and n in model.graph.initializers]
    for n in reused:
        model.graph.initializers.pop(n)
    return reused
