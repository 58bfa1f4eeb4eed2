"""Core ML recipe: one converter per component, each written the same way (apple/ml-stable-diffusion style).

    convert_vision_encoder / convert_audio_encoder / convert_token_embedding / convert_text_decoder
        1. wrap the component in a Core-ML-friendly torch module (weights shared with the model),
        2. torch.jit.trace it with example inputs,
        3. ct.convert to an fp16 ML program for the deployment target,
        4. compress the weights (``ct.optimize.coreml.linear_quantize_weights``),
        5. save the ``.mlpackage`` and describe its functions (inputs / outputs / states) for the manifest.

The parity gate is not here: ``pipeline.export_bundle`` runs every package through a runtime
(our MIL interpreter on Linux, ``MLModel.predict`` on macOS) against the eager references.

Weights (``CoreMLRecipe``):

- ``int4`` (iOS 18 only): symmetric int4, one fp16 scale per block of ``block_size`` input channels
  of each output row (``constexpr_blockwise_shift_scale``). A linear whose input width is not a
  multiple of the block falls back to int8 per output channel, and is named in the report.
- ``int8``: symmetric int8, one scale per output row (iOS 17: ``constexpr_affine_dequantize``).
- ``fp16``: no compression.
- a quantized checkpoint (``calibrate`` / ``qat``; the converters' ``fixed``): each linear it
  quantized keeps its integers exactly (``apply_checkpoint_codes``: int4 blocks incl. -8, or int8
  per-channel, with its scales rounded to fp16), each linear it left fp32 stays fp16; coremltools
  rounds nothing but the token embedding table (per the recipe). ``checkpoint_weight`` is the
  eager twin's weight: codes times the fp16 scales, rounded to fp16 as the constexpr op's output.

Compressed: the weight of every ``linear`` op (all nn.Linear of the towers and the decoder,
lm_head included) and, in the TokenEmbedding package, the table of its ``gather`` (blocks along
the hidden axis). Never compressed: biases and norms (1-D), the audio tower's two convolutions,
the vision position embeddings, rotary tables, and the MoE router's weight (routing must not flip).
``quantize_like_coreml`` does the same arithmetic in torch for the eager reference; a test checks
it against the integers and scales inside the saved packages.

fp16 safety: every RMSNorm is traced as ``layer_norm([x, -x])[..., :D] * weight`` (exactly equal),
so no package squares the residual stream in fp16 (``x**2`` overflows fp16 once |x| > 256).

Decoder (one package, ``TextDecoder.mlpackage``):

- iOS 18: the KV cache is Core ML state (``keyCache`` / ``valueCache``, fp16,
  ``[layers, 1, kv_heads, max_context, head_dim]``) and the package has two functions sharing
  weights: ``prefill`` (exactly ``prefill_chunk`` tokens) and ``decode`` (one token).
- iOS 17: no states, no multifunction: one function ``main`` for 1..prefill_chunk tokens takes the
  whole cache as inputs ``key_cache`` / ``value_cache`` and returns only the new rows as
  ``key_update`` / ``value_update`` ``[layers, 1, kv_heads, S, head_dim]``; the app writes them at
  slots ``end - S .. end - 1``.

Decoder inputs: ``inputs_embeds [1, S, hidden]`` fp16, ``position_ids [3, S]`` int32 (the 3-plane
M-RoPE ids from ``autoglm_runtime.positions``) and ``causal_mask [1, 1, S, end]`` fp16 (0 where
query i may attend to slot j, -inf elsewhere). ``end`` (the mask's last dimension, flexible up to
max_context) says where the call writes: its S tokens go to cache slots ``end - S .. end - 1``, and
attention reads slots ``0 .. end - 1``. Rotary cos/sin are looked up in fp16 tables of every
position < max_context inside the graph (angles computed in fp32 at export; an fp16 angle of a
position in the thousands would be off by whole radians). Output ``logits [1, S, vocab]`` fp16.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoglm_runtime.backends.coreml_backend import causal_mask
from autoglm_runtime.preprocess.buckets import method_name

from ...checkpoint import release_pages
from ...errors import ExportError
from ...model.autoglm import AutoGLM
from ...model.moe import TopKRouter
from ...model.rope import apply_rotary
from ...model.text import RMSNorm as TextRMSNorm
from ...model.vision import RMSNorm as VisionRMSNorm
from ...quantize.grid import array_digest
from ...sizes import count
from ...stored import fp32_weights
from .recipe import CoreMLRecipe
from .twin import checkpoint_scales16, quantize_like_coreml

log = logging.getLogger(__name__)

PACKAGES = {
    "vision_encoder": "VisionEncoder.mlpackage",
    "audio_encoder": "AudioEncoder.mlpackage",
    "token_embedding": "TokenEmbedding.mlpackage",
    "text_decoder": "TextDecoder.mlpackage",
}
STATE_NAMES = ("keyCache", "valueCache")


# --------------------------------------------------------------------------- Core ML helpers


def _ct():
    try:
        import coremltools as ct
    except ImportError as e:
        raise ExportError(f"autoglm-export ios needs coremltools ({e}); install autoglm-export[targets]") from None
    return ct


def _op_config(scheme: str, block_size: int):
    from coremltools.optimize.coreml import OpLinearQuantizerConfig

    if scheme == "int4":
        return OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=block_size, weight_threshold=0
        )
    return OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0)


# op type -> (the const input that holds the weight, the axis blocks run along)
_WEIGHT_INPUTS = {"linear": ("weight", 1), "gather": ("x", 1)}


def compress_weights(mlmodel, scheme: str, block_size: int, op_type: str = "linear", skip: set[str] = frozenset()):
    """int4 per-block (int8 per-channel for weights the block doesn't divide) or int8 per-channel,
    on the weight const of every ``op_type`` op (one pass over the program)."""
    from coremltools.optimize.coreml import OptimizationConfig, linear_quantize_weights

    if scheme == "fp16":
        return mlmodel
    arg, axis = _WEIGHT_INPUTS[op_type]
    per_name: dict = {name: None for name in skip}
    int8 = _op_config("int8", block_size)
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.operations:
            if op.op_type != "const":
                continue
            users = {child.op_type for child in op.outputs[0].child_ops}
            if op_type in users and len(users) > 1:
                # coremltools dedups equal constants (e.g. all-zero biases), so one const can feed a linear
                # and a layer_norm; its config lookup then fails on the conflict. Such consts are shared
                # 1-D vectors in practice (never compressed): leave them alone.
                per_name[op.name] = None
                if op.outputs[0].rank > 1:
                    log.warning("%s feeds %s: left uncompressed", op.name, ", ".join(sorted(users)))
        if scheme == "int4":
            for op in fn.operations:
                w = op.inputs.get(arg) if op.op_type == op_type else None
                if (
                    w is not None
                    and w.op is not None
                    and w.op.op_type == "const"
                    and w.op.name not in per_name
                    and w.rank == 2
                    and w.shape[axis] % block_size
                ):
                    per_name[w.op.name] = int8
    config = OptimizationConfig(op_type_configs={op_type: _op_config(scheme, block_size)}, op_name_configs=per_name)
    with warnings.catch_warnings(), _quiet_coremltools():
        warnings.simplefilter("ignore")
        out = linear_quantize_weights(mlmodel, config)
    discard(mlmodel)  # the uncompressed program is not needed any more
    return out


def discard(*models) -> None:
    """Remove the temporary package behind each MLModel now, and free what it held. coremltools writes
    one to /tmp for every converted or compressed model and deletes it only when the process exits: at
    9B that is tens of GB of packages already saved elsewhere. The objects must not be used after."""
    for ml in models:
        if ml is not None and getattr(ml, "is_temp_package", False) and getattr(ml, "package_path", None):
            shutil.rmtree(ml.package_path, ignore_errors=True)
    # A MIL program is a web of reference cycles (ops, vars, blocks): without a collection its weights
    # stay until Python's cyclic collector happens to run (measured: 7.7 GB held after the 8 vision
    # bucket conversions of a 4-block real-width tower, the weights of every bucket's programs). The
    # caller still holds ``models`` here, so whoever drops the last one collects again.
    gc.collect()


def _sanitized(fqn: str) -> str:
    return fqn.replace(".", "_")


def apply_checkpoint_codes(mlmodel, layers: dict, min_ios: int):
    """Replace the fp16 weight const of every ``linear`` op that is a quantized checkpoint's layer by
    a constexpr op holding the checkpoint's integers, unchanged (coremltools' round-to-nearest never
    sees them): ``constexpr_blockwise_shift_scale(data=codes int4|int8 [out, in], scale=fp16 [out,
    in / group])`` on iOS 18 (no offset: symmetric; int4 data may be -8, which coremltools' own
    ``linear_symmetric`` never produces but the op allows), ``constexpr_affine_dequantize(int8,
    zero_point 0, fp16 scale [out], axis 0)`` on iOS 17 (int8 per-channel only).

    ``layers``: fqn -> ``QuantizedLinear`` of this package's component. The program's const is found
    by value (the converted model already holds ``codes * scales``, cast to fp16), so it does not
    depend on coremltools' const naming; the name only breaks ties between equal weights. Every
    layer must be found. Linears that are not in ``layers`` keep their fp16 weights.
    """
    if not layers:
        return mlmodel
    from coremltools.converters.mil.mil import types
    from coremltools.models.utils import _apply_graph_pass
    from coremltools.optimize._utils import QuantParams
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights as _QuantizePass

    if min_ios < 18 and any(q.bits == 4 for q in layers.values()):
        raise ExportError("int4 quantized-checkpoint layers need --min-ios 18 (constexpr_blockwise_shift_scale)")
    by_value: dict = {}
    for fqn, q in layers.items():
        by_value.setdefault(array_digest(q.dequantize().to(torch.float16).numpy()), []).append(fqn)
    params = {}
    for fqn, q in layers.items():
        dtype = types.nptype_from_builtin(types.int4 if q.bits == 4 else types.int8)
        params[fqn] = QuantParams(
            data=q.codes.numpy().astype(dtype),
            scale=checkpoint_scales16(q, fqn).numpy(),
            offset=None,
            nbits=np.uint8(q.bits),
        )
    found: dict[str, list[str]] = {}

    def pick(fqns: list[str], const_name: str) -> str:
        first = layers[fqns[0]]
        if all(torch.equal(layers[f].codes, first.codes) and torch.equal(layers[f].scales, first.scales) for f in fqns):
            return fqns[0]
        named = [f for f in fqns if const_name.endswith(_sanitized(f) + "_weight_to_fp16")]
        if len(named) != 1:
            raise ExportError(
                f"{const_name}: equal fp16 weights in {', '.join(fqns)} with different integer codes; "
                "cannot tell which checkpoint layer it is"
            )
        return named[0]

    class CheckpointCodes(_QuantizePass):
        def __init__(self):
            super().__init__(config=None)
            self.consts: dict[str, str] = {}

        def apply(self, prog):
            def find(block):
                for op in block.operations:
                    for b in op.blocks:
                        find(b)
                    w = op.inputs.get("weight") if op.op_type == "linear" else None
                    if w is None or w.op is None or w.op.op_type != "const" or w.rank != 2:
                        continue
                    val = np.asarray(w.val)
                    fqns = by_value.get(array_digest(val)) if val.dtype == np.float16 else None
                    if fqns:
                        fqn = pick(fqns, w.op.name)
                        self.consts[w.op.name] = fqn
                        found.setdefault(fqn, []).append(w.op.name)

            for fn in prog.functions.values():
                find(fn)
            super().apply(prog)

        def is_valid_op(self, op):
            return op.op_type == "const" and op.name in self.consts

        def transform_op(self, op):
            new_var = self._create_constexpr_var(op, params[self.consts[op.name]])
            op.enclosing_block.replace_uses_of_var_after_op(
                anchor_op=op, old_var=op.outputs[0], new_var=new_var, no_check_var_types=True
            )
            op.enclosing_block.remove_ops([op])

    with warnings.catch_warnings(), _quiet_coremltools():
        warnings.simplefilter("ignore")
        out = _apply_graph_pass(mlmodel, CheckpointCodes())
    discard(mlmodel)
    missing = sorted(set(layers) - set(found))
    if missing:
        raise ExportError(
            f"quantized-checkpoint layers not found among the converted program's linear weights: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return out


def _compress_linears(
    ml, recipe: CoreMLRecipe, fixed: dict | None, prefixes: str | tuple[str, ...], skip: set[str] = frozenset()
):
    """The linears of one package: round-to-nearest per ``recipe``, or a quantized checkpoint's integers
    (``fixed``, every fqn; the ones starting with one of ``prefixes`` belong to this package) and nothing else."""
    if fixed is None:
        return compress_weights(ml, recipe.weights, recipe.block_size, skip=skip)
    prefixes = (prefixes + ".",) if isinstance(prefixes, str) else prefixes
    return apply_checkpoint_codes(ml, {f: q for f, q in fixed.items() if f.startswith(prefixes)}, recipe.min_ios)


class _quiet_coremltools:
    """coremltools logs a warning per skipped weight and draws progress bars: keep the CLI readable."""

    def __enter__(self):
        self.loggers = [logging.getLogger(n) for n in ("coremltools",)]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)
        self.tqdm = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
        if self.tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = self.tqdm


SCAN_SLICE = 1 << 22  # values per step of the whole-weight scans done lean (fp16 overflow, constant deduplication)


def _fp16_overflow(op) -> bool:
    """coremltools' ``FP16ComputePrecision.fp16_overflow`` decision (does a finite fp32 constant input
    exceed fp16's 65504?), a slice at a time: coremltools' own builds ``np.where`` index arrays of the
    whole weight (16 bytes per value: 0.9 GB for one 4096 x 13696 matrix) and was a quarter of the
    conversion time."""
    for inputs in op.inputs.values():
        for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
            if var.op is None or var.op.op_type != "const" or not var.is_tensor_or_scalar_of(dtype="fp32"):
                continue
            flat = np.asarray(var.op.val.val).reshape(-1)
            for i in range(0, flat.size, SCAN_SLICE):
                a = np.abs(flat[i : i + SCAN_SLICE])
                if np.max(a, where=a < 1e38, initial=0.0) > 65504:
                    return True
    return False


class _lean_fp16_pass:
    """coremltools' fp16 cast pass with its two whole-weight scans made lean while converting:
    ``_fp16_overflow``, and the underflow fix-up that applies to constants of fewer than 400 values
    only but flattens (copies) every weight to count them first."""

    def __enter__(self):
        from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

        self.cls = FP16ComputePrecision
        self.overflow, self.underflow = (
            FP16ComputePrecision.fp16_overflow,
            FP16ComputePrecision._check_underflow_to_zero,
        )
        underflow = self.underflow

        def check_underflow_to_zero(pass_, new_var, var):
            if var.val is not None and np.size(var.val) >= 400:
                return None  # coremltools' own check skips these too
            return underflow(pass_, new_var, var)

        FP16ComputePrecision.fp16_overflow = staticmethod(_fp16_overflow)
        FP16ComputePrecision._check_underflow_to_zero = check_underflow_to_zero

    def __exit__(self, *exc):
        self.cls.fp16_overflow = staticmethod(self.overflow)
        self.cls._check_underflow_to_zero = self.underflow


class _SlicedAllclose:
    """numpy, except ``allclose`` of two same-shaped arrays compares ``SCAN_SLICE`` values at a time: the
    same answer (it is elementwise) without numpy's float64 temporaries of the whole arrays (several of
    620M values, 5 GB each, for the 9B lm_head's int4 data: the head package was killed converting)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)
        a, b = a.reshape(-1), b.reshape(-1)
        return all(
            np.allclose(a[i : i + SCAN_SLICE], b[i : i + SCAN_SLICE], rtol=rtol, atol=atol, equal_nan=equal_nan)
            for i in range(0, a.size, SCAN_SLICE)
        )


