"""Every MIL op of the numpy interpreter against a reference computed another way (torch, or an
independent numpy/loop formula), including fp16 behaviour. ``test_every_op_has_a_test`` keeps the
table honest: a newly registered op without a test fails it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoglm_runtime.mil import OPS, run_op

COVERED: set[str] = set()
rng = np.random.default_rng(0)


def r(*shape, lo=-2.0, hi=2.0, dtype=np.float32):
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def close(out, ref, atol=1e-5, rtol=1e-5):
    ref = ref.numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    out = np.asarray(out)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if ref.dtype == np.bool_ or np.issubdtype(ref.dtype, np.integer):
        np.testing.assert_array_equal(out, ref)
    else:
        np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), atol=atol, rtol=rtol)


def covers(*names):
    """Decorator: the MIL ops a test checks, registered at import so that the coverage test below
    does not depend on which tests ran before it."""
    COVERED.update(names)
    return lambda test: test


# ---------------------------------------------------------------- elementwise unary (vs torch)
X = r(3, 5)
POS = r(3, 5, lo=0.1, hi=3.0)
UNIT = r(3, 5, lo=-0.9, hi=0.9)
UNARY = [
    ("abs", X, torch.abs),
    ("acos", UNIT, torch.acos),
    ("asin", UNIT, torch.asin),
    ("atan", X, torch.atan),
    ("atanh", UNIT, torch.atanh),
    ("ceil", X, torch.ceil),
    ("cos", X, torch.cos),
    ("cosh", X, torch.cosh),
    ("exp", X, torch.exp),
    ("exp2", X, torch.exp2),
    ("floor", X, torch.floor),
    ("round", np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.7, -0.2], np.float32), torch.round),
    ("sign", np.array([-3.0, 0.0, 2.0], np.float32), torch.sign),
    ("sin", X, torch.sin),
    ("sinh", X, torch.sinh),
    ("sqrt", POS, torch.sqrt),
    ("square", X, torch.square),
    ("tan", UNIT, torch.tan),
    ("tanh", X, torch.tanh),
    ("erf", r(4, 50, lo=-4, hi=4), torch.erf),
    ("relu", X, torch.relu),
    ("relu6", X * 4, F.relu6),
    ("sigmoid", X, torch.sigmoid),
    ("silu", X, F.silu),
    ("softplus", X, F.softplus),
    ("softsign", X, F.softsign),
]


@covers(*(u[0] for u in UNARY))
@pytest.mark.parametrize("name,x,ref", UNARY, ids=[u[0] for u in UNARY])
def test_unary(name, x, ref):
    close(run_op(name, {"x": x}, np.float32), ref(t(x).double()).float(), atol=3e-7, rtol=2e-6)


@covers("logical_not")
def test_logical_not():
    b = rng.random((4, 3)) > 0.5
    close(run_op("logical_not", {"x": b}, np.bool_), torch.logical_not(t(b)))


@covers("rsqrt", "inverse", "log")
def test_rsqrt_inverse_log_with_epsilon():
    close(run_op("rsqrt", {"x": POS, "epsilon": np.float32(1e-3)}), torch.rsqrt(t(POS) + 1e-3), rtol=1e-6)
    close(run_op("inverse", {"x": POS, "epsilon": np.float32(1e-4)}), torch.reciprocal(t(POS) + 1e-4), rtol=1e-6)
    close(run_op("log", {"x": POS, "epsilon": np.float32(1e-6)}), torch.log(t(POS) + 1e-6), rtol=1e-6, atol=1e-7)
    close(run_op("rsqrt", {"x": POS}), torch.rsqrt(t(POS)), rtol=1e-6)  # default epsilon 1e-12


@covers("clip", "threshold")
def test_clip_threshold():
    close(run_op("clip", {"x": X, "alpha": np.float32(-0.5), "beta": np.float32(0.7)}), torch.clamp(t(X), -0.5, 0.7))
    close(run_op("threshold", {"x": X, "alpha": np.float32(0.3)}), torch.clamp(t(X), min=0.3))


@covers("cast")
def test_cast():
    x = np.array([-2.7, -0.5, 0.0, 1.9, 70000.0], np.float32)
    close(run_op("cast", {"x": x[:4], "dtype": "int32"}), t(x[:4]).to(torch.int32))  # truncation toward zero
    close(run_op("cast", {"x": x, "dtype": "fp16"}), t(x).half())  # 70000 -> inf, as fp16 does
    assert np.isinf(run_op("cast", {"x": x, "dtype": "fp16"})[-1])
    close(run_op("cast", {"x": np.array([0, 3, -1], np.int32), "dtype": "bool"}), torch.tensor([False, True, True]))
    close(run_op("cast", {"x": np.array([1, 300], np.int32), "dtype": "uint16"}), np.array([1, 300], np.uint16))


@covers("identity")
def test_identity():
    out = run_op("identity", {"x": X})
    close(out, t(X))
    assert out is not X


# ---------------------------------------------------------------- activations
@covers("gelu")
def test_gelu_all_modes():
    x = r(6, 40, lo=-5, hi=5)
    close(run_op("gelu", {"x": x}), F.gelu(t(x).double(), approximate="none").float(), atol=3e-7)
    close(run_op("gelu", {"x": x, "mode": "EXACT"}), F.gelu(t(x).double()).float(), atol=3e-7)
    close(run_op("gelu", {"x": x, "mode": "TANH_APPROXIMATION"}), F.gelu(t(x), approximate="tanh"), atol=1e-6)
    close(run_op("gelu", {"x": x, "mode": "SIGMOID_APPROXIMATION"}), t(x) * torch.sigmoid(1.702 * t(x)), atol=1e-6)


@covers("softmax")
def test_softmax():
    x = r(2, 3, 7, lo=-30, hi=30)
    close(run_op("softmax", {"x": x, "axis": np.int32(-1)}), torch.softmax(t(x), -1), atol=1e-7)
    close(run_op("softmax", {"x": x, "axis": np.int32(1)}), torch.softmax(t(x), 1), atol=1e-7)


@covers(
    "leaky_relu",
    "elu",
    "prelu",
    "clamped_relu",
    "linear_activation",
    "scaled_tanh",
    "sigmoid_hard",
    "softplus_parametric",
    "thresholded_relu",
)
def test_parametric_activations():
    x = r(2, 3, 4, 5)
    a = np.float32(0.1)
    close(run_op("leaky_relu", {"x": x, "alpha": a}), F.leaky_relu(t(x), 0.1))
    close(run_op("elu", {"x": x, "alpha": np.float32(0.7)}), F.elu(t(x), 0.7), atol=1e-6)
    w = r(3, lo=0.0, hi=0.5)
    close(run_op("prelu", {"x": x, "alpha": w}), F.prelu(t(x), t(w)))
    close(
        run_op("clamped_relu", {"x": x, "alpha": a, "beta": np.float32(1.0)}),
        torch.clamp(F.leaky_relu(t(x), 0.1), max=1.0),
    )
    close(run_op("linear_activation", {"x": x, "alpha": np.float32(2.0), "beta": np.float32(-1.0)}), 2 * t(x) - 1)
    close(
        run_op("scaled_tanh", {"x": x, "alpha": np.float32(1.5), "beta": np.float32(0.5)}),
        1.5 * torch.tanh(0.5 * t(x)),
        atol=1e-6,
    )
    close(
        run_op("sigmoid_hard", {"x": x * 3, "alpha": np.float32(1 / 6), "beta": np.float32(0.5)}),
        F.hardsigmoid(t(x * 3)),
        atol=1e-6,
    )
    al, be = r(3, lo=0.5, hi=2), r(3, lo=0.5, hi=2)
    ref = t(al)[None, :, None, None] * F.softplus(t(be)[None, :, None, None] * t(x))
    close(run_op("softplus_parametric", {"x": x, "alpha": al, "beta": be}), ref, atol=1e-6)
    close(run_op("thresholded_relu", {"x": x, "alpha": np.float32(0.5)}), F.threshold(t(x), 0.5, 0.0))


# ---------------------------------------------------------------- elementwise binary
A, B = r(2, 3, 4), r(3, 1)
BPOS = r(3, 1, lo=0.5, hi=2)
BINARY = [
    ("add", A, B, torch.add),
    ("sub", A, B, torch.sub),
    ("mul", A, B, torch.mul),
    ("real_div", A, BPOS, torch.div),
    ("pow", np.abs(A) + 0.1, B, torch.pow),
    ("maximum", A, B, torch.maximum),
    ("minimum", A, B, torch.minimum),
    ("floor_div", A * 5, BPOS, torch.floor_divide),
    ("mod", A * 5, BPOS, torch.remainder),
    ("equal", np.round(A), np.round(B), torch.eq),
    ("not_equal", np.round(A), np.round(B), torch.ne),
    ("greater", A, B, torch.gt),
    ("greater_equal", np.round(A), np.round(B), torch.ge),
    ("less", A, B, torch.lt),
    ("less_equal", np.round(A), np.round(B), torch.le),
    ("logical_and", A > 0, B > 0, torch.logical_and),
    ("logical_or", A > 0, B > 0, torch.logical_or),
    ("logical_xor", A > 0, B > 0, torch.logical_xor),
]


@covers(*(b[0] for b in BINARY))
@pytest.mark.parametrize("name,x,y,ref", BINARY, ids=[b[0] for b in BINARY])
def test_binary(name, x, y, ref):
    expected = ref(t(x), t(y))
    close(run_op(name, {"x": x, "y": y}, expected.numpy().dtype), expected, atol=1e-5, rtol=1e-6)


def test_binary_int32_stays_int():
    a, b = np.array([7, -7, 9], np.int32), np.array([2, 2, -4], np.int32)
    close(run_op("add", {"x": a, "y": b}, np.int32), t(a) + t(b))
    close(run_op("floor_div", {"x": a, "y": b}, np.int32), torch.floor_divide(t(a), t(b)))
    close(run_op("mod", {"x": a, "y": b}, np.int32), torch.remainder(t(a), t(b)))


@pytest.mark.parametrize(
    "name,ref", [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("real_div", torch.div)]
)
def test_fp16_binary_is_ieee_fp16(name, ref):
    """float32 compute + one rounding gives exactly the IEEE fp16 result torch's half ops give."""
    x, y = r(64, 64, lo=-30, hi=30).astype(np.float16), r(64, 64, lo=0.01, hi=3).astype(np.float16)
    out = run_op(name, {"x": x, "y": y}, np.float16)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, ref(t(x), t(y)).numpy())


