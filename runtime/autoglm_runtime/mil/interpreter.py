"""Load a Core ML ML Program (``.mlpackage``) and execute its MIL in numpy.

coremltools converts and saves packages on Linux but cannot run them (no ``MLModel.predict``,
no ``make_state``); this interpreter is how we check on Linux that a saved package computes
what the PyTorch model does.

Loading uses coremltools' own protobuf -> MIL reader, so coremltools is needed to *load* (it is
imported lazily); execution is plain numpy.

Numerics (what "fp16 where the program says fp16" means here): every op computes in float32 from
its (exactly upcast) fp16 inputs and its result is rounded to the dtype the program declares for
that output, op by op. This is how Apple's GPU and Neural Engine treat an fp16 program: tensors
between ops are stored in fp16 (so rounding, overflow to inf and fp16 masks happen at the same
places), while matmul/conv/reductions accumulate in higher precision inside the op. Computing in
float16 numpy instead would accumulate dot products and reductions in fp16 (less accurate than the
device, and very slow, since numpy has no fp16 BLAS). For elementwise add/sub/mul/div of fp16
values, float32-then-round gives exactly the IEEE fp16 result. Data-movement ops (reshape,
slicing, gather, concat, ...) run in the declared dtype directly. Integer and bool tensors are
computed and stored in their declared dtypes (int32, int16, uint16, bool, ...).

States: ``make_state(function)`` returns zeros of the declared state shapes/dtypes;
``predict(..., state=s)`` reads ``s`` via ``read_state`` and updates the arrays in place via
``coreml_update_state``, as ``MLModel.predict(..., state=)`` does on device.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .ops import ARITH_FREE, OPS, _unpack_sub_byte


class MILRuntimeError(RuntimeError):
    """An op failed while executing, or produced a shape the program does not declare."""


def unsupported_op_error(op_type: str, function: str, output: str) -> NotImplementedError:
    return NotImplementedError(
        f"MIL op '{op_type}' (in function {function}, output '{output}') is not supported by the interpreter"
    )


@dataclass
class InputInfo:
    """One function input as declared: ``shape`` has None for flexible dims."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    ranges: list[tuple[int, int | None]] | None = None  # per-dim (lower, upper|None) for RangeDim
    enumerated: list[tuple[int, ...]] | None = None  # allowed shapes for EnumeratedShapes


@dataclass
class _Step:
    op_type: str
    name: str
    fn: Any
    inputs: dict[str, Any]  # input name -> var name | tuple of var names
    outputs: list[str]
    dtypes: list[np.dtype | None]
    shapes: list[tuple[int | None, ...] | None]
    release: tuple[str, ...] = ()  # vars whose last use is this step


@dataclass
class _Function:
    name: str
    inputs: dict[str, InputInfo]
    states: dict[str, InputInfo]
    outputs: list[str]
    steps: list[_Step]
    constants: dict[str, Any]
    op_counts: Counter
    unsupported: list[tuple[str, str]]  # (op_type, first output name)
    f32: dict[str, np.ndarray] = field(default_factory=dict)  # cached fp32 copies of fp16 constants


# ---------------------------------------------------------------- type helpers
def _np_dtype(var) -> np.dtype | None:
    from coremltools.converters.mil.mil import types

    t = var.sym_type
    if types.is_state(t):
        t = t.wrapped_type()
    if types.is_tensor(t):
        t = t.get_primitive()
    if types.is_str(t) or not (types.is_scalar(t)):
        return None
    try:
        return np.dtype(types.nptype_from_builtin(t))
    except Exception:
        return None


def _static_shape(var) -> tuple[int | None, ...] | None:
    from coremltools.converters.mil.mil import types

    t = var.sym_type
    if types.is_state(t):
        t = t.wrapped_type()
    if types.is_tensor(t):
        return tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in t.get_shape())
    if types.is_scalar(t):
        return ()
    return None


def _const_value(var):
    v = var.val
    if isinstance(v, (str, np.str_)):
        return str(v)
    if isinstance(v, np.ndarray):
        return v
    if v is None:
        return None
    dt = _np_dtype(var)
    return np.asarray(v, dtype=dt) if dt is not None else v


# ---------------------------------------------------------------- loading
_BLOB_SENTINEL = 0xDEADBEEF