@contextmanager
def _lean_const_deduplication():
    """coremltools' constant deduplication (inside every conversion, and across the functions of a
    multifunction package) compares candidate constants with ``_SlicedAllclose``."""
    import importlib

    # the module, not the pass class of the same name that its package exports
    module = importlib.import_module("coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication")
    module.np = _SlicedAllclose()
    try:
        yield
    finally:
        module.np = np


def _save_multifunction(desc, path: Path) -> None:
    ct = _ct()
    with warnings.catch_warnings(), _quiet_coremltools(), _lean_const_deduplication():
        warnings.simplefilter("ignore")
        ct.utils.save_multifunction(desc, str(path))


def _convert(traced, *, inputs, outputs, states=None, recipe: CoreMLRecipe):
    ct = _ct()
    target = ct.target.iOS18 if recipe.min_ios >= 18 else ct.target.iOS17
    with warnings.catch_warnings(), _quiet_coremltools(), _lean_fp16_pass(), _lean_const_deduplication():
        warnings.simplefilter("ignore")
        try:
            return ct.convert(
                traced,
                inputs=inputs,
                outputs=outputs,
                states=states or None,
                minimum_deployment_target=target,
                compute_precision=ct.precision.FLOAT16,
                convert_to="mlprogram",
                compute_units=ct.ComputeUnit.CPU_ONLY,
            )
        except Exception as e:  # coremltools raises bare ValueError/RuntimeError/NotImplementedError
            raise ExportError(f"Core ML conversion failed: {type(e).__name__}: {e}") from e