def test_fp16_overflow_and_underflow():
    x = np.array([300.0, 1e-4, -300.0], np.float16)
    out = run_op("mul", {"x": x, "y": x}, np.float16)
    assert np.isposinf(out[0]) and np.isposinf(out[2])  # 90000 > 65504
    assert out[1] == 0  # 1e-8 is below fp16's smallest subnormal (6e-8)


@covers("select")
def test_select():
    c = rng.random((2, 3, 4)) > 0.5
    close(run_op("select", {"cond": c, "a": A, "b": B}), torch.where(t(c), t(A), t(B)))


# ---------------------------------------------------------------- reductions
RED = [
    ("reduce_mean", lambda x, d, k: x.mean(d, keepdim=k)),
    ("reduce_sum", lambda x, d, k: x.sum(d, keepdim=k)),
    ("reduce_max", lambda x, d, k: x.amax(d, keepdim=k)),
    ("reduce_min", lambda x, d, k: x.amin(d, keepdim=k)),
    (
        "reduce_prod",
        lambda x, d, k: (
            x.prod(d[0], keepdim=k)
            if len(d) == 1
            else x.prod(d[0], keepdim=True).prod(d[1], keepdim=True).squeeze(d if not k else ())
        ),
    ),
    ("reduce_l1_norm", lambda x, d, k: torch.linalg.vector_norm(x, 1, d, keepdim=k)),
    ("reduce_l2_norm", lambda x, d, k: torch.linalg.vector_norm(x, 2, d, keepdim=k)),
    ("reduce_sum_square", lambda x, d, k: (x * x).sum(d, keepdim=k)),
    ("reduce_log_sum", lambda x, d, k: torch.log(x.sum(d, keepdim=k))),
    ("reduce_log_sum_exp", lambda x, d, k: torch.logsumexp(x, d, keepdim=k)),
]