class FileValue:
    """A tensor the package keeps in its weight file, read from there (memory-mapped) each time it is
    used instead of being held: the interpreter's constants stay file pages the kernel can drop, so a
    package of any size is checked in the memory of its largest tensor, not of all of them.

    Blob layout (coremltools' MIL storage): a 64-byte metadata record at ``offset`` (sentinel
    0xDEADBEEF, data type, size in bytes, data offset), the data at its own 64-byte aligned offset;
    sub-byte types (int4, ...) packed least significant bits first."""

    def __init__(self, path: str, offset: int, dtype, shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.shape = path, int(offset), dtype, tuple(int(d) for d in shape)

    def raw(self) -> np.memmap:
        """The blob's bytes as stored (sub-byte values still packed), memory-mapped."""
        header = np.fromfile(self.path, dtype=np.uint64, count=3, offset=self.offset)
        sentinel = int(header[0]) & 0xFFFFFFFF
        if sentinel != _BLOB_SENTINEL:
            raise MILRuntimeError(f"{self.path}: no weight blob at offset {self.offset}")
        size, data_offset = int(header[1]), int(header[2])
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=data_offset, shape=(size,))

    def load(self) -> np.ndarray:
        from coremltools.converters.mil.mil import types

        raw = self.raw()
        count = int(np.prod(self.shape, dtype=np.int64))
        if types.is_sub_byte(self.dtype):
            nbits, signed = self.dtype.get_bitwidth(), not self.dtype.is_unsigned()
            out = _unpack_sub_byte(raw, nbits, count, signed)
        else:
            out = raw.view(np.dtype(types.nptype_from_builtin(self.dtype)))[:count]
        return out.reshape(self.shape)


@contextmanager
def _file_values_deferred(found: dict[int, FileValue], weights_dir: str):
    """While coremltools reads a program, every tensor stored in the weight file comes back as a
    stand-in of its shape and dtype that holds no memory (a broadcast zero) and is recorded in ``found``
    (by the stand-in's id) as a ``FileValue``; everything else is read as coremltools reads it."""
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.mil import types

    original = milproto_load._load_value
    stand_ins = []  # alive while loading, so their ids stay unique

    def load_value(context, value_spec):
        if value_spec.type.WhichOneof("type") != "tensorType" or value_spec.WhichOneof("value") != "blobFileValue":
            return original(context, value_spec)
        valuetype = milproto_load.proto_to_types(value_spec.type)
        if not types.is_tensor(valuetype):
            return original(context, value_spec)
        dtype, shape = valuetype.get_primitive(), valuetype.get_shape()
        blob = value_spec.blobFileValue
        stand_in = np.broadcast_to(np.zeros((), types.nptype_from_builtin(dtype)), shape)
        stand_ins.append(stand_in)
        path = os.path.join(weights_dir, blob.fileName.split("/")[-1])
        found[id(stand_in)] = (stand_in, FileValue(path, blob.offset, dtype, shape))
        return stand_in

    milproto_load._load_value = load_value
    try:
        yield
    finally:
        milproto_load._load_value = original


def _load_program(model, deferred: dict | None = None):
    """(program, spec or None) from a path, an MLModel or a MIL Program. With ``deferred`` (a dict), the
    weight file's tensors of a saved package are not read: ``_file_values_deferred`` records them there."""
    from coremltools.converters.mil.mil import Program

    if isinstance(model, Program):
        return model, None
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such Core ML package")
        model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(
            f"not an ML Program (model type {spec.WhichOneof('Type')!r}); only ML Programs can be interpreted"
        )
    log = logging.getLogger("coremltools")  # the reader logs every shared var of a multifunction package
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        if deferred is not None and model.weights_dir:
            with _file_values_deferred(deferred, model.weights_dir):
                prog = load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)
        else:
            prog = load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)
    finally:
        log.setLevel(level)
    return prog, spec


def _spec_flex(spec, function: str) -> dict[str, tuple]:
    """Input name -> (ranges, enumerated) from the model description."""
    if spec is None:
        return {}
    desc = spec.description
    features = None
    if len(desc.functions):
        for f in desc.functions:
            if f.name == function:
                features = f.input
    else:
        features = desc.input
    out = {}
    for feat in features or []:
        if feat.type.WhichOneof("Type") != "multiArrayType":
            continue
        ma = feat.type.multiArrayType
        kind = ma.WhichOneof("ShapeFlexibility")
        if kind == "shapeRange":
            ranges = [
                (int(r.lowerBound), None if r.upperBound < 0 else int(r.upperBound)) for r in ma.shapeRange.sizeRanges
            ]
            out[feat.name] = (ranges, None)
        elif kind == "enumeratedShapes":
            out[feat.name] = (None, [tuple(int(d) for d in s.shape) for s in ma.enumeratedShapes.shapes])
    return out