def _rms_norm_as_layer_norm(norm: nn.Module):
    """RMSNorm(x) == LayerNorm([x, -x])[..., :D] * weight, exactly: the concatenation has mean 0 and
    variance mean(x^2). One fused ``layer_norm`` op computes its statistics internally, while the
    literal ``x.pow(2).mean()`` squares x in fp16, which overflows once |x| > 256 (an LLM's
    residual stream has such outliers). The trick Apple uses for Llama on Core ML."""

    def forward(x):
        d = x.shape[-1]
        y = F.layer_norm(torch.cat([x, -x], dim=-1), (2 * d,), eps=norm.eps)
        return norm.weight * y[..., :d]

    return forward


def _is_rms_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (TextRMSNorm, VisionRMSNorm))


def _trace(module: nn.Module, example: tuple):
    norms = [m for m in module.modules() if _is_rms_norm(m)]
    try:
        for m in norms:  # instance-level override, for the trace only
            m.forward = _rms_norm_as_layer_norm(m)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-derived Python ints are expected
            return torch.jit.trace(module.eval(), example, check_trace=False)
    finally:
        for m in norms:
            del m.forward


def _tensor(name: str, shape, dtype):
    return _ct().TensorType(name=name, shape=shape, dtype=dtype)


_DTYPES = {"FLOAT16": "float16", "FLOAT32": "float32", "INT32": "int32", "DOUBLE": "float64"}


