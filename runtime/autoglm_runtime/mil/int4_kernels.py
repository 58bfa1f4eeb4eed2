"""Lean-mode kernels for int4 weights, where a big package spends its time in the interpreter.

Read op by op, an int4 weight feeding a ``linear`` is unpacked, scaled, rounded to fp16 and upcast
again on every call: at 9B that is 9e9 values per decoder step, minutes each. Two rewrites of a
lean function's steps (``fuse``) avoid it:

- ``constexpr_blockwise_shift_scale(int4) -> gather(axis 0)`` (the token table): only the gathered
  rows are read and dequantized. Exact: the same numpy arithmetic on fewer rows.
- ``constexpr_blockwise_shift_scale(int4) -> linear`` (``int4_linear=True``): onnxruntime's
  ``com.microsoft::MatMulNBits`` on the package's own packed codes (signed nibbles + 8, the uint4
  zero point 8: ``byte ^ 0x88``) and scales, prepacked once per weight and shared by the functions
  that use it. Not exact: the weight is ``code * scale`` in fp32 instead of rounded to fp16 first
  (the relative difference per weight is below 2**-11; ``test_int4_linear_kernel_matches_the_op_by_op_path``
  bounds the effect on outputs). Costs the int4 bytes in memory, not an fp32 copy.

Anything else (offsets, int8, palettes, weights used twice, blocks onnxruntime does not take) keeps
the op-by-op path.
"""

from __future__ import annotations

import numpy as np

from .ops import _NIBBLES, constexpr_blockwise_shift_scale

SHIFT_SCALE = "constexpr_blockwise_shift_scale"


def _int4(value, types) -> bool:
    dtype = getattr(value, "dtype", None)
    return types.is_sub_byte(dtype) and dtype.get_bitwidth() == 4 and not dtype.is_unsigned()


class _Int4Weight:
    """A ``[rows, cols]`` int4 weight in a package's weight file and its ``[rows, cols / block]`` scales."""

    def __init__(self, data, scale, out_dtype):
        self.data, self.scale, self.out_dtype = data, scale, out_dtype
        self.rows, self.cols = data.shape
        self.block = self.cols // self.scale.shape[1]

    @property
    def blocked(self) -> bool:
        """Whole bytes per row and whole blocks of one scale each: the layouts these kernels read."""
        return self.scale.shape[0] == self.rows and self.cols % 2 == 0 and self.cols % self.scale.shape[1] == 0

    def _scales(self) -> np.ndarray:
        return self.scale.load() if hasattr(self.scale, "load") else np.asarray(self.scale)

    def rows_dequantized(self, index: np.ndarray) -> np.ndarray:
        """The weight's rows ``index`` exactly as the constexpr op gives them (in its output dtype)."""
        packed = self.data.raw().reshape(self.rows, self.cols // 2)[index]
        codes = _NIBBLES[True][packed].reshape(len(index), self.cols)
        return constexpr_blockwise_shift_scale(codes, self._scales()[index]).astype(self.out_dtype)


class Int4Gather:
    """``gather(x=<int4 table>, indices, axis=0)`` reading only the rows asked for."""

    def __init__(self, weight: _Int4Weight):
        self.weight = weight

    def __call__(self, indices, axis=0, batch_dims=0, validate_indices=False):
        ind = np.asarray(indices).astype(np.int64)
        ind = np.where(ind < 0, ind + self.weight.rows, ind)
        if ind.size and (ind.min() < 0 or ind.max() >= self.weight.rows):
            raise IndexError(f"gather index out of range for {self.weight.rows} rows")
        rows, inverse = np.unique(ind.reshape(-1), return_inverse=True)
        table = self.weight.rows_dequantized(rows)
        return table[inverse].reshape(ind.shape + (self.weight.cols,))


class Int4Linear:
    """``linear(x, weight=<int4 weight>, bias)`` through onnxruntime's MatMulNBits (built on first use)."""

    def __init__(self, weight: _Int4Weight):
        self.weight = weight
        self._session = None

    def _build(self):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        w = self.weight
        packed = np.bitwise_xor(w.data.raw(), np.uint8(0x88)).reshape(w.rows, w.cols // w.block, w.block // 2)
        scales = w._scales().astype(np.float32).reshape(-1)
        node = helper.make_node(
            "MatMulNBits", ["x", "b", "scales"], ["y"], domain="com.microsoft",
            K=w.cols, N=w.rows, bits=4, block_size=w.block,
        )  # fmt: skip
        graph = helper.make_graph(
            [node],
            "int4_linear",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", w.cols])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", w.rows])],
            [_supplied("b", TensorProto.UINT8, packed.shape), _supplied("scales", TensorProto.FLOAT, scales.shape)],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10
        )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # hundreds of sessions take turns
        # Handed over as OrtValues, not serialized into the model: onnxruntime then keeps only its prepacked
        # copy (the int4 bytes once; a serialized initializer stayed resident beside it, twice the bytes).
        opts.add_external_initializers(
            ["b", "scales"], [ort.OrtValue.ortvalue_from_numpy(packed), ort.OrtValue.ortvalue_from_numpy(scales)]
        )
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x, bias=None):
        if self._session is None:
            self._session = self._build()
        x = np.asarray(x, dtype=np.float32)
        flat = np.ascontiguousarray(x.reshape(-1, self.weight.cols))
        y = self._session.run(None, {"x": flat})[0].reshape(x.shape[:-1] + (self.weight.rows,))
        return y if bias is None else y + bias