def _compile_function(name: str, fn, spec, deferred: dict | None = None) -> _Function:
    from coremltools.converters.mil.mil import types

    flex = _spec_flex(spec, name)
    inputs, states = {}, {}
    for in_name, var in fn.inputs.items():
        info = InputInfo(in_name, _static_shape(var), _np_dtype(var), *flex.get(in_name, (None, None)))
        (states if types.is_state(var.sym_type) else inputs)[in_name] = info

    constants: dict[str, Any] = {}
    steps: list[_Step] = []
    counts: Counter = Counter()
    unsupported: list[tuple[str, str]] = []
    known = set(inputs) | set(states)

    def ref(var):
        if var.name not in known and var.name not in constants:
            val = _const_value(var)  # default inputs coremltools materialises without a const op
            if val is None:
                raise ValueError(f"function {name}: var {var.name!r} is used before it is defined")
            constants[var.name] = val
        return var.name

    for op in fn.operations:
        counts[op.op_type] += 1
        if op.op_type == "const":
            out = op.outputs[0]
            val = _const_value(out)
            file_value = (deferred or {}).get(id(val))
            constants[out.name] = file_value[1] if file_value is not None and file_value[0] is val else val
            continue
        ins = {}
        for k, v in op.inputs.items():
            ins[k] = tuple(ref(x) for x in v) if isinstance(v, (tuple, list)) else ref(v)
        outs = [o.name for o in op.outputs]
        f = OPS.get(op.op_type)
        if f is None:
            unsupported.append((op.op_type, outs[0] if outs else op.name))
        steps.append(
            _Step(
                op.op_type,
                op.name,
                f,
                ins,
                outs,
                [_np_dtype(o) for o in op.outputs],
                [_static_shape(o) for o in op.outputs],
            )
        )
        known.update(outs)

    outputs = [o.name for o in fn.outputs]
    # free intermediates after their last use
    last: dict[str, int] = {}
    for i, st in enumerate(steps):
        for v in st.inputs.values():
            for n in v if isinstance(v, tuple) else (v,):
                last[n] = i
    keep = set(outputs) | set(states) | set(constants)
    by_step: dict[int, list[str]] = {}
    for n, i in last.items():
        if n not in keep:
            by_step.setdefault(i, []).append(n)
    for i, names in by_step.items():
        steps[i].release = tuple(names)
    return _Function(name, inputs, states, outputs, steps, constants, counts, unsupported)


# ---------------------------------------------------------------- execution helpers
def _finish(value, dtype: np.dtype | None, shape, step: _Step, function: str, out_name: str):
    if dtype is None:
        return value
    arr = np.asarray(value)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if shape is not None:
        if arr.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape, arr.shape)):
            raise MILRuntimeError(
                f"MIL op '{step.op_type}' (in function {function}, output '{out_name}') produced shape "
                f"{arr.shape} but the program declares {tuple('?' if d is None else d for d in shape)}"
            )
    return arr


def _check_input(info: InputInfo, value, function: str) -> np.ndarray:
    arr = np.asarray(value)
    shp = arr.shape
    bad = len(shp) != len(info.shape) or any(d is not None and d != a for d, a in zip(info.shape, shp))
    if info.enumerated:
        bad = tuple(shp) not in info.enumerated
    elif info.ranges and not bad:
        bad = any(a < lo or (hi is not None and a > hi) for a, (lo, hi) in zip(shp, info.ranges))
    if bad:
        allowed = info.enumerated or info.ranges or tuple("?" if d is None else d for d in info.shape)
        raise ValueError(f"function {function}: input {info.name!r} has shape {tuple(shp)}, declared {allowed}")
    if info.dtype is not None and arr.dtype != info.dtype:
        if np.issubdtype(info.dtype, np.integer) and np.issubdtype(arr.dtype, np.integer):
            lim = np.iinfo(info.dtype)
            if arr.size and (arr.min() < lim.min or arr.max() > lim.max):
                raise ValueError(f"function {function}: input {info.name!r} does not fit {info.dtype}")
        arr = arr.astype(info.dtype)
    return arr