def _feature(desc) -> dict:
    """A spec FeatureDescription -> {"name", "shape", "dtype"[, "shape_range"]} (flexible dims as [lo, hi])."""
    kind = desc.type.WhichOneof("Type")
    arr = desc.type.multiArrayType if kind == "multiArrayType" else desc.type.stateType.arrayType
    from coremltools.proto import FeatureTypes_pb2

    out = {
        "name": desc.name,
        "shape": [int(s) for s in arr.shape],
        "dtype": _DTYPES.get(FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType), "?"),
    }
    if kind == "multiArrayType" and arr.WhichOneof("ShapeFlexibility") == "shapeRange":
        ranges = [[int(r.lowerBound), int(r.upperBound)] for r in arr.shapeRange.sizeRanges]
        if any(lo != hi for lo, hi in ranges):
            out["shape_range"] = ranges
    return out


def describe_package(path: str | Path) -> dict:
    """Functions of a saved package with their input / output / state names, shapes and dtypes."""
    from coremltools.models.utils import load_spec

    spec = load_spec(str(path))
    d = spec.description
    if len(d.functions):
        functions = {
            f.name: {
                "inputs": [_feature(i) for i in f.input],
                "outputs": [_feature(o) for o in f.output],
                "states": [_feature(s) for s in f.state],
            }
            for f in d.functions
        }
        default = d.defaultFunctionName
    else:
        functions = {
            "main": {
                "inputs": [_feature(i) for i in d.input],
                "outputs": [_feature(o) for o in d.output],
                "states": [_feature(s) for s in d.state],
            }
        }
        default = "main"
    return {
        "functions": functions,
        "default_function": default,
        "specification_version": int(spec.specificationVersion),
    }


def load_mil_program(path: str | Path):
    """The MIL program of a saved package, read back from disk (weights from its weight file)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load

    with _quiet_coremltools():  # the reader logs every var of a multifunction program at INFO
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        return load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir)


def op_counts(path: str | Path) -> dict[str, dict[str, int]]:
    """Per function, how many ops of each type the saved program has (consts left out), counted in the
    package's protobuf: its weights are never read (coremltools' program reader would load them all, and
    its program is a web of reference cycles that keeps them until a collection)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))

    def walk(block, counts: Counter) -> Counter:
        for op in block.operations:
            counts[op.type] += 1
            for b in op.blocks:
                walk(b, counts)
        return counts

    out = {}
    for fname, fn in spec.mlProgram.functions.items():
        counts = walk(fn.block_specializations[fn.opset], Counter())
        counts.pop("const", None)
        out[fname] = dict(sorted(counts.items()))
    return out


def package_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@dataclass
class PackageInfo:
    component: str
    file: str  # bundle-relative name, e.g. TextDecoder.mlpackage
    functions: dict = field(default_factory=dict)
    default_function: str = "main"
    ops: dict = field(default_factory=dict)
    bytes: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "default_function": self.default_function,
            "functions": self.functions,
            "ops": self.ops,
            "bytes": self.bytes,
            **self.extra,
        }


def _finish(component: str, mlmodel, path: Path, extra: dict | None = None) -> PackageInfo:
    path = Path(path)
    if mlmodel is not None:
        mlmodel.save(str(path))
        discard(mlmodel)
    d = describe_package(path)
    return PackageInfo(
        component,
        path.name,
        d["functions"],
        d["default_function"],
        op_counts(path),
        package_bytes(path),
        dict(extra or {}, specification_version=d["specification_version"]),
    )


# --------------------------------------------------------------------------- encoders and embedding


class _Wrapper(nn.Module):
    def __init__(self, model: AutoGLM):
        super().__init__()
        self.model = model


class VisionWrapper(_Wrapper):
    def __init__(self, model: AutoGLM, size: tuple[int, int] | None = None):
        super().__init__(model)
        self.size = size

    def forward(self, pixel_values):
        return self.model.vision_encoder(pixel_values, self.size)


class AudioWrapper(_Wrapper):
    def forward(self, input_features):
        return self.model.audio_encoder(input_features)


