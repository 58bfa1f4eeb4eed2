"""MIL op implementations in numpy: one small function per op, registered in ``OPS``.

Every function takes the op's MIL inputs as keyword arguments (numpy arrays, numpy scalars,
Python strings, or tuples of arrays for variadic inputs such as ``concat(values=...)``) and
returns one array, or a tuple of arrays for ops with several outputs (``split``, ``topk``).
Optional MIL inputs that the program leaves out arrive as their MIL default.

Precision: the interpreter hands every arithmetic op its floating inputs as float32 (fp16 values
upcast exactly) and rounds each output to the dtype the program declares (see interpreter.py).
The functions here therefore compute in float32 and never round on their own. Data-movement ops
(registered with ``arith=False``) see the declared dtype unchanged.

State ops receive the caller's state array itself: ``read_state`` returns a copy, and
``coreml_update_state`` / ``write_state`` write into it in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

OPS: dict[str, Callable] = {}
ARITH_FREE: set[str] = set()  # ops that only move data: the interpreter skips the float32 upcast

DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}


def register(*names: str, arith: bool = True):
    def deco(fn):
        for n in names:
            OPS[n] = fn
            if not arith:
                ARITH_FREE.add(n)
        return fn

    return deco


# ---------------------------------------------------------------- argument helpers
def _i(v) -> int:
    return int(np.asarray(v).reshape(()))


def _ints(v) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _b(v) -> bool:
    return bool(np.asarray(v).reshape(()))


def _bools(v, n: int) -> list[bool]:
    return [False] * n if v is None else [bool(x) for x in np.asarray(v).reshape(-1)]


def _s(v) -> str:
    return str(np.asarray(v).reshape(())) if not isinstance(v, str) else v


def _f(v) -> float:
    return float(np.asarray(v).reshape(()))


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x):
    """erf to ~1.2e-7 absolute (Numerical Recipes erfc Chebyshev fit); numpy has no erf."""
    x = np.asarray(x, dtype=np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (
        -z * z
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t
                    * (
                        -0.18628806
                        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))
                    )
                )
            )
        )
    )
    r = 1.0 - t * np.exp(poly)
    return np.where(x >= 0, r, -r).astype(np.float32)


# ---------------------------------------------------------------- const / decompression
@register("identity", arith=False)
def identity(x):
    return np.array(x, copy=True)


@register("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data, scale, offset=None):
    """output = scale * (data - offset), scale/offset repeated over blocks of data.

    Each blocked axis of ``data`` is viewed as (blocks, block) and the parameters broadcast over it,
    so no repeated copy of the scales the size of the weight is made."""
    data = np.asarray(data)
    scale = np.asarray(scale, dtype=np.float32)
    split, param_shape = [], []
    for d, s in zip(data.shape, scale.shape):
        split += [s, d // s] if s not in (d, 1) else [d]
        param_shape += [s, 1] if s not in (d, 1) else [s]
    out = data.reshape(split).astype(np.float32)
    if offset is not None:
        out -= np.asarray(offset).astype(np.float32).reshape(param_shape)
    out *= scale.reshape(param_shape)
    return out.reshape(data.shape)


@register("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    """output = scale * (quantized_data - zero_point), scale/zero_point scalars or vectors along axis."""
    q = np.asarray(quantized_data).astype(np.float32)
    ax = _axis(_i(axis), q.ndim)

    def along(p):
        p = np.asarray(p).astype(np.float32)
        if p.ndim == 0 or p.size == 1:
            return p.reshape(())
        shape = [1] * q.ndim
        shape[ax] = p.size
        return p.reshape(shape)

    return (q - along(zero_point)) * along(scale)


def _unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Elements packed LSB-first into bytes, as Core ML stores sub-byte indices."""
    bits = np.unpackbits(np.asarray(packed).astype(np.uint8).reshape(-1), bitorder="little")
    bits = bits[: count * nbits].reshape(count, nbits).astype(np.uint32)
    return (bits << np.arange(nbits, dtype=np.uint32)).sum(axis=1)