class MILModel:
    """A Core ML ML Program, executed op by op in numpy.

    ``model``: path to an ``.mlpackage``, a ``coremltools.models.MLModel`` (e.g. straight from
    ``ct.convert``) or a MIL ``Program``. Multifunction packages expose every function.

    ``cache_weights``: decompress ``constexpr_*`` weights (int4/int8/palettized) once at load and
    keep float32 copies of fp16 weights between calls (fast; about 3x the fp16 weight memory).
    With False (lean; for big models) the weights of a saved package are never read at load: each
    call reads the tensors it uses from the weight file, memory-mapped (``FileValue``), and
    decompresses them op by op, so memory follows the largest weight, not the package. Lean also reads
    only the gathered rows of an int4 table (exact; ``int4_kernels``).

    ``int4_linear`` (lean only): int4 weights feeding a ``linear`` run as onnxruntime ``MatMulNBits``
    over the packed codes, kept prepacked between calls (memory: the int4 bytes). Minutes per 9B decoder
    step become about a second; the weights are ``code * scale`` in fp32, not rounded to fp16 first.
    """

    def __init__(self, model, *, cache_weights: bool = True, int4_linear: bool = False):
        if int4_linear and cache_weights:
            raise ValueError("int4_linear is a lean-mode kernel: pass cache_weights=False with it")
        deferred: dict = {}
        prog, spec = _load_program(model, None if cache_weights else deferred)
        self.cache_weights = cache_weights
        self._functions = {n: _compile_function(n, f, spec, deferred) for n, f in prog.functions.items()}
        del prog, deferred  # the stand-ins go with the program
        if not cache_weights:
            from .int4_kernels import fuse

            kernels: dict = {}  # one per weight, shared by the functions (prefill and decode) that use it
            self.fused_steps = sum(fuse(f, kernels, int4_linear=int4_linear) for f in self._functions.values())
        default = None
        if spec is not None and len(spec.description.functions):
            default = spec.description.defaultFunctionName or None
        self.default_function = default or ("main" if "main" in self._functions else next(iter(self._functions)))
        if cache_weights:
            for f in self._functions.values():
                self._fold_constexpr(f)

    # ---- introspection
    @property
    def functions(self) -> list[str]:
        return list(self._functions)

    def _fn(self, function: str | None) -> _Function:
        name = self.default_function if function is None else function
        if name not in self._functions:
            raise KeyError(f"no function {name!r} in this program (functions: {', '.join(self._functions)})")
        return self._functions[name]

    def input_names(self, function: str | None = None) -> list[str]:
        return list(self._fn(function).inputs)

    def input_info(self, function: str | None = None) -> dict[str, InputInfo]:
        return dict(self._fn(function).inputs)

    def state_names(self, function: str | None = None) -> list[str]:
        return list(self._fn(function).states)

    def output_names(self, function: str | None = None) -> list[str]:
        return list(self._fn(function).outputs)

    def op_counts(self, function: str | None = None) -> Counter:
        """How many ops of each type the function has (const included)."""
        return Counter(self._fn(function).op_counts)

    def unsupported_ops(self, function: str | None = None) -> list[str]:
        return sorted({t for t, _ in self._fn(function).unsupported})

    def make_state(self, function: str | None = None) -> dict[str, np.ndarray]:
        return {n: np.zeros(i.shape, dtype=i.dtype) for n, i in self._fn(function).states.items()}

    # ---- execution
    def _fold_constexpr(self, f: _Function) -> None:
        """Evaluate constexpr ops whose inputs are all constants, with our own implementations."""
        kept = []
        for st in f.steps:
            names = [n for v in st.inputs.values() for n in (v if isinstance(v, tuple) else (v,))]
            if st.op_type.startswith("constexpr_") and st.fn is not None and all(n in f.constants for n in names):
                env = {n: f.constants[n] for n in names}
                for name, val in self._run_step(st, env, f).items():
                    f.constants[name] = val
            else:
                kept.append(st)
        f.steps = kept

    def _upcast(self, name: str, value, f: _Function, env_is_const: bool):
        if isinstance(value, np.ndarray) and value.dtype == np.float16:
            if env_is_const and self.cache_weights:
                cached = f.f32.get(name)
                if cached is None:
                    cached = f.f32[name] = value.astype(np.float32)
                return cached
            return value.astype(np.float32)
        if isinstance(value, np.float16):
            return np.float32(value)
        return value

    def _run_step(self, st: _Step, env: dict, f: _Function) -> dict[str, Any]:
        consts = f.constants
        arith = st.op_type not in ARITH_FREE

        def get(n):
            v = env[n] if n in env else consts[n]
            if isinstance(v, FileValue):
                v = v.load()
            return self._upcast(n, v, f, n in consts) if arith else v

        args = {k: (tuple(get(n) for n in v) if isinstance(v, tuple) else get(v)) for k, v in st.inputs.items()}
        try:
            with np.errstate(all="ignore"):
                res = st.fn(**args)
        except Exception as exc:
            raise MILRuntimeError(
                f"MIL op '{st.op_type}' (in function {f.name}, output '{st.outputs[0] if st.outputs else st.name}') "
                f"failed: {type(exc).__name__}: {exc}"
            ) from exc
        vals = res if isinstance(res, (tuple, list)) else (res,)
        if len(vals) != len(st.outputs):
            raise MILRuntimeError(
                f"MIL op '{st.op_type}' ({st.name}) returned {len(vals)} values for {len(st.outputs)} outputs"
            )
        out = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for name, val, dt, shp in zip(st.outputs, vals, st.dtypes, st.shapes):
                out[name] = _finish(val, dt, shp, st, f.name, name)
        return out

    def predict(
        self, inputs: dict[str, Any], function: str | None = None, state: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one function. ``function=None`` is the package's default ("main" for one-function packages).
        ``state`` (from ``make_state``) is required for stateful functions and updated in place."""
        f = self._fn(function)
        if f.unsupported:
            op_type, out = f.unsupported[0]
            raise unsupported_op_error(op_type, f.name, out)
        unknown = set(inputs) - set(f.inputs)
        if unknown:
            raise KeyError(f"function {f.name}: unknown input(s) {sorted(unknown)}; inputs are {list(f.inputs)}")
        missing = [n for n in f.inputs if n not in inputs]
        if missing:
            raise KeyError(f"function {f.name}: missing input(s) {missing}")
        env: dict[str, Any] = {n: _check_input(i, inputs[n], f.name) for n, i in f.inputs.items()}
        if f.states:
            if state is None:
                raise ValueError(
                    f"function {f.name} is stateful ({', '.join(f.states)}); pass state=model.make_state({f.name!r})"
                )
            for n, info in f.states.items():
                if n not in state:
                    raise KeyError(f"function {f.name}: state {n!r} missing from the state dict")
                arr = state[n]
                if not isinstance(arr, np.ndarray) or arr.shape != info.shape or arr.dtype != info.dtype:
                    raise ValueError(
                        f"function {f.name}: state {n!r} must be a {info.dtype} array of shape {info.shape}"
                        f" (make_state builds one), got {getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', '')}"
                    )
                env[n] = arr
        for st in f.steps:
            env.update(self._run_step(st, env, f))
            for n in st.release:
                env.pop(n, None)
        out = {n: env[n] if n in env else f.constants[n] for n in f.outputs}
        return {n: np.array(v.load()) if isinstance(v, FileValue) else v for n, v in out.items()}


def run_op(op_type: str, inputs: dict[str, Any], output_dtypes: list | tuple | np.dtype | type | None = None):
    """Execute one op the way ``MILModel.predict`` does (float32 compute, output rounded to
    ``output_dtypes``); for tests. Returns one array or a tuple for multi-output ops."""
    fn = OPS.get(op_type)
    if fn is None:
        raise unsupported_op_error(op_type, "<run_op>", "<none>")
    arith = op_type not in ARITH_FREE

    def up(v):
        if not arith:
            return v
        if isinstance(v, tuple):
            return tuple(up(x) for x in v)
        if isinstance(v, (np.ndarray, np.float16)) and np.asarray(v).dtype == np.float16:
            return np.asarray(v, dtype=np.float32)
        return v

    with np.errstate(all="ignore"):
        res = fn(**{k: up(v) for k, v in inputs.items()})
    multi = isinstance(res, (tuple, list))
    vals = list(res) if multi else [res]
    if output_dtypes is None:
        dts = [None] * len(vals)
    elif isinstance(output_dtypes, (list, tuple)):
        dts = list(output_dtypes)
    else:
        dts = [output_dtypes] * len(vals)
    with np.errstate(over="ignore", invalid="ignore"):
        out = [np.asarray(v) if d is None else np.asarray(v).astype(d) for v, d in zip(vals, dts)]
    return tuple(out) if multi else out[0]