def _vision_package(model: AutoGLM, recipe: CoreMLRecipe, size, fixed: dict | None):
    v = model.vision
    h, w = size or v.image_hw
    example = (torch.zeros(h // v.cfg.patch_size * (w // v.cfg.patch_size), v.patch_dim),)
    with fp32_weights(v):
        traced = _trace(VisionWrapper(model, size), example)
    ml = _convert(
        traced,
        recipe=recipe,
        inputs=[_tensor("pixel_values", example[0].shape, np.float16)],
        outputs=[_tensor("image_embeds", None, np.float16)],
    )
    return _compress_linears(ml, recipe, fixed, "vision")


def convert_vision_encoder(model: AutoGLM, recipe: CoreMLRecipe, path: Path, fixed: dict | None = None) -> PackageInfo:
    """pixel_values [patches, 3*T*p*p] fp16 -> image_embeds [image_tokens, hidden] fp16.

    With aspect buckets: one multifunction package (iOS 18), a function per bucket sharing the weights:
    ``main`` for the default size, ``vision_encoder_HxW`` for the others (``ImageSpec.method``'s names)."""
    v = model.vision
    if len(v.sizes) == 1:
        return _finish("vision_encoder", _vision_package(model, recipe, None, fixed), path)
    ct = _ct()  # multifunction needs iOS 18: CoreMLTarget.check refused iOS 17 with buckets
    desc = ct.utils.MultiFunctionDescriptor()
    with tempfile.TemporaryDirectory(prefix="autoglm-coreml-vision-") as work:
        for h, w in v.sizes:
            default = (h, w) == v.image_hw
            function = "main" if default else method_name((h, w), v.image_hw)
            part = Path(work) / f"{function}.mlpackage"
            ml = _vision_package(model, recipe, None if default else (h, w), fixed)
            ml.save(str(part))
            discard(ml)
            desc.add_function(str(part), src_function_name="main", target_function_name=function)
        desc.default_function_name = "main"
        _save_multifunction(desc, path)
    return _finish("vision_encoder", None, path, {"buckets": [list(b) for b in v.sizes]})


def convert_audio_encoder(model: AutoGLM, recipe: CoreMLRecipe, path: Path, fixed: dict | None = None) -> PackageInfo:
    """input_features [1, mel_bins, frames] fp16 -> audio_embeds [audio_tokens, hidden] fp16."""
    if model.audio is None:
        raise ExportError("this model has no audio tower")
    example = (torch.zeros(1, model.cfg.audio.num_mel_bins, model.shape.audio_frames),)
    with fp32_weights(model.audio):
        traced = _trace(AudioWrapper(model), example)
    ml = _convert(
        traced,
        recipe=recipe,
        inputs=[_tensor("input_features", example[0].shape, np.float16)],
        outputs=[_tensor("audio_embeds", None, np.float16)],
    )
    return _finish("audio_encoder", _compress_linears(ml, recipe, fixed, "audio"), path)


EMBEDDING_SLICE = 1 << 24  # table entries rounded per step (64 MB of fp32): bounded memory at any vocabulary


def quantized_table(table: torch.Tensor, scheme: str, block_size: int):
    """The token embedding table rounded as coremltools rounds a ``gather`` weight (``quantize_like_coreml``:
    int4 blocks along the hidden axis, or int8 per row where the block does not divide it), a slice of rows
    at a time from the weights as stored: ``(codes int8 [vocab, hidden], scales fp16 [vocab, blocks], scheme)``."""
    vocab, hidden = table.shape
    if scheme == "int4" and hidden % block_size:
        scheme = "int8"
    blocks = hidden // block_size if scheme == "int4" else 1
    codes = np.empty((vocab, hidden), np.int8)
    scales = np.empty((vocab, blocks), np.float16)
    rows = max(1, EMBEDDING_SLICE // hidden)
    for i in range(0, vocab, rows):
        q, s = quantize_like_coreml(table[i : i + rows].float(), scheme, block_size)
        codes[i : i + rows], scales[i : i + rows] = q.numpy(), s.numpy()
    release_pages([table])
    return codes, scales, scheme


def _table_op(table: torch.Tensor, scheme: str, block_size: int, min_ios: int):
    """The MIL op that yields the fp16 table: a constexpr of the rounded integers, or an fp16 const."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.optimize._utils import QuantParams, ios18_quant_params_to_ios16

    name = "text_embed_tokens_weight_to_fp16"  # the names a traced table gets (the checkpoint key's)
    if scheme == "fp16":
        return mb.const(val=table.to(torch.float16).numpy(), name=name)
    codes, scales, used = quantized_table(table, scheme, block_size)
    nbits = 4 if used == "int4" else 8
    params = QuantParams(
        data=codes.view(types.np_int4_dtype) if nbits == 4 else codes, scale=scales, offset=None, nbits=np.uint8(nbits)
    )
    if min_ios >= 18:
        return mb.constexpr_blockwise_shift_scale(data=params.data, scale=params.scale, name=name + "_quantized")
    p16 = ios18_quant_params_to_ios16(params)
    return mb.constexpr_affine_dequantize(
        quantized_data=p16.quantized_data,
        zero_point=p16.zero_point,
        scale=p16.scale,
        axis=p16.axis,
        name=name + "_quantized",
    )


def convert_token_embedding(model: AutoGLM, recipe: CoreMLRecipe, path: Path, fixed: dict | None = None) -> PackageInfo:
    """token_ids [1, S] int32 (S = 1..max_context) -> embeds [1, S, hidden] fp16: a gather of the table.

    Written as a MIL program, not traced: the table is rounded in torch from the weights as stored, a slice
    of rows at a time (``quantized_table``), and goes into the package as the constexpr op's integers and
    scales. Traced, a 151552 x 4096 table became several fp32 and fp16 copies inside coremltools (killed
    at 22 GB on the real vocabulary); written this way it costs the integers once."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol, types

    table = model.text.embed_tokens.weight.detach()
    opset = ct.target.iOS18 if recipe.min_ios >= 18 else ct.target.iOS17

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, get_new_symbol()), dtype=types.int32)], opset_version=opset)
    def prog(token_ids):
        op = _table_op(table, recipe.embedding_scheme, recipe.block_size, recipe.min_ios)
        return mb.gather(x=op, indices=token_ids, axis=0, name="embeds")

    seq = ct.RangeDim(lower_bound=1, upper_bound=model.shape.max_context, default=1, symbol="seq")
    with warnings.catch_warnings(), _quiet_coremltools():
        warnings.simplefilter("ignore")
        ml = ct.convert(
            prog,
            inputs=[_tensor("token_ids", (1, seq), np.int32)],
            outputs=[_tensor("embeds", None, np.float16)],
            minimum_deployment_target=opset,
            compute_precision=ct.precision.FLOAT16,
            convert_to="mlprogram",
            compute_units=ct.ComputeUnit.CPU_ONLY,
        )
    return _finish("token_embedding", ml, path)