_BYTES = np.arange(256, dtype=np.uint8)
_NIBBLES = {
    False: np.stack([_BYTES & 0x0F, _BYTES >> 4], axis=1).astype(np.uint8),
    True: ((np.stack([_BYTES & 0x0F, _BYTES >> 4], axis=1).astype(np.int16) ^ 8) - 8).astype(np.int8),
}


def _unpack_sub_byte(packed: np.ndarray, nbits: int, count: int, signed: bool) -> np.ndarray:
    if nbits == 4:  # the int4 weights: two per byte, low nibble first; one table lookup per byte
        return _NIBBLES[signed][packed].reshape(-1)[:count]
    out = _unpack_bits(packed, nbits, count)
    if signed:
        half = 1 << (nbits - 1)
        return ((out.astype(np.int16) ^ half) - half).astype(np.int8)
    return out.astype(np.uint8)


@register("constexpr_lut_to_dense")
def constexpr_lut_to_dense(indices, lut, shape=None, vector_axis=None):
    """Palettized weights. iOS16 form: packed uint8 ``indices``, flat ``lut``, ``shape``.
    iOS18 form: ``indices`` already shaped like the output, ``lut`` [*blocks, 2^nbits, vector]."""
    lut = np.asarray(lut)
    if shape is not None:  # iOS16
        shape = _ints(shape)
        nbits = int(round(math.log2(lut.size)))
        idx = _unpack_bits(indices, nbits, int(np.prod(shape)))
        return lut.reshape(-1)[idx].reshape(shape)
    idx = np.asarray(indices).astype(np.int64)
    k = idx.ndim
    vec = lut.shape[-1]
    if vec > 1:
        va = _axis(_i(vector_axis), k)
        idx = np.swapaxes(idx, -1, va)
        lut = np.swapaxes(lut, -3, va) if va != k - 1 else lut
    blocks = lut.shape[:k]
    # block id along each axis of idx (position // block size), as open grids that broadcast
    grids = np.ix_(*[np.arange(d) // (d // b) for d, b in zip(idx.shape, blocks)])
    vals = lut[tuple(grids) + (idx,)]  # idx.shape + (vec,)
    if vec > 1:
        vals = vals.reshape(idx.shape[:-1] + (idx.shape[-1] * vec,))
        return np.swapaxes(vals, -1, va)
    return vals[..., 0]


@register("constexpr_cast")
def constexpr_cast(source_val, output_dtype):
    return np.asarray(source_val).astype(DTYPES[_s(output_dtype)])


@register("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(nonzero_data, mask, shape=None):
    data = np.asarray(nonzero_data)
    if shape is not None:  # iOS16: packed uint8 bitmask + shape
        shape = _ints(shape)
        m = np.unpackbits(np.asarray(mask).astype(np.uint8), bitorder="little")[: int(np.prod(shape))]
        out = np.zeros(int(np.prod(shape)), dtype=data.dtype)
        out[m != 0] = data
        return out.reshape(shape)
    m = np.asarray(mask)
    out = np.zeros(m.shape, dtype=data.dtype)
    out[m != 0] = data
    return out


# ---------------------------------------------------------------- state
@register("read_state", arith=False)
def read_state(input):
    return np.array(input, copy=True)


@register("coreml_update_state", arith=False)
def coreml_update_state(state, value):
    np.copyto(state, np.asarray(value).astype(state.dtype, copy=False))
    return np.array(value, copy=True)


@register("write_state", arith=False)
def write_state(input, data):
    np.copyto(input, np.asarray(data).astype(input.dtype, copy=False))
    return ()


# ---------------------------------------------------------------- elementwise unary
_UNARY = {
    "abs": np.abs,
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "ceil": np.ceil,
    "cos": np.cos,
    "cosh": np.cosh,
    "exp": np.exp,
    "exp2": np.exp2,
    "floor": np.floor,
    "round": np.round,
    "sign": np.sign,
    "sin": np.sin,
    "sinh": np.sinh,
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
    "logical_not": np.logical_not,
    "erf": _erf,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(0, x),
    "softsign": lambda x: x / (1 + np.abs(x)),
}


def _make_unary(fn):
    def unary(x):
        return fn(np.asarray(x))

    return unary


for _name, _fn in _UNARY.items():
    register(_name)(_make_unary(_fn))


@register("rsqrt")
def rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(x + _f(epsilon))


@register("inverse")
def inverse(x, epsilon=1e-4):
    return 1.0 / (x + _f(epsilon))


@register("log")
def log(x, epsilon=1e-45):
    return np.log(x + _f(epsilon))


@register("clip")
def clip(x, alpha, beta):
    return np.minimum(np.maximum(x, alpha), beta)


@register("threshold")
def threshold(x, alpha):
    return np.maximum(x, alpha)


@register("cast", arith=False)
def cast(x, dtype):
    x = np.asarray(x)
    target = DTYPES[_s(dtype)]
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)
    return x.astype(target)


# ---------------------------------------------------------------- activations
@register("gelu")
def gelu(x, mode="EXACT"):
    mode = _s(mode)
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise ValueError(f"gelu mode {mode!r}")


@register("softmax")
def softmax(x, axis=-1):
    ax = _i(axis)
    e = np.exp(x - np.max(x, axis=ax, keepdims=True))
    return e / np.sum(e, axis=ax, keepdims=True)


@register("leaky_relu")
def leaky_relu(x, alpha=0.01):
    return np.where(x >= 0, x, x * _f(alpha))


@register("elu")
def elu(x, alpha=1.0):
    return np.where(x > 0, x, _f(alpha) * (np.exp(x) - 1))


@register("prelu")
def prelu(x, alpha):
    a = np.asarray(alpha).reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, x * a)


@register("clamped_relu")
def clamped_relu(x, alpha, beta):
    return np.minimum(np.where(x >= 0, x, x * _f(alpha)), _f(beta))


@register("linear_activation")
def linear_activation(x, alpha, beta=0.0):
    return _f(alpha) * x + _f(beta)


@register("scaled_tanh")
def scaled_tanh(x, alpha=1.0, beta=1.0):
    return _f(alpha) * np.tanh(_f(beta) * x)


@register("sigmoid_hard")
def sigmoid_hard(x, alpha=0.2, beta=0.5):
    return np.clip(_f(alpha) * x + _f(beta), 0.0, 1.0)


@register("softplus_parametric")
def softplus_parametric(x, alpha, beta):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return np.asarray(alpha).reshape(shape) * np.logaddexp(0, np.asarray(beta).reshape(shape) * x)


@register("thresholded_relu")
def thresholded_relu(x, alpha=1.0):
    return np.where(x > _f(alpha), x, 0)


# ---------------------------------------------------------------- elementwise binary
def _floor_div(x, y):
    return np.floor_divide(x, y)


_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.true_divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "floor_div": _floor_div,
    "mod": np.mod,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _make_binary(fn):
    def binary(x, y):
        return fn(np.asarray(x), np.asarray(y))

    return binary


for _name, _fn in _BINARY.items():
    register(_name)(_make_binary(_fn))


@register("select")
def select(cond, a, b):
    return np.where(np.asarray(cond).astype(bool), a, b)


# ---------------------------------------------------------------- reductions
def _reduce(fn):
    def reduce(x, axes=None, keep_dims=False):
        ax = None if axes is None else tuple(_ints(axes))
        return fn(np.asarray(x), axis=ax, keepdims=_b(keep_dims))

    return reduce


_REDUCE = {
    "reduce_mean": np.mean,
    "reduce_sum": np.sum,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l1_norm": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "reduce_l2_norm": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "reduce_log_sum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "reduce_log_sum_exp": lambda x, axis, keepdims: _logsumexp(x, axis, keepdims),
}


def _logsumexp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


for _name, _fn in _REDUCE.items():
    register(_name)(_reduce(_fn))


def _arg(fn):
    def arg(x, axis=-1, keep_dims=False, output_dtype="int32"):
        ax = _i(axis)
        out = fn(np.asarray(x), axis=ax)
        if _b(keep_dims):
            out = np.expand_dims(out, ax)
        return out.astype(DTYPES[_s(output_dtype)])

    return arg


register("reduce_argmax")(_arg(np.argmax))
register("reduce_argmin")(_arg(np.argmin))


# ---------------------------------------------------------------- linear algebra
@register("linear")
def linear(x, weight, bias=None):
    out = np.matmul(x, np.swapaxes(weight, -1, -2))
    return out if bias is None else out + bias


@register("matmul")
def matmul(x, y, transpose_x=False, transpose_y=False):
    x, y = np.asarray(x), np.asarray(y)
    if _b(transpose_x) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if _b(transpose_y) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@register("einsum")
def einsum(values, equation):
    return np.einsum(_s(equation), *values)


@register("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None):
    """softmax(Q K^T / sqrt(E) + mask) V; a bool mask keeps the True entries."""
    scores = np.matmul(query, np.swapaxes(key, -1, -2)) / math.sqrt(query.shape[-1])
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        scores = np.where(m, scores, -np.inf) if m.dtype == np.bool_ else scores + m
    return np.matmul(softmax(scores, axis=-1), value)


def _same_pads(d_in: list[int], kernel: list[int], strides: list[int], dil: list[int], lower: bool):
    pads = []
    for d, k, s, di in zip(d_in, kernel, strides, dil):
        dk = (k - 1) * di + 1
        total = max((math.ceil(d / s) - 1) * s + dk - d, 0)
        small, big = total // 2, total - total // 2
        pads += [big, small] if lower else [small, big]
    return pads


@register("conv")
def conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    """N-D grouped convolution: x [N, C_in, *d], weight [C_out, C_in/groups, *k]."""
    x, w = np.asarray(x), np.asarray(weight)
    nd = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = [1] * nd if strides is None else _ints(strides)
    dil = [1] * nd if dilations is None else _ints(dilations)
    pad_type = _s(pad_type)
    if pad_type == "valid":
        pads = [0] * (2 * nd)
    elif pad_type == "custom":
        pads = [0] * (2 * nd) if pad is None else _ints(pad)
    elif pad_type in ("same", "same_lower"):
        pads = _same_pads(list(x.shape[2:]), kernel, strides, dil, pad_type == "same_lower")
    else:
        raise ValueError(f"conv pad_type {pad_type!r}")
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1]) for i in range(nd)])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))  # [N, C, *o_full, *span]
    sel = (
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in strides)
        + tuple(slice(None, None, d) for d in dil)
    )
    win = win[sel]  # [N, C, *o, *k]
    g = _i(groups)
    n, c = x.shape[:2]
    out_sp = win.shape[2 : 2 + nd]
    win = win.reshape((n, g, c // g) + out_sp + tuple(kernel))
    wg = w.reshape((g, w.shape[0] // g, w.shape[1]) + tuple(kernel))
    o, k = "xyz"[:nd], "XYZ"[:nd]  # output / kernel spatial letters (n, g, c, m are taken)
    out = np.einsum(f"ngc{o}{k},gmc{k}->ngm{o}", win, wg, optimize=True)
    out = out.reshape((n, w.shape[0]) + out_sp)
    if bias is not None:
        out = out + np.asarray(bias).reshape((1, -1) + (1,) * nd)
    return out


# ---------------------------------------------------------------- normalization
@register("layer_norm")
def layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    x = np.asarray(x)
    ax = tuple(range(x.ndim)) if axes is None else tuple(sorted(_axis(a, x.ndim) for a in _ints(axes)))
    mean = np.mean(x, axis=ax, keepdims=True)
    var = np.mean(np.square(x - mean), axis=ax, keepdims=True)
    out = (x - mean) / np.sqrt(var + _f(epsilon))
    shape = [x.shape[i] if i in ax else 1 for i in range(x.ndim)]
    if gamma is not None:
        out = out * np.asarray(gamma).reshape(shape)
    if beta is not None:
        out = out + np.asarray(beta).reshape(shape)
    return out


@register("batch_norm")
def batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + _f(epsilon))
    if gamma is not None:
        out = out * gamma.reshape(shape)
    if beta is not None:
        out = out + beta.reshape(shape)
    return out


@register("instance_norm")
def instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    ax = tuple(range(2, x.ndim))
    mean = x.mean(axis=ax, keepdims=True)
    out = (x - mean) / np.sqrt(np.square(x - mean).mean(axis=ax, keepdims=True) + _f(epsilon))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if gamma is not None:
        out = out * gamma.reshape(shape)
    if beta is not None:
        out = out + beta.reshape(shape)
    return out


@register("l2_norm")
def l2_norm(x, epsilon=1e-6):
    ax = tuple(range(x.ndim - 3, x.ndim))
    return x / np.sqrt(np.sum(x * x, axis=ax, keepdims=True) + _f(epsilon))


# ---------------------------------------------------------------- shape / data movement
@register("shape", arith=False)
def shape(x):
    return np.array(np.shape(x), dtype=np.int32)


@register("reshape", arith=False)
def reshape(x, shape):
    x = np.asarray(x)
    target = _ints(shape)
    # iOS17 rule: each 0 copies x's dim aligned from the right, or 1 when out of range
    for i, s in enumerate(target):
        if s == 0:
            j = x.ndim - (len(target) - i)
            target[i] = x.shape[j] if j >= 0 else 1
    return x.reshape(target)


@register("transpose", arith=False)
def transpose(x, perm):
    return np.transpose(x, _ints(perm))


@register("expand_dims", arith=False)
def expand_dims(x, axes):
    x = np.asarray(x)
    out_rank = x.ndim + len(_ints(axes))
    return np.expand_dims(x, tuple(_axis(a, out_rank) for a in _ints(axes)))


@register("squeeze", arith=False)
def squeeze(x, axes=None):
    x = np.asarray(x)
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(_ints(axes)))


@register("flatten2d", arith=False)
def flatten2d(x, axis=1):
    ax = _axis(_i(axis), x.ndim)
    return x.reshape(int(np.prod(x.shape[:ax], dtype=np.int64)), -1)


@register("tile", arith=False)
def tile(x, reps):
    return np.tile(x, _ints(reps))


@register("concat", arith=False)
def concat(values, axis, interleave=False):
    vals = [np.asarray(v).reshape(1) if np.ndim(v) == 0 else np.asarray(v) for v in values]  # scalars act as [1]
    ax = _axis(_i(axis), vals[0].ndim)
    if _b(interleave):
        st = np.stack(vals, axis=ax + 1)
        return st.reshape(vals[0].shape[:ax] + (-1,) + vals[0].shape[ax + 1 :])
    return np.concatenate(vals, axis=ax)


@register("stack", arith=False)
def stack(values, axis):
    return np.stack([np.asarray(v) for v in values], axis=_i(axis))


@register("split", arith=False)
def split(x, num_splits=None, split_sizes=None, axis=0):
    x = np.asarray(x)
    ax = _axis(_i(axis), x.ndim)
    if split_sizes is not None:
        bounds = np.cumsum(_ints(split_sizes))[:-1]
        return tuple(np.split(x, bounds, axis=ax))
    return tuple(np.split(x, _i(num_splits), axis=ax))


def _index(x_shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    rank = len(x_shape)
    begin, end = _ints(begin), _ints(end)
    stride = [1] * rank if stride is None else _ints(stride)
    bm, em, sm = _bools(begin_mask, rank), _bools(end_mask, rank), _bools(squeeze_mask, rank)
    idx = []
    for i in range(rank):
        if sm[i]:
            idx.append(begin[i] + x_shape[i] if begin[i] < 0 else begin[i])
        else:
            idx.append(slice(None if bm[i] else begin[i], None if em[i] else end[i], stride[i]))
    return tuple(idx)


@register("slice_by_index", arith=False)
def slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    x = np.asarray(x)
    return np.array(x[_index(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)])


@register("slice_by_size", arith=False)
def slice_by_size(x, begin, size):
    x = np.asarray(x)
    idx = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(_ints(begin), _ints(size)))
    return np.array(x[idx])


@register("slice_update", arith=False)
def slice_update(x, update, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    out = np.array(x, copy=True)
    idx = _index(out.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    target = out[idx]
    out[idx] = np.asarray(update).astype(out.dtype, copy=False).reshape(np.shape(target))
    return out


@register("reverse", arith=False)
def reverse(x, axes=None):
    return np.flip(x, axis=None if axes is None else tuple(_ints(axes))).copy()


@register("gather", arith=False)
def gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    x, ind = np.asarray(x), np.asarray(indices).astype(np.int64)
    ax, bd = _axis(_i(axis), x.ndim), _i(batch_dims)
    if bd == 0:
        return np.take(x, ind, axis=ax)
    out = [np.take(x[b], ind[b], axis=ax - bd) for b in np.ndindex(*x.shape[:bd])]
    return np.stack(out).reshape(x.shape[:bd] + out[0].shape)


@register("gather_along_axis", arith=False)
def gather_along_axis(x, indices, axis=0, validate_indices=False):
    x = np.asarray(x)
    ind = np.asarray(indices).astype(np.int64)
    ax = _axis(_i(axis), x.ndim)
    ind = np.where(ind < 0, ind + x.shape[ax], ind)
    return np.take_along_axis(x, ind, axis=ax)


@register("gather_nd", arith=False)
def gather_nd(x, indices, batch_dims=0, validate_indices=False):
    x, ind = np.asarray(x), np.asarray(indices).astype(np.int64)
    bd = _i(batch_dims)

    def one(xb, ib):
        return xb[tuple(np.moveaxis(ib, -1, 0))]

    if bd == 0:
        return one(x, ind)
    out = [one(x[b], ind[b]) for b in np.ndindex(*x.shape[:bd])]
    return np.stack(out).reshape(x.shape[:bd] + out[0].shape)


_SCATTER = {
    "update": None,
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.true_divide,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter_into(out, idx, updates, mode):
    mode = _s(mode)
    if mode == "update":
        out[idx] = updates
    else:
        _SCATTER[mode].at(out, idx, updates)
    return out


@register("scatter")
def scatter(data, indices, updates, axis=0, mode="add", validate_indices=False):
    out = np.array(data, copy=True)
    ax = _axis(_i(axis), out.ndim)
    moved = np.moveaxis(out, ax, 0)  # a view: writes land in out
    upd = np.moveaxis(np.asarray(updates), ax, 0)
    _scatter_into(moved, np.asarray(indices).astype(np.int64), upd, mode)
    return out


@register("scatter_along_axis")
def scatter_along_axis(data, indices, updates, axis=0, mode="add", validate_indices=False):
    out = np.array(data, copy=True)
    ax = _axis(_i(axis), out.ndim)
    ind = np.asarray(indices).astype(np.int64)
    grids = list(np.ix_(*[np.arange(d) for d in ind.shape]))
    grids[ax] = ind
    return _scatter_into(out, tuple(np.broadcast_arrays(*grids)), updates, mode)


@register("scatter_nd")
def scatter_nd(data, indices, updates, mode="add", validate_indices=False):
    out = np.array(data, copy=True)
    ind = np.asarray(indices).astype(np.int64)
    return _scatter_into(out, tuple(np.moveaxis(ind, -1, 0)), updates, mode)


@register("fill", arith=False)
def fill(shape, value=0.0):
    return np.full(_ints(shape), value)


@register("fill_like", arith=False)
def fill_like(ref_tensor, value=0.0):
    return np.full(np.shape(ref_tensor), value)


@register("range_1d")
def range_1d(end, start, step):
    return np.arange(start, end, step)


@register("band_part")
def band_part(x, lower=-1, upper=-1):
    lo, up = _i(lower), _i(upper)
    m, n = x.shape[-2:]
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    keep = ((lo < 0) | (i - j <= lo)) & ((up < 0) | (j - i <= up))
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


@register("cumsum")
def cumsum(x, axis=0, exclusive=False, reverse=False):
    ax = _i(axis)
    x = np.asarray(x)
    if _b(reverse):
        x = np.flip(x, ax)
    out = np.cumsum(x, axis=ax)
    if _b(exclusive):
        out = out - x
    return np.flip(out, ax) if _b(reverse) else out


@register("topk")
def topk(x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32"):
    ax, kk = _i(axis), _i(k)
    x = np.asarray(x)
    order = np.argsort(x if _b(ascending) else -x, axis=ax, kind="stable")
    idx = np.take(order, np.arange(kk), axis=ax)
    vals = np.take_along_axis(x, idx, axis=ax)
    if not _b(return_indices):
        return vals
    return vals, idx.astype(DTYPES[_s(output_indices_dtype)])


@register("argsort")
def argsort(x, axis=-1, ascending=False):
    x = np.asarray(x)
    return np.argsort(x if _b(ascending) else -x, axis=_i(axis), kind="stable").astype(np.int32)


@register("one_hot")
def one_hot(indices, one_hot_vector_size, axis=-1, on_value=1, off_value=0):
    ind = np.asarray(indices).astype(np.int64)
    n = _i(one_hot_vector_size)
    hot = np.expand_dims(ind, -1) == np.arange(n)
    out = np.where(hot, on_value, off_value)
    return np.moveaxis(out, -1, _axis(_i(axis), out.ndim))


@register("pad")
def pad(x, pad, mode="constant", constant_val=0.0):
    p = _ints(pad)
    n = len(p) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    mode = _s(mode)
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=_f(constant_val))
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


@register("non_zero", arith=False)
def non_zero(x):
    return np.transpose(np.nonzero(x)).astype(np.int32)


@register("sliding_windows", arith=False)
def sliding_windows(x, axis, size, stride=1):
    x = np.asarray(x)
    ax = _axis(_i(axis), x.ndim)
    win = sliding_window_view(x, _i(size), axis=ax)  # [..., n_full, ..., size]
    win = np.moveaxis(win, -1, ax + 1)
    sel = [slice(None)] * win.ndim
    sel[ax] = slice(None, None, _i(stride))
    return np.array(win[tuple(sel)])


def _d2s(x, b, mode):
    n, c, h, w = x.shape
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:  # CRD
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@register("depth_to_space", arith=False)
def depth_to_space(x, block_size):
    return _d2s(np.asarray(x), _i(block_size), "DCR")


@register("pixel_shuffle", arith=False)
def pixel_shuffle(x, upscale_factor):
    return _d2s(np.asarray(x), _i(upscale_factor), "CRD")


@register("space_to_depth", arith=False)
def space_to_depth(x, block_size):
    b = _i(block_size)
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@register("pixel_unshuffle", arith=False)
def pixel_unshuffle(x, downscale_factor):
    b = _i(downscale_factor)
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@register("upsample_nearest_neighbor", arith=False)
def upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    sh, sw = _f(scale_factor_height), _f(scale_factor_width)
    h, w = x.shape[-2:]
    rows = np.floor(np.arange(int(h * sh)) / sh).astype(np.int64)
    cols = np.floor(np.arange(int(w * sw)) / sw).astype(np.int64)
    return x[..., rows, :][..., cols]