@covers(*(x[0] for x in RED))
@pytest.mark.parametrize("name,ref", RED, ids=[x[0] for x in RED])
@pytest.mark.parametrize("axes,keep", [((-1,), True), ((0, 2), False)])
def test_reductions(name, ref, axes, keep):
    x = r(3, 4, 5, lo=0.2, hi=1.5)
    out = run_op(name, {"x": x, "axes": np.array(axes, np.int32), "keep_dims": np.bool_(keep)})
    close(out, ref(t(x).double(), axes, keep).float(), atol=1e-6, rtol=1e-5)


def test_reduce_all_axes():
    x = r(3, 4)
    close(run_op("reduce_sum", {"x": x}), t(x).sum(), rtol=1e-5)


@covers("reduce_argmax", "reduce_argmin")
def test_reduce_arg():
    x = r(3, 4, 5)
    close(run_op("reduce_argmax", {"x": x, "axis": np.int32(1), "keep_dims": np.bool_(False)}), t(x).argmax(1).int())
    close(
        run_op("reduce_argmin", {"x": x, "axis": np.int32(-1), "keep_dims": np.bool_(True)}),
        t(x).argmin(-1, keepdim=True).int(),
    )


# ---------------------------------------------------------------- linear algebra
@covers("linear")
def test_linear():
    x, w, b = r(2, 5, 8), r(6, 8), r(6)
    close(run_op("linear", {"x": x, "weight": w, "bias": b}), F.linear(t(x), t(w), t(b)), atol=1e-5)
    close(run_op("linear", {"x": x, "weight": w}), F.linear(t(x), t(w)), atol=1e-5)


def test_linear_fp16_accumulates_in_fp32():
    x, w = r(4, 512, lo=-1, hi=1).astype(np.float16), r(64, 512, lo=-1, hi=1).astype(np.float16)
    out = run_op("linear", {"x": x, "weight": w}, np.float16)
    ref = F.linear(t(x).double(), t(w).double())
    # one rounding of the (fp32-accumulated) result: within half an fp16 ulp (+ fp32 noise)
    err = np.abs(out.astype(np.float64) - ref.numpy())
    ulp = np.spacing(np.abs(ref.numpy()).astype(np.float16)).astype(np.float64)
    assert (err <= 0.5 * ulp + 1e-5).all()


@covers("matmul")
def test_matmul():
    x, y = r(2, 3, 4, 5), r(3, 5, 6)
    close(run_op("matmul", {"x": x, "y": y}), t(x) @ t(y), atol=1e-5)
    yt = np.ascontiguousarray(np.swapaxes(y, -1, -2))
    xt = np.ascontiguousarray(np.swapaxes(x, -1, -2))
    close(
        run_op("matmul", {"x": xt, "y": yt, "transpose_x": np.bool_(True), "transpose_y": np.bool_(True)}),
        t(x) @ t(y),
        atol=1e-5,
    )
    v, m = r(5), r(5, 3)
    close(run_op("matmul", {"x": v, "y": m}), torch.matmul(t(v), t(m)), atol=1e-5)


@covers("einsum")
def test_einsum():
    a, b = r(2, 3, 4, 5), r(2, 5, 4, 6)
    close(
        run_op("einsum", {"values": (a, b), "equation": "nchw,nwhu->nchu"}),
        torch.einsum("nchw,nwhu->nchu", t(a), t(b)),
        atol=1e-5,
    )


@covers("scaled_dot_product_attention")
def test_scaled_dot_product_attention():
    q, k, v = r(1, 4, 5, 8), r(1, 4, 9, 8), r(1, 4, 9, 8)
    fmask = np.where(rng.random((1, 1, 5, 9)) > 0.3, 0.0, -np.inf).astype(np.float32)
    fmask[..., 0] = 0
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(fmask))
    close(
        run_op("scaled_dot_product_attention", {"query": q, "key": k, "value": v, "attn_mask": fmask}), ref, atol=1e-5
    )
    bmask = fmask == 0
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(bmask))
    close(
        run_op("scaled_dot_product_attention", {"query": q, "key": k, "value": v, "attn_mask": bmask}), ref, atol=1e-5
    )
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v))
    close(run_op("scaled_dot_product_attention", {"query": q, "key": k, "value": v}), ref, atol=1e-5)


def test_sdpa_fp16():
    q, k, v = (r(1, 2, 6, 16).astype(np.float16) for _ in range(3))
    mask = np.triu(np.full((6, 6), -np.inf, np.float16), 1)[None, None]
    out = run_op("scaled_dot_product_attention", {"query": q, "key": k, "value": v, "attn_mask": mask}, np.float16)
    ref = F.scaled_dot_product_attention(t(q).float(), t(k).float(), t(v).float(), attn_mask=t(mask).float())
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref.numpy(), atol=2e-3)