def _supplied(name: str, dtype: int, shape) -> object:
    """An initializer whose data the session options supply (``add_external_initializers``)."""
    from onnx import TensorProto

    t = TensorProto(name=name, data_type=dtype, dims=list(shape), data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value="supplied-by-session-options")
    return t


def _kernel_usable(weight: _Int4Weight) -> bool:
    """MatMulNBits' blocks: a power of two, at least 16."""
    return weight.block >= 16 and weight.block & (weight.block - 1) == 0


def fuse(function, kernels: dict, *, int4_linear: bool) -> int:
    """Rewrite ``function``'s int4 constexpr steps that feed one gather / linear (see the module doc).
    ``kernels`` (shared by a package's functions: key = the weight's place in the file) keeps one
    kernel per weight. Returns how many steps were rewritten."""
    from coremltools.converters.mil.mil import types

    consts, steps = function.constants, function.steps
    users: dict[str, list[int]] = {}
    for i, st in enumerate(steps):
        for v in st.inputs.values():
            for n in v if isinstance(v, tuple) else (v,):
                users.setdefault(n, []).append(i)
    dropped, fused = set(), 0
    for i, st in enumerate(steps):
        if st.op_type != SHIFT_SCALE or set(st.inputs) != {"data", "scale"}:
            continue
        data, scale = consts.get(st.inputs["data"]), consts.get(st.inputs["scale"])
        out = st.outputs[0]
        use = users.get(out, [])
        if not (hasattr(data, "raw") and _int4(data, types) and len(data.shape) == 2 and scale is not None):
            continue
        if len(use) != 1 or out in function.outputs or len(getattr(scale, "shape", ())) != 2:
            continue
        user = steps[use[0]]
        weight = _Int4Weight(data, scale, st.dtypes[0])
        if not weight.blocked:
            continue
        key = (data.path, data.offset)
        if user.op_type == "gather" and user.inputs.get("x") == out and _axis_zero(user, consts):
            kernel = kernels.setdefault(("gather",) + key, Int4Gather(weight))
            user.inputs = {k: v for k, v in user.inputs.items() if k not in ("x", "axis")}
        elif user.op_type == "linear" and int4_linear and user.inputs.get("weight") == out and _kernel_usable(weight):
            kernel = kernels.setdefault(("linear",) + key, Int4Linear(weight))
            user.inputs = {k: v for k, v in user.inputs.items() if k != "weight"}
        else:
            continue
        user.fn = kernel
        dropped.add(i)
        fused += 1
    function.steps = [st for i, st in enumerate(steps) if i not in dropped]
    return fused


def _axis_zero(step, consts) -> bool:
    """gather along axis 0 without batch dims (MIL's defaults when the inputs are left out)."""
    axis, batch = (consts.get(step.inputs[k]) if k in step.inputs else 0 for k in ("axis", "batch_dims"))
    return axis is not None and batch is not None and int(np.asarray(axis)) == 0 and int(np.asarray(batch)) == 0