# --------------------------------------------------------------------------- text decoder


@dataclass(frozen=True)
class DecoderChunk:
    """Decoder layers ``start..stop-1`` in one package; ``head``: it ends with the final norm and lm_head."""

    start: int
    stop: int
    head: bool

    @property
    def output(self) -> str:
        return "logits" if self.head else "hidden_states"


def plan_chunks(model: AutoGLM, max_params: int | None) -> list[DecoderChunk]:
    """The decoder's packages: one when it holds at most ``max_params`` parameters (or ``max_params`` is
    None); else consecutive runs of layers of at most ``max_params`` each (at least one layer), then the
    final norm and lm_head in a package of their own (at 9B the 151552 x 4096 head is 3 layers' worth).

    Why: coremltools holds a package's weights several times over while it converts (fp32 traced
    constants, the fp16 program, the compressed copy), so conversion memory follows the largest package,
    and an iPhone loads and compiles each package on its own."""
    text = model.text
    n = len(text.layers)
    head = count(text.norm) + count(text.lm_head)
    per_layer = [count(layer) for layer in text.layers]
    if max_params is None or sum(per_layer) + head <= max_params:
        return [DecoderChunk(0, n, True)]
    chunks, start, size = [], 0, 0
    for i, p in enumerate(per_layer):
        if i > start and size + p > max_params:
            chunks.append(DecoderChunk(start, i, False))
            start, size = i, 0
        size += p
    return chunks + [DecoderChunk(start, n, False), DecoderChunk(n, n, True)]


def chunk_file(chunk: DecoderChunk, chunks: list[DecoderChunk]) -> str:
    if len(chunks) == 1:
        return PACKAGES["text_decoder"]
    return f"TextDecoder-{chunks.index(chunk) + 1:02d}of{len(chunks):02d}.mlpackage"