@covers("conv")
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv(dims):
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    sp = {1: (17,), 2: (9, 8), 3: (4, 6, 6)}[dims]
    x = r(2, 4, *sp)
    # plain, strided + custom pad (audio conv), grouped + dilated, patch embedding (stride == kernel)
    w = r(6, 4, *(3,) * dims)
    b = r(6)
    out = run_op("conv", {"x": x, "weight": w, "bias": b, "pad_type": "valid"})
    close(out, conv(t(x), t(w), t(b)), atol=1e-5)
    out = run_op(
        "conv",
        {
            "x": x,
            "weight": w,
            "bias": b,
            "strides": np.full(dims, 2, np.int32),
            "pad_type": "custom",
            "pad": np.ones(2 * dims, np.int32),
        },
    )
    close(out, conv(t(x), t(w), t(b), stride=2, padding=1), atol=1e-5)
    wg = r(6, 2, *(2,) * dims)
    out = run_op(
        "conv",
        {"x": x, "weight": wg, "groups": np.int32(2), "dilations": np.full(dims, 2, np.int32), "pad_type": "valid"},
    )
    close(out, conv(t(x), t(wg), groups=2, dilation=2), atol=1e-5)
    wp = r(5, 4, *(2,) * dims)
    out = run_op(
        "conv",
        {
            "x": x[(...,) + tuple(slice(0, s - s % 2) for s in sp)],
            "weight": wp,
            "strides": np.full(dims, 2, np.int32),
            "pad_type": "valid",
        },
    )
    close(out, conv(t(x[(...,) + tuple(slice(0, s - s % 2) for s in sp)]), t(wp), stride=2), atol=1e-5)