class _DecoderBase(nn.Module):
    """Layers ``chunk.start..chunk.stop-1`` of the GLM-4.1V decoder (then its norm and lm_head when the
    chunk has the head) with a Core-ML-friendly attention; every weight is the model's own.

    Rotary: fp16-safe tables ``cos/sin [max_context, rotary_dim/2]`` computed in fp32, indexed by
    each plane's position id and mixed with the M-RoPE plane selector (exact: 0/1 weights).
    """

    def __init__(self, model: AutoGLM, chunk: DecoderChunk | None = None):
        super().__init__()
        text = model.text
        self.text = text  # the whole tower, so the program's constants keep the model's names (text_layers_<i>_...)
        self.chunk = chunk or DecoderChunk(0, len(text.layers), True)
        self.layers = list(text.layers[self.chunk.start : self.chunk.stop])  # a plain list: not registered twice
        self.cfg = text.cfg
        self.max_context = model.shape.max_context
        attn = text.layers[0].self_attn
        self.n_heads, self.n_kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.interleaved = attn.interleaved
        angles = torch.arange(self.max_context, dtype=torch.float64)[:, None] * text.inv_freq.double()[None, :]
        self.register_buffer("rope_cos_table", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin_table", angles.sin().float(), persistent=False)
        self.register_buffer("rope_plane", text.rope_selector.clone()[:, None, :], persistent=False)  # [3, 1, R/2]

    @property
    def cache_shape(self) -> tuple[int, ...]:
        return (len(self.layers), 1, self.n_kv_heads, self.max_context, self.head_dim)

    def parts(self) -> list[nn.Module]:
        """The modules this chunk computes with (the rest of ``text`` is never touched)."""
        return self.layers + ([self.text.norm, self.text.lm_head] if self.chunk.head else [])

    def tail(self, x):
        return self.text.head(x) if self.chunk.head else x

    def rotary(self, position_ids):
        pos = position_ids.long()
        cos = (F.embedding(pos, self.rope_cos_table) * self.rope_plane).sum(0)  # [S, R/2]
        sin = (F.embedding(pos, self.rope_sin_table) * self.rope_plane).sum(0)
        if self.interleaved:
            return cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
        return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)

    def qkv(self, attn, h, seq, cos, sin):
        q = attn.q_proj(h).view(1, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(1, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin, self.interleaved), apply_rotary(k, cos, sin, self.interleaved), v

    def attend(self, attn, q, keys, values, mask, seq):
        # coremltools 9.0 ignores enable_gqa: repeat K/V heads explicitly (query head h reads kv head h // groups).
        groups = self.n_heads // self.n_kv_heads
        if groups > 1:
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # scale=None: fused SDPA on iOS 18
        return attn.o_proj(out.transpose(1, 2).reshape(1, seq, self.n_heads * self.head_dim))


class StatefulDecoder(_DecoderBase):
    """iOS 18: the chunk's KV cache is Core ML state (``keyCache`` / ``valueCache``), written with slice updates."""

    def __init__(self, model: AutoGLM, chunk: DecoderChunk | None = None):
        super().__init__(model, chunk)
        self.register_buffer("keyCache", torch.zeros(self.cache_shape, dtype=torch.float16))
        self.register_buffer("valueCache", torch.zeros(self.cache_shape, dtype=torch.float16))

    def forward(self, inputs_embeds, position_ids, causal_mask):
        seq = inputs_embeds.shape[1]
        end = causal_mask.shape[-1]
        begin = end - seq
        cos, sin = self.rotary(position_ids)
        x = inputs_embeds
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self.qkv(attn, layer.input_layernorm(x), seq, cos, sin)
            self.keyCache[i : i + 1, :, :, begin:end, :] = k.unsqueeze(0).to(torch.float16)
            self.valueCache[i : i + 1, :, :, begin:end, :] = v.unsqueeze(0).to(torch.float16)
            keys = self.keyCache[i, :, :, :end, :].to(q.dtype)
            values = self.valueCache[i, :, :, :end, :].to(q.dtype)
            x = layer.residual_tail(x, self.attend(attn, q, keys, values, causal_mask, seq))
        return self.tail(x)


class ExplicitCacheDecoder(_DecoderBase):
    """iOS 17: the cache comes in as inputs; the new rows go out (the app writes them at end-S..end-1)."""

    def forward(self, inputs_embeds, position_ids, causal_mask, key_cache, value_cache):
        seq = inputs_embeds.shape[1]
        end = causal_mask.shape[-1]
        begin = end - seq
        cos, sin = self.rotary(position_ids)
        x = inputs_embeds
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            q, k, v = self.qkv(attn, layer.input_layernorm(x), seq, cos, sin)
            new_k.append(k.to(torch.float16))
            new_v.append(v.to(torch.float16))
            keys = torch.slice_scatter(key_cache[i, :, :, :end, :], new_k[-1], dim=2, start=begin, end=end).to(q.dtype)
            values = torch.slice_scatter(value_cache[i, :, :, :end, :], new_v[-1], dim=2, start=begin, end=end).to(
                q.dtype
            )
            x = layer.residual_tail(x, self.attend(attn, q, keys, values, causal_mask, seq))
        return self.tail(x), torch.stack(new_k), torch.stack(new_v)


class HeadDecoder(nn.Module):
    """The last package of a chained decoder: final norm and lm_head, no layers, no cache, no state."""

    def __init__(self, model: AutoGLM, chunk: DecoderChunk):
        super().__init__()
        self.text, self.chunk, self.layers = model.text, chunk, []

    parts = _DecoderBase.parts

    def forward(self, inputs_embeds):
        return self.text.head(inputs_embeds)


def _decoder_example(model: AutoGLM, seq: int, end: int):
    hidden = model.cfg.text.hidden_size
    return (
        torch.zeros(1, seq, hidden),
        torch.arange(seq, dtype=torch.int32).expand(3, seq).contiguous(),
        torch.from_numpy(causal_mask(end - seq, seq).astype(np.float32)),
    )


def _router_weights(mlmodel) -> set[str]:
    """Const names of the MoE routers' weights: the linears whose output (through casts) feeds a sigmoid.

    The router's ``F.linear(x.float(), weight.float())`` traces to an anonymous const, so it is
    found by structure, not by name. Kept fp16: an int4 router could flip expert choices.
    """
    names = set()
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.operations:
            if op.op_type != "linear" or op.weight.op is None or op.weight.op.op_type != "const":
                continue
            frontier, seen = list(op.outputs[0].child_ops), 0
            while frontier and seen < 8:
                child = frontier.pop()
                seen += 1
                if child.op_type == "sigmoid":
                    names.add(op.weight.op.name)
                elif child.op_type == "cast":
                    frontier.extend(child.outputs[0].child_ops)
    return names


def _decoder_inputs(model: AutoGLM, seq, end_lo: int) -> list:
    ct = _ct()
    hidden = model.cfg.text.hidden_size
    end = ct.RangeDim(lower_bound=end_lo, upper_bound=model.shape.max_context, default=end_lo, symbol="end")
    return [
        _tensor("inputs_embeds", (1, seq, hidden), np.float16),
        _tensor("position_ids", (3, seq), np.int32),
        _tensor("causal_mask", (1, 1, seq, end), np.float16),
    ]


def _compress_decoder(ml, recipe: CoreMLRecipe, wrapper: _DecoderBase, fixed: dict | None = None):
    routers = _router_weights(ml)
    expected = sum(isinstance(m, TopKRouter) for part in wrapper.parts() for m in part.modules())
    if len(routers) != expected:
        raise ExportError(f"found {len(routers)} MoE router weights in the converted decoder, expected {expected}")
    c = wrapper.chunk
    prefixes = tuple(f"text.layers.{i}." for i in range(c.start, c.stop)) + (("text.lm_head",) if c.head else ())
    return _compress_linears(ml, recipe, fixed, prefixes, skip=routers)


def weight_bytes(path: str | Path) -> int:
    """Bytes of a saved package's weight file (its compressed weights)."""
    weights = Path(path) / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return weights.stat().st_size if weights.exists() else 0


def _stateful_package(
    model: AutoGLM, chunk: DecoderChunk, recipe, path: Path, prefill_chunk: int, workdir: Path, fixed
):
    """iOS 18: one chunk as a multifunction package, ``prefill`` + ``decode`` over the chunk's state."""
    ct = _ct()
    ctx = model.shape.max_context
    head_only = chunk.start == chunk.stop
    wrapper = HeadDecoder(model, chunk) if head_only else StatefulDecoder(model, chunk)
    states = (
        []
        if head_only
        else [ct.StateType(wrapped_type=_tensor(None, wrapper.cache_shape, np.float16), name=n) for n in STATE_NAMES]
    )
    parts = {}
    for fname, seq in (("prefill", prefill_chunk), ("decode", 1)):
        example = _decoder_example(model, seq, min(ctx, seq + 2))
        inputs = _decoder_inputs(model, seq, seq)
        if head_only:
            example, inputs = example[:1], inputs[:1]
        with fp32_weights(*wrapper.parts()):  # the traced module keeps the fp32 copies until it is dropped below
            traced = _trace(wrapper, example)
        ml = _convert(
            traced, recipe=recipe, inputs=inputs, outputs=[_tensor(chunk.output, None, np.float16)], states=states
        )
        del traced
        ml = _compress_decoder(ml, recipe, wrapper, fixed)
        parts[fname] = workdir / f"{path.stem}-{fname}.mlpackage"
        ml.save(str(parts[fname]))
        discard(ml)
        del ml
    desc = ct.utils.MultiFunctionDescriptor()
    for fname, part in parts.items():
        desc.add_function(str(part), src_function_name="main", target_function_name=fname)
    desc.default_function_name = "decode"
    _save_multifunction(desc, path)
    separate = {f: package_bytes(part) for f, part in parts.items()}
    for part in parts.values():
        shutil.rmtree(part, ignore_errors=True)
    return (None if head_only else wrapper.cache_shape), {"separate_function_bytes": separate}


def _explicit_package(model: AutoGLM, chunk: DecoderChunk, recipe, path: Path, prefill_chunk: int, fixed):
    """iOS 17: one chunk as one function ``main`` with the chunk's cache as inputs and its new rows as outputs."""
    ct = _ct()
    ctx = model.shape.max_context
    seq = ct.RangeDim(lower_bound=1, upper_bound=prefill_chunk, default=1, symbol="seq")
    n = min(2, prefill_chunk)
    example = _decoder_example(model, n, min(ctx, n + 2))
    if chunk.start == chunk.stop:
        wrapper = HeadDecoder(model, chunk)
        example, inputs, outputs = (
            example[:1],
            _decoder_inputs(model, seq, 1)[:1],
            [_tensor("logits", None, np.float16)],
        )
    else:
        wrapper = ExplicitCacheDecoder(model, chunk)
        example += (torch.zeros(wrapper.cache_shape, dtype=torch.float16),) * 2
        inputs = _decoder_inputs(model, seq, 1) + [
            _tensor("key_cache", wrapper.cache_shape, np.float16),
            _tensor("value_cache", wrapper.cache_shape, np.float16),
        ]
        outputs = [_tensor(n_, None, np.float16) for n_ in (chunk.output, "key_update", "value_update")]
    with fp32_weights(*wrapper.parts()):
        traced = _trace(wrapper, example)
    ml = _convert(traced, recipe=recipe, inputs=inputs, outputs=outputs)
    del traced
    ml = _compress_decoder(ml, recipe, wrapper, fixed)
    ml.save(str(path))
    discard(ml)
    return (None if chunk.start == chunk.stop else wrapper.cache_shape), {}


def convert_text_decoder(
    model: AutoGLM,
    recipe: CoreMLRecipe,
    out_dir: Path,
    prefill_chunk: int,
    workdir: Path,
    fixed: dict | None = None,
    max_params: int | None = None,
    progress=None,
) -> PackageInfo:
    """iOS 18: multifunction ``prefill`` (``prefill_chunk`` tokens) + ``decode`` (1 token) over one state.
    iOS 17: one function ``main`` (1..prefill_chunk tokens) with the cache as explicit inputs/outputs.

    The decoder is one package, or a chain of packages of at most ``max_params`` parameters each
    (``plan_chunks``), written into ``out_dir``; each is converted from fp32 copies of its own weights
    only (``fp32_weights``), so coremltools never holds more than one package's worth."""
    ctx = model.shape.max_context
    if not 1 <= prefill_chunk <= ctx:
        raise ExportError(f"--prefill-chunk {prefill_chunk} must be between 1 and the context length {ctx}")
    workdir, out_dir = Path(workdir), Path(out_dir)
    chunks = plan_chunks(model, max_params)
    described = []
    for chunk in chunks:
        path = out_dir / chunk_file(chunk, chunks)
        if recipe.min_ios >= 18:
            cache_shape, extra = _stateful_package(model, chunk, recipe, path, prefill_chunk, workdir, fixed)
        else:
            cache_shape, extra = _explicit_package(model, chunk, recipe, path, prefill_chunk, fixed)
        gc.collect()  # the package's MIL programs, unreferenced now (``discard``): 2.1 GB at 2 real-width layers
        d = describe_package(path)
        described.append(
            {
                "file": path.name,
                "layers": [chunk.start, chunk.stop],
                "head": chunk.head,
                "input": "inputs_embeds",
                "output": chunk.output,
                "cache_shape": None if cache_shape is None else list(cache_shape),
                "functions": d["functions"],
                "ops": op_counts(path),
                "bytes": package_bytes(path),
                "weight_bytes": weight_bytes(path),
                **extra,
            }
        )
        if progress is not None:
            layers = f"layers {chunk.start}..{chunk.stop - 1}" if chunk.stop > chunk.start else ""
            progress(f"{path.name}: {' + '.join(filter(None, [layers, 'head' if chunk.head else '']))}")
    first = described[0]
    cache_shape = [len(model.text.layers), *first["cache_shape"][1:]]
    extra = {
        "prefill_chunk": prefill_chunk,
        "max_context": ctx,
        "mask_value": "-inf",
        "rotary": "position_ids index fp16 cos/sin tables inside the graph",
        "cache_shape": cache_shape,
        "chunks": described,
        "weight_bytes": sum(c["weight_bytes"] for c in described),
        "specification_version": describe_package(out_dir / first["file"])["specification_version"],
    }
    if recipe.min_ios >= 18:
        extra.update({"kv_cache": "state", "state_names": list(STATE_NAMES)})
    else:
        extra.update(
            {
                "kv_cache": "inputs_outputs",
                "cache_inputs": ["key_cache", "value_cache"],
                "cache_outputs": ["key_update", "value_update"],
            }
        )
    if len(chunks) == 1 and "separate_function_bytes" in first:
        extra["separate_function_bytes"] = first["separate_function_bytes"]
    return PackageInfo(
        "text_decoder",
        first["file"],
        first["functions"],
        describe_package(out_dir / first["file"])["default_function"],
        first["ops"],
        sum(c["bytes"] for c in described),
        extra,
    )


CONVERTERS = {
    "vision_encoder": convert_vision_encoder,
    "audio_encoder": convert_audio_encoder,
    "token_embedding": convert_token_embedding,
}