def test_conv_same_padding():
    x, w = r(1, 3, 9, 10), r(4, 3, 4, 3)
    # "same": out = ceil(in / stride); total pad split with the extra at the end (same) / start (same_lower)
    for pad_type, lower in (("same", False), ("same_lower", True)):
        for stride in (1, 2):
            out = run_op(
                "conv", {"x": x, "weight": w, "strides": np.array([stride, stride], np.int32), "pad_type": pad_type}
            )
            pads = []
            for d, k in zip(x.shape[2:], w.shape[2:]):
                total = max((math.ceil(d / stride) - 1) * stride + k - d, 0)
                small, big = total // 2, total - total // 2
                pads.append((big, small) if lower else (small, big))
            xp = F.pad(t(x), (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
            close(out, F.conv2d(xp, t(w), stride=stride), atol=1e-5)
            assert out.shape[2:] == tuple(math.ceil(d / stride) for d in x.shape[2:])


# ---------------------------------------------------------------- normalization
@covers("layer_norm")
def test_layer_norm():
    x, g, b = r(2, 5, 16), r(16), r(16)
    out = run_op(
        "layer_norm", {"x": x, "axes": np.array([-1], np.int32), "gamma": g, "beta": b, "epsilon": np.float32(1e-5)}
    )
    close(out, F.layer_norm(t(x), (16,), t(g), t(b), 1e-5), atol=1e-5)
    g2 = r(5, 16)
    out = run_op("layer_norm", {"x": x, "axes": np.array([1, 2], np.int32), "gamma": g2, "epsilon": np.float32(1e-6)})
    close(out, F.layer_norm(t(x), (5, 16), t(g2), None, 1e-6), atol=1e-5)
    g3 = r(5)  # a non-trailing axis: gamma lines up with that axis
    out = run_op("layer_norm", {"x": x, "axes": np.array([1], np.int32), "gamma": g3})
    xt = t(x).transpose(1, 2)
    close(out, F.layer_norm(xt, (5,), t(g3), None, 1e-5).transpose(1, 2), atol=1e-5)


@covers("batch_norm", "instance_norm", "l2_norm")
def test_batch_instance_l2_norm():
    x = r(2, 3, 4, 5)
    m, v, g, b = r(3), r(3, lo=0.5, hi=2), r(3), r(3)
    close(
        run_op("batch_norm", {"x": x, "mean": m, "variance": v, "gamma": g, "beta": b, "epsilon": np.float32(1e-3)}),
        F.batch_norm(t(x), t(m), t(v), t(g), t(b), False, 0.0, 1e-3),
        atol=1e-5,
    )
    close(
        run_op("instance_norm", {"x": x, "gamma": g, "beta": b, "epsilon": np.float32(1e-5)}),
        F.instance_norm(t(x), weight=t(g), bias=t(b), eps=1e-5),
        atol=1e-5,
    )
    x5 = r(2, 2, 3, 4, 5)
    ref = t(x5) / torch.sqrt((t(x5) ** 2).sum((2, 3, 4), keepdim=True) + 1e-6)
    close(run_op("l2_norm", {"x": x5, "epsilon": np.float32(1e-6)}), ref, atol=1e-6)


# ---------------------------------------------------------------- shape ops
@covers("shape", "reshape", "transpose", "flatten2d")
def test_shape_reshape_transpose():
    x = r(2, 3, 4)
    close(run_op("shape", {"x": x}), np.array([2, 3, 4], np.int32))
    close(run_op("reshape", {"x": x, "shape": np.array([4, -1], np.int32)}), t(x).reshape(4, -1))
    # iOS17 0-rule: each 0 copies x's dim aligned from the right, 1 when out of range
    close(run_op("reshape", {"x": x, "shape": np.array([1, 0, -1, 0], np.int32)}), t(x).reshape(1, 2, 3, 4))
    x2 = r(2, 50)  # the example of the MIL docs: [2, 50] with [1, 0, -1, 0] -> [1, 1, 2, 50]
    close(run_op("reshape", {"x": x2, "shape": np.array([1, 0, -1, 0], np.int32)}), t(x2).reshape(1, 1, 2, 50))
    close(run_op("reshape", {"x": x, "shape": np.array([0, -1, 2], np.int32)}), t(x).reshape(2, 6, 2))
    close(run_op("transpose", {"x": x, "perm": np.array([2, 0, 1], np.int32)}), t(x).permute(2, 0, 1))
    close(run_op("flatten2d", {"x": x, "axis": np.int32(2)}), t(x).reshape(6, 4))


@covers("expand_dims", "squeeze")
def test_expand_squeeze():
    x = r(3, 4)
    close(run_op("expand_dims", {"x": x, "axes": np.array([0, -1], np.int32)}), t(x).unsqueeze(0).unsqueeze(-1))
    close(run_op("expand_dims", {"x": np.int32(5), "axes": np.array([0], np.int32)}), np.array([5], np.int32))
    y = r(1, 3, 1, 4)
    close(run_op("squeeze", {"x": y, "axes": np.array([2], np.int32)}), t(y).squeeze(2))
    close(run_op("squeeze", {"x": y}), t(y).squeeze())


@covers("tile", "concat", "stack", "split")
def test_tile_concat_stack_split():
    x, y = r(2, 3), r(2, 3)
    close(run_op("tile", {"x": x, "reps": np.array([2, 1], np.int32)}), torch.tile(t(x), (2, 1)))
    close(run_op("concat", {"values": (x, y), "axis": np.int32(-1)}), torch.cat([t(x), t(y)], -1))
    close(
        run_op("concat", {"values": (x, y), "axis": np.int32(0), "interleave": np.bool_(True)}),
        torch.stack([t(x), t(y)], 1).reshape(4, 3),
    )
    scalars = (np.int32(1), np.array([2, 3], np.int32), np.int32(4))  # scalars concatenate as [1]
    close(run_op("concat", {"values": scalars, "axis": np.int32(0)}), np.array([1, 2, 3, 4], np.int32))
    close(run_op("stack", {"values": (x, y), "axis": np.int32(-1)}), torch.stack([t(x), t(y)], -1))
    z = r(2, 10)
    for out, ref in zip(
        run_op("split", {"x": z, "split_sizes": np.array([3, 7], np.int32), "axis": np.int32(1)}),
        torch.split(t(z), [3, 7], 1),
    ):
        close(out, ref)
    for out, ref in zip(
        run_op("split", {"x": z, "num_splits": np.int32(2), "axis": np.int32(-1)}), torch.chunk(t(z), 2, -1)
    ):
        close(out, ref)


@covers("slice_by_index")
def test_slice_by_index():
    x = r(4, 6, 8)
    tx = t(x)

    def sbi(**kw):
        kw = {k: np.array(v) for k, v in kw.items()}
        return run_op("slice_by_index", {"x": x, **kw})

    close(sbi(begin=[1, 0, 2], end=[3, 6, 8]), tx[1:3, 0:6, 2:8])
    close(sbi(begin=[0, 1, 0], end=[4, 6, 8], stride=[1, 2, 3]), tx[:, 1::2, ::3])
    close(
        sbi(begin=[0, -3, 0], end=[0, -1, 5], begin_mask=[True, False, False], end_mask=[True, False, False]),
        tx[:, -3:-1, :5],
    )
    close(sbi(begin=[2, 0, 0], end=[3, 6, 8], squeeze_mask=[True, False, False]), tx[2])
    close(
        sbi(begin=[-1, 0, 1], end=[0, 0, 0], end_mask=[False, True, True], squeeze_mask=[True, False, False]),
        tx[-1, :, 1:],
    )
    close(
        sbi(
            begin=[0, 0, 0],
            end=[4, 6, 8],
            stride=[-1, 1, 1],
            begin_mask=[True, False, False],
            end_mask=[True, False, False],
        ),
        torch.flip(tx, [0]),
    )


@covers("slice_by_size")
def test_slice_by_size():
    x = r(4, 6, 8)
    close(
        run_op(
            "slice_by_size", {"x": x, "begin": np.array([1, 2, 0], np.int32), "size": np.array([2, -1, 3], np.int32)}
        ),
        t(x)[1:3, 2:, 0:3],
    )


@covers("slice_update")
def test_slice_update():
    x, u = r(1, 2, 10, 4), r(1, 2, 3, 4)
    out = run_op(
        "slice_update",
        {"x": x, "update": u, "begin": np.array([0, 0, 5, 0], np.int32), "end": np.array([1, 2, 8, 4], np.int32)},
    )
    ref = t(x).clone()
    ref[:, :, 5:8, :] = t(u)
    close(out, ref)
    assert not np.shares_memory(out, x)
    # squeeze_mask: the update lacks the squeezed dims; strides
    u2 = r(2, 2)
    out = run_op(
        "slice_update",
        {
            "x": x,
            "update": u2,
            "begin": np.array([0, 0, 1, 0], np.int32),
            "end": np.array([1, 2, 10, 4], np.int32),
            "stride": np.array([1, 1, 1, 2], np.int32),
            "squeeze_mask": np.array([True, False, True, False]),
        },
    )
    ref = t(x).clone()
    ref[0, :, 1, ::2] = t(u2)
    close(out, ref)


@covers("reverse")
def test_reverse():
    x = r(2, 3, 4)
    close(run_op("reverse", {"x": x, "axes": np.array([0, 2], np.int32)}), torch.flip(t(x), [0, 2]))


# ---------------------------------------------------------------- gather / scatter
@covers("gather")
def test_gather():
    x = r(10, 4)
    idx = rng.integers(0, 10, (2, 3)).astype(np.int32)
    close(run_op("gather", {"x": x, "indices": idx, "axis": np.int32(0)}), t(x)[t(idx).long()])
    close(run_op("gather", {"x": x, "indices": np.int32(3), "axis": np.int32(0)}), t(x)[3])
    i2 = np.array([3, 0], np.uint16)
    close(run_op("gather", {"x": x, "indices": i2, "axis": np.int32(-1)}), t(x)[:, [3, 0]])
    close(run_op("gather", {"x": x, "indices": np.array([-1, 2], np.int32)}), t(x)[[9, 2]])  # negative wraps
    xb = r(3, 5, 4)
    ib = rng.integers(0, 5, (3, 2)).astype(np.int32)
    ref = torch.stack([t(xb)[i][t(ib)[i].long()] for i in range(3)])
    close(run_op("gather", {"x": xb, "indices": ib, "axis": np.int32(1), "batch_dims": np.int32(1)}), ref)
    emb = r(320, 16).astype(np.float16)  # embedding lookup keeps fp16 values exactly
    ids = rng.integers(0, 320, (1, 7)).astype(np.int32)
    close(run_op("gather", {"x": emb, "indices": ids}, np.float16), F.embedding(t(ids).long(), t(emb)))


@covers("gather_along_axis", "gather_nd")
def test_gather_along_axis_and_nd():
    x = r(3, 5)
    idx = rng.integers(0, 5, (3, 2)).astype(np.int32)
    close(
        run_op("gather_along_axis", {"x": x, "indices": idx, "axis": np.int32(1)}), torch.gather(t(x), 1, t(idx).long())
    )
    x3 = r(3, 4, 5)
    ind = np.stack([rng.integers(0, 3, 6), rng.integers(0, 4, 6)], -1).reshape(2, 3, 2).astype(np.int32)
    close(run_op("gather_nd", {"x": x3, "indices": ind}), t(x3)[t(ind[..., 0]).long(), t(ind[..., 1]).long()])
    ib = rng.integers(0, 4, (3, 2, 1)).astype(np.int32)
    ref = torch.stack([t(x3)[b][t(ib[b, :, 0]).long()] for b in range(3)])
    close(run_op("gather_nd", {"x": x3, "indices": ib, "batch_dims": np.int32(1)}), ref)


@covers("scatter", "scatter_along_axis", "scatter_nd")
def test_scatter_family():
    data = r(5, 3)
    idx = np.array([4, 1], np.int32)
    upd = r(2, 3)
    ref = t(data).clone()
    ref[t(idx).long()] = t(upd)
    close(run_op("scatter", {"data": data, "indices": idx, "updates": upd, "mode": "update"}), ref)
    ref = t(data).clone().index_add_(0, torch.tensor([1, 1]), t(upd))
    close(
        run_op("scatter", {"data": data, "indices": np.array([1, 1], np.int32), "updates": upd, "mode": "add"}),
        ref,
        atol=1e-6,
    )
    updc = r(5, 2)
    ref = t(data).clone().index_copy_(1, torch.tensor([2, 0]), t(updc))
    close(
        run_op(
            "scatter",
            {
                "data": data,
                "indices": np.array([2, 0], np.int32),
                "updates": updc,
                "axis": np.int32(1),
                "mode": "update",
            },
        ),
        ref,
    )
    # along axis: what the MoE router does (zeros.scatter(1, topk_idx, topk_w))
    z = np.zeros((4, 6), np.float32)
    ti = np.argsort(-r(4, 6), axis=1)[:, :2].astype(np.int32)
    tw = r(4, 2)
    ref = torch.zeros(4, 6).scatter(1, t(ti).long(), t(tw))
    close(
        run_op("scatter_along_axis", {"data": z, "indices": ti, "updates": tw, "axis": np.int32(1), "mode": "update"}),
        ref,
    )
    ref = t(data).clone().scatter_add(0, torch.tensor([[0, 1, 0]]), torch.ones(1, 3))
    close(
        run_op(
            "scatter_along_axis",
            {
                "data": data,
                "indices": np.array([[0, 1, 0]], np.int32),
                "updates": np.ones((1, 3), np.float32),
                "axis": np.int32(0),
                "mode": "add",
            },
        ),
        ref,
        atol=1e-6,
    )
    ia = np.array([[0], [2], [1], [0], [2]], np.int32)
    half = np.full((5, 1), 0.5, np.float32)
    for mode, red in (("max", "amax"), ("min", "amin"), ("mul", "prod")):
        ref = t(data).clone().scatter_reduce(1, t(ia).long(), t(half), red)
        close(
            run_op(
                "scatter_along_axis", {"data": data, "indices": ia, "updates": half, "axis": np.int32(1), "mode": mode}
            ),
            ref,
            atol=1e-6,
        )
    ind = np.array([[0, 1], [3, 2], [0, 1]], np.int32)
    u = np.array([1.0, 2.0, 3.0], np.float32)
    ref = t(data).clone().index_put_((t(ind[:, 0]).long(), t(ind[:, 1]).long()), t(u), accumulate=True)
    close(run_op("scatter_nd", {"data": data, "indices": ind, "updates": u, "mode": "add"}), ref, atol=1e-6)
    ref = t(data).clone()
    ref[3, 2] = 2.0
    close(run_op("scatter_nd", {"data": data, "indices": ind[1:2], "updates": u[1:2], "mode": "update"}), ref)
    ref = t(data).clone()
    ref[1:2] -= 0.25
    close(
        run_op(
            "scatter",
            {
                "data": data,
                "indices": np.array([1], np.int32),
                "updates": np.full((1, 3), 0.25, np.float32),
                "mode": "sub",
            },
        ),
        ref,
        atol=1e-6,
    )


# ---------------------------------------------------------------- tensor creation / misc
@covers("fill", "fill_like", "range_1d")
def test_fill_range():
    close(run_op("fill", {"shape": np.array([2, 3], np.int32), "value": np.float32(1.5)}), torch.full((2, 3), 1.5))
    close(run_op("fill_like", {"ref_tensor": X, "value": np.float32(-2.0)}), torch.full(X.shape, -2.0))
    close(
        run_op("range_1d", {"end": np.int32(10), "start": np.int32(2), "step": np.int32(3)}, np.int32),
        torch.arange(2, 10, 3, dtype=torch.int32),
    )
    close(
        run_op("range_1d", {"end": np.float32(1.0), "start": np.float32(0.0), "step": np.float32(0.25)}, np.float32),
        torch.arange(0, 1, 0.25),
    )


@covers("band_part", "cumsum")
def test_band_part_cumsum():
    x = r(2, 5, 6)
    close(run_op("band_part", {"x": x, "lower": np.int32(-1), "upper": np.int32(0)}), torch.tril(t(x)))
    close(
        run_op("band_part", {"x": x, "lower": np.int32(1), "upper": np.int32(2)}), torch.triu(torch.tril(t(x), 2), -1)
    )
    close(run_op("cumsum", {"x": x, "axis": np.int32(1)}), torch.cumsum(t(x), 1), atol=1e-6)
    close(
        run_op("cumsum", {"x": x, "axis": np.int32(2), "exclusive": np.bool_(True)}),
        torch.cumsum(t(x), 2) - t(x),
        atol=1e-6,
    )
    close(
        run_op("cumsum", {"x": x, "axis": np.int32(2), "reverse": np.bool_(True)}),
        torch.flip(torch.cumsum(torch.flip(t(x), [2]), 2), [2]),
        atol=1e-6,
    )


@covers("topk", "argsort")
def test_topk_argsort():
    x = r(3, 8)
    vals, idx = run_op("topk", {"x": x, "k": np.int32(3), "axis": np.int32(-1)})
    rv, ri = torch.topk(t(x), 3, -1)
    close(vals, rv)
    close(idx, ri.int())
    vals, idx = run_op("topk", {"x": x, "k": np.int32(2), "axis": np.int32(0), "ascending": np.bool_(True)})
    rv, ri = torch.topk(t(x), 2, 0, largest=False)
    close(vals, rv)
    close(idx, ri.int())
    close(run_op("argsort", {"x": x, "axis": np.int32(-1)}), torch.argsort(t(x), -1, descending=True).int())
    close(run_op("argsort", {"x": x, "axis": np.int32(0), "ascending": np.bool_(True)}), torch.argsort(t(x), 0).int())


@covers("one_hot", "pad", "non_zero")
def test_one_hot_pad_nonzero():
    ind = np.array([[0, 3], [2, 1]], np.int32)
    close(
        run_op("one_hot", {"indices": ind, "one_hot_vector_size": np.int32(4)}, np.int32),
        F.one_hot(t(ind).long(), 4).int(),
    )
    close(
        run_op("one_hot", {"indices": ind, "one_hot_vector_size": np.int32(4), "axis": np.int32(0)}, np.int32),
        F.one_hot(t(ind).long(), 4).permute(2, 0, 1).int(),
    )
    x = r(1, 2, 4, 5)
    p = np.array([1, 2, 2, 0], np.int32)
    close(
        run_op("pad", {"x": x, "pad": p, "mode": "constant", "constant_val": np.float32(0.5)}),
        F.pad(t(x), (2, 0, 1, 2), value=0.5),
    )
    close(run_op("pad", {"x": x, "pad": p, "mode": "reflect"}), F.pad(t(x), (2, 0, 1, 2), mode="reflect"))
    close(run_op("pad", {"x": x, "pad": p, "mode": "replicate"}), F.pad(t(x), (2, 0, 1, 2), mode="replicate"))
    m = rng.random((3, 4)) > 0.5
    close(run_op("non_zero", {"x": m}), torch.nonzero(t(m)).int())


@covers("sliding_windows")
def test_sliding_windows():
    x = r(2, 10, 3)
    out = run_op("sliding_windows", {"x": x, "axis": np.int32(1), "size": np.int32(4), "stride": np.int32(2)})
    close(out, t(x).unfold(1, 4, 2).permute(0, 1, 3, 2))


@covers("depth_to_space", "space_to_depth", "pixel_shuffle", "pixel_unshuffle")
def test_depth_space_pixel_shuffle():
    b = 2
    x = r(1, 8, 3, 2)
    # DCR reference by definition: out[n, c, h*b+i, w*b+j] = x[n, (i*b+j)*C' + c, h, w]
    cp = 8 // (b * b)
    ref = np.zeros((1, cp, 6, 4), np.float32)
    for c in range(cp):
        for h in range(3):
            for w in range(2):
                for i in range(b):
                    for j in range(b):
                        ref[0, c, h * b + i, w * b + j] = x[0, (i * b + j) * cp + c, h, w]
    close(run_op("depth_to_space", {"x": x, "block_size": np.int32(b)}), ref)
    close(run_op("space_to_depth", {"x": ref, "block_size": np.int32(b)}), x)
    close(run_op("pixel_shuffle", {"x": x, "upscale_factor": np.int32(2)}), F.pixel_shuffle(t(x), 2))
    y = r(1, 2, 4, 6)
    close(run_op("pixel_unshuffle", {"x": y, "downscale_factor": np.int32(2)}), F.pixel_unshuffle(t(y), 2))


@covers("upsample_nearest_neighbor")
def test_upsample_nearest():
    x = r(1, 2, 3, 4)
    close(
        run_op(
            "upsample_nearest_neighbor",
            {"x": x, "scale_factor_height": np.float32(2), "scale_factor_width": np.float32(3)},
        ),
        F.interpolate(t(x), scale_factor=(2, 3), mode="nearest"),
    )


# ---------------------------------------------------------------- decompression (independent loops)
@covers("constexpr_blockwise_shift_scale")
def test_constexpr_blockwise_shift_scale():
    data = rng.integers(-8, 8, (6, 64)).astype(np.int8)  # int4 values, as coremltools stores them
    scale = r(6, 2, lo=0.01, hi=0.1).astype(np.float16)
    ref = np.zeros((6, 64), np.float32)
    for i in range(6):
        for j in range(64):
            ref[i, j] = np.float32(scale[i, j // 32]) * data[i, j]
    out = run_op("constexpr_blockwise_shift_scale", {"data": data, "scale": scale}, np.float16)
    assert out.dtype == np.float16
    close(out, ref.astype(np.float16))
    offset = rng.integers(0, 16, (6, 2)).astype(np.uint8)
    udata = rng.integers(0, 16, (6, 64)).astype(np.uint8)
    for i in range(6):
        for j in range(64):
            ref[i, j] = np.float32(scale[i, j // 32]) * (float(udata[i, j]) - float(offset[i, j // 32]))
    close(
        run_op("constexpr_blockwise_shift_scale", {"data": udata, "scale": scale, "offset": offset}, np.float16),
        ref.astype(np.float16),
    )


@covers("constexpr_affine_dequantize")
def test_constexpr_affine_dequantize():
    q = rng.integers(-128, 128, (5, 7)).astype(np.int8)
    zp = rng.integers(-3, 3, 5).astype(np.int8)
    sc = r(5, lo=1e-3, hi=1e-2).astype(np.float16)
    ref = np.array([[np.float32(sc[i]) * (int(q[i, j]) - int(zp[i])) for j in range(7)] for i in range(5)], np.float32)
    close(
        run_op(
            "constexpr_affine_dequantize",
            {"quantized_data": q, "zero_point": zp, "scale": sc, "axis": np.int32(0)},
            np.float16,
        ),
        ref.astype(np.float16),
    )
    sc1 = r(7, lo=1e-3, hi=1e-2).astype(np.float16)
    ref = np.array([[np.float32(sc1[j]) * (int(q[i, j]) - 1) for j in range(7)] for i in range(5)], np.float32)
    close(
        run_op(
            "constexpr_affine_dequantize",
            {"quantized_data": q, "zero_point": np.int8(1), "scale": sc1, "axis": np.int32(-1)},
            np.float16,
        ),
        ref.astype(np.float16),
    )


def _pack_lsb_first(values: np.ndarray, nbits: int) -> np.ndarray:
    bits = []
    for v in values.reshape(-1):
        bits += [(int(v) >> b) & 1 for b in range(nbits)]
    bits += [0] * (-len(bits) % 8)
    return np.array([sum(bits[i + k] << k for k in range(8)) for i in range(0, len(bits), 8)], np.uint8)


@covers("constexpr_lut_to_dense")
def test_constexpr_lut_to_dense():
    # iOS16 form: packed indices + flat LUT + shape
    for nbits in (2, 4, 6):
        lut = r(2**nbits).astype(np.float16)
        idx = rng.integers(0, 2**nbits, (5, 6))
        out = run_op(
            "constexpr_lut_to_dense",
            {"indices": _pack_lsb_first(idx, nbits), "lut": lut, "shape": np.array([5, 6], np.uint32)},
            np.float16,
        )
        close(out, lut[idx])
    # iOS18 form: per-block LUTs [blocks..., palettes, 1]
    lut = r(3, 1, 4, 1).astype(np.float16)
    idx = rng.integers(0, 4, (6, 5)).astype(np.uint8)
    ref = np.array([[lut[i // 2, 0, idx[i, j], 0] for j in range(5)] for i in range(6)], np.float16)
    close(run_op("constexpr_lut_to_dense", {"indices": idx, "lut": lut}, np.float16), ref)
    # vector palettization: each index picks a vector laid along vector_axis
    lut = r(1, 1, 2, 3)
    idx = rng.integers(0, 2, (2, 2)).astype(np.uint8)
    ref = np.zeros((2, 6), np.float32)
    for i in range(2):
        for j in range(2):
            ref[i, 3 * j : 3 * j + 3] = lut[0, 0, idx[i, j]]
    close(run_op("constexpr_lut_to_dense", {"indices": idx, "lut": lut, "vector_axis": np.int32(1)}), ref)
    ref0 = np.zeros((6, 2), np.float32)
    for i in range(2):
        for j in range(2):
            ref0[3 * i : 3 * i + 3, j] = lut[0, 0, idx[i, j]]
    close(run_op("constexpr_lut_to_dense", {"indices": idx, "lut": lut, "vector_axis": np.int32(0)}), ref0)


@covers("constexpr_cast", "constexpr_sparse_to_dense")
def test_constexpr_cast_and_sparse():
    v = r(4).astype(np.float16)
    close(run_op("constexpr_cast", {"source_val": v, "output_dtype": "fp32"}), v.astype(np.float32))
    mask = rng.random((3, 5)) > 0.5
    nz = r(int(mask.sum()))
    ref = np.zeros((3, 5), np.float32)
    ref[mask] = nz
    close(run_op("constexpr_sparse_to_dense", {"nonzero_data": nz, "mask": mask.astype(np.uint8)}), ref)
    packed = _pack_lsb_first(mask.astype(np.uint8), 1)
    close(
        run_op("constexpr_sparse_to_dense", {"nonzero_data": nz, "mask": packed, "shape": np.array([3, 5], np.uint32)}),
        ref,
    )


# ---------------------------------------------------------------- state
@covers("read_state", "coreml_update_state", "write_state")
def test_state_ops_copy_and_update_in_place():
    state = np.zeros((2, 3), np.float16)
    snap = run_op("read_state", {"input": state})
    assert not np.shares_memory(snap, state)
    new = r(2, 3).astype(np.float16)
    out = run_op("coreml_update_state", {"state": state, "value": new})
    np.testing.assert_array_equal(state, new)  # written into the caller's array
    np.testing.assert_array_equal(out, new)
    np.testing.assert_array_equal(snap, 0)  # the earlier read is a value, not a view
    run_op("write_state", {"input": state, "data": np.ones((2, 3), np.float16)})
    np.testing.assert_array_equal(state, 1)


# ---------------------------------------------------------------- bookkeeping
def test_unknown_op_is_a_named_error():
    with pytest.raises(NotImplementedError, match="MIL op 'not_an_op'.*not supported by the interpreter"):
        run_op("not_an_op", {})


def test_every_op_has_a_test():
    missing = sorted(set(OPS) - COVERED)
    assert not missing, f"ops without a unit test: {missing}"
