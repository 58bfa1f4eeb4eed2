"""The MIL interpreter end to end: small torch modules converted by coremltools 9.0 (iOS 18,
fp16 compute), read back and executed in numpy, compared with the torch module.

Covers a stateful GQA decoder layer in the coreml.md pattern (prefill + decode functions of one
multifunction package, KV cache carried in Core ML state across calls), weight compression
(int4 per-block, int8 per-channel, palettization) and the building blocks of our models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

ct = pytest.importorskip("coremltools")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # coremltools renames unnamed outputs

from autoglm_runtime.mil import MILModel, MILRuntimeError

COS_MIN, REL_MAX = 0.999, 1e-2  # fp16 program vs fp32 torch


def agree(out, ref, cos_min=COS_MIN, rel_max=REL_MAX):
    out = np.asarray(out, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    cos = float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref) + 1e-30))
    rel = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-30))
    assert cos > cos_min and rel < rel_max, f"cosine {cos:.6f}, max abs err / scale {rel:.2e}"
    return cos, rel


def convert(module, examples, inputs, states=None, target=None, precision=None):
    module = module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, examples)
    return ct.convert(
        traced,
        inputs=inputs,
        states=states or None,
        minimum_deployment_target=target or ct.target.iOS18,
        compute_precision=precision or ct.precision.FLOAT16,
    )


def op_types(m: MILModel, function=None) -> set[str]:
    return {k for k in m.op_counts(function) if k != "const"}


def f16(name, shape):
    return ct.TensorType(name=name, shape=shape, dtype=np.float16)


# ---------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    """GLM-4.1V's fused gate_up MLP."""

    def __init__(self, d, h):
        super().__init__()
        self.gate_up = nn.Linear(d, 2 * h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(up * F.silu(gate))


def rotate(x, interleaved):
    if interleaved:
        return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x, cos, sin, interleaved=True):
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    return torch.cat([xr * cos + rotate(xr, interleaved) * sin, xp], dim=-1)


class Rotary(nn.Module):
    def forward(self, q, cos, sin):
        return apply_rotary(q, cos, sin, True) + apply_rotary(q, cos, sin, False)


class GQADecoderLayer(nn.Module):
    """The stateful decoder pattern of notes/coreml.md: buffers keyCache/valueCache
    (layers, 1, kv_heads, max_ctx, head_dim), slice write at [end - S, end), repeat_interleave
    to the query heads, SDPA with attn_mask and no scale; GLM-style q/k/v bias + sandwich norms."""

    def __init__(self, d=64, heads=4, kv=2, hd=16, ctx=32, rot=8):
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv, hd
        self.q = nn.Linear(d, heads * hd)
        self.k = nn.Linear(d, kv * hd)
        self.v = nn.Linear(d, kv * hd)
        self.o = nn.Linear(heads * hd, d, bias=False)
        self.n1, self.n2, self.n3, self.n4 = RMSNorm(d), RMSNorm(d), RMSNorm(d), RMSNorm(d)
        self.mlp = SwiGLU(d, 96)
        self.register_buffer("keyCache", torch.zeros(1, 1, kv, ctx, hd))
        self.register_buffer("valueCache", torch.zeros(1, 1, kv, ctx, hd))

    def forward(self, embeds, causal_mask, cos, sin):
        S = embeds.shape[1]
        h = self.n1(embeds)
        q = self.q(h).view(1, S, self.heads, self.hd).transpose(1, 2)
        k = self.k(h).view(1, S, self.kv, self.hd).transpose(1, 2)
        v = self.v(h).view(1, S, self.kv, self.hd).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        end = causal_mask.shape[-1]
        begin = end - S
        self.keyCache[0:1, :, :, begin:end, :] = k.unsqueeze(0)
        self.valueCache[0:1, :, :, begin:end, :] = v.unsqueeze(0)
        kk = self.keyCache[0, :, :, :end, :].repeat_interleave(self.heads // self.kv, dim=1)
        vv = self.valueCache[0, :, :, :end, :].repeat_interleave(self.heads // self.kv, dim=1)
        a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=causal_mask)
        x = embeds + self.n2(self.o(a.transpose(1, 2).reshape(1, S, self.heads * self.hd)))
        return x + self.n4(self.mlp(self.n3(x)))


class SoftmaxAttention(nn.Module):
    """Vision/audio-tower attention: explicit matmul + softmax (with a scale, so no fused SDPA)."""

    def __init__(self, d=32, heads=2):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        n = x.shape[0]
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, self.hd).permute(1, 2, 0, 3).unbind(0)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd), dim=-1)
        return self.proj((att @ v).transpose(0, 1).reshape(n, -1))


class Embedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(320, 32)

    def forward(self, ids):
        return self.emb(ids.long())


class GeluMLP(nn.Module):
    def __init__(self, approximate):
        super().__init__()
        self.fc1, self.fc2, self.approximate = nn.Linear(32, 64), nn.Linear(64, 32), approximate
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x)), approximate=self.approximate))


class AudioConvs(nn.Module):
    """Whisper-style front end: conv1d k3 p1, conv1d k3 s2 p1, exact GELU."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(16, 32, 3, padding=1)
        self.c2 = nn.Conv1d(32, 32, 3, stride=2, padding=1)

    def forward(self, x):
        return F.gelu(self.c2(F.gelu(self.c1(x))))


class PatchEmbedConv3d(nn.Module):
    """GLM-4.1V's original patch embedding: Conv3d with stride == kernel, then a 1x1 conv as linear."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv3d(3, 32, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.pw = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        y = self.proj(x)[:, :, 0]
        return self.pw(y)


class Router(nn.Module):
    """The MoE router of model/moe.py: sigmoid scores, top-k, gather, renormalise, scatter."""

    def __init__(self, d=32, experts=8, k=2):
        super().__init__()
        self.w = nn.Linear(d, experts, bias=False)
        self.k = k

    def forward(self, x):
        scores = self.w(x).sigmoid()
        idx = scores.topk(self.k, dim=-1, sorted=False)[1]
        w = scores.gather(1, idx)
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return torch.zeros_like(scores).scatter(1, idx, w)


def _module_cases():
    torch.manual_seed(0)
    return {
        "rmsnorm": (RMSNorm(64), (torch.randn(1, 5, 64),), [f16("x", (1, 5, 64))]),
        "swiglu": (SwiGLU(64, 96), (torch.randn(1, 5, 64),), [f16("x", (1, 5, 64))]),
        "rotary": (
            Rotary(),
            (torch.randn(1, 4, 6, 32), torch.randn(6, 16), torch.randn(6, 16)),
            [f16("q", (1, 4, 6, 32)), f16("cos", (6, 16)), f16("sin", (6, 16))],
        ),
        "embedding": (
            Embedding(),
            (torch.randint(0, 320, (1, 7), dtype=torch.int32),),
            [ct.TensorType(name="ids", shape=(1, 7), dtype=np.int32)],
        ),
        "gelu_exact_layernorm": (GeluMLP("none"), (torch.randn(9, 32),), [f16("x", (9, 32))]),
        "gelu_tanh": (GeluMLP("tanh"), (torch.randn(9, 32),), [f16("x", (9, 32))]),
        "audio_conv1d": (AudioConvs(), (torch.randn(1, 16, 40),), [f16("x", (1, 16, 40))]),
        "patch_conv3d_conv1x1": (PatchEmbedConv3d(), (torch.randn(1, 3, 2, 16, 12),), [f16("x", (1, 3, 2, 16, 12))]),
        "softmax_attention": (SoftmaxAttention(), (torch.randn(10, 32),), [f16("x", (10, 32))]),
        "moe_router": (Router(), (torch.randn(6, 32),), [f16("x", (6, 32))]),
    }


MODULES = _module_cases()
EXPECTED_OPS = {  # what coremltools 9.0 must emit for each (a subset: the op we mean to exercise)
    "rmsnorm": {"pow", "reduce_mean", "rsqrt", "mul"},
    "swiglu": {"linear", "split", "silu"},
    "rotary": {"slice_by_index", "stack", "concat"},
    "embedding": {"gather"},
    "gelu_exact_layernorm": {"layer_norm", "gelu"},
    "gelu_tanh": {"gelu"},
    "audio_conv1d": {"conv", "gelu"},
    "patch_conv3d_conv1x1": {"conv"},
    "softmax_attention": {"softmax", "matmul"},
    "moe_router": {"topk", "gather_along_axis", "scatter_along_axis", "sigmoid"},
}


@pytest.mark.parametrize("name", list(MODULES))
def test_module_matches_torch(name):
    module, examples, inputs = MODULES[name]
    m = MILModel(convert(module, examples, inputs))
    ops = op_types(m)
    assert EXPECTED_OPS[name] <= ops, ops
    print(f"{name}: {sorted(ops)}")
    out = m.predict({i.name: e.numpy() for i, e in zip(inputs, examples)})
    (value,) = out.values()
    assert value.dtype == np.float16  # fp16 program, fp16 output
    with torch.no_grad():
        ref = module(*examples).numpy()
    if name == "moe_router":  # the fp16 scores must pick the same experts; weights within fp16
        assert ((value != 0) == (ref != 0)).all()
    if name == "embedding":
        np.testing.assert_array_equal(value, ref.astype(np.float16))  # a lookup is exact
    cos, rel = agree(value, ref)
    print(f"{name}: cosine {cos:.6f}, max abs err / scale {rel:.1e}")


# ---------------------------------------------------------------- stateful decoder, multifunction
CTX, CHUNK = 32, 4


def _mask(S, end):
    m = np.full((1, 1, S, end), -np.inf, np.float32)
    for i in range(S):
        m[0, 0, i, : end - S + i + 1] = 0.0
    return m


def _rope(pos, rot=8):
    inv = 1.0 / (10000 ** (np.arange(0, rot, 2) / rot))
    f = np.repeat(np.asarray(pos, np.float64)[:, None] * inv[None], 2, axis=-1)
    return np.cos(f).astype(np.float32), np.sin(f).astype(np.float32)


@pytest.fixture(scope="module")
def decoder_package(tmp_path_factory):
    """TextDecoder-like package: functions prefill (CHUNK tokens) and decode (1 token), sharing weights."""
    torch.manual_seed(1)
    layer = GQADecoderLayer(ctx=CTX).eval()
    states = [
        ct.StateType(wrapped_type=ct.TensorType(shape=(1, 1, 2, CTX, 16), dtype=np.float16), name=n)
        for n in ("keyCache", "valueCache")
    ]
    d = tmp_path_factory.mktemp("mil")
    paths = {}
    for fname, S in (("prefill", CHUNK), ("decode", 1)):
        end = ct.RangeDim(1, CTX, default=CTX)
        ex = (torch.randn(1, S, 64), torch.zeros(1, 1, S, CTX), torch.randn(S, 8), torch.randn(S, 8))
        ml = convert(
            layer,
            ex,
            [f16("embeds", (1, S, 64)), f16("causal_mask", (1, 1, S, end)), f16("cos", (S, 8)), f16("sin", (S, 8))],
            states=states,
        )
        paths[fname] = d / f"{fname}.mlpackage"
        ml.save(str(paths[fname]))
    layer.keyCache.zero_()
    layer.valueCache.zero_()
    desc = ct.utils.MultiFunctionDescriptor()
    for fname, p in paths.items():
        desc.add_function(str(p), src_function_name="main", target_function_name=fname)
    desc.default_function_name = "prefill"
    out = d / "TextDecoder.mlpackage"
    ct.utils.save_multifunction(desc, str(out))
    return layer, out


def test_stateful_decoder_prefill_then_decode(decoder_package):
    layer, path = decoder_package
    m = MILModel(path)  # read back from disk
    assert sorted(m.functions) == ["decode", "prefill"] and m.default_function == "prefill"
    for f in m.functions:
        assert m.input_names(f) == ["embeds", "causal_mask", "cos", "sin"]
        assert m.state_names(f) == ["keyCache", "valueCache"]
        assert {
            "read_state",
            "slice_update",
            "coreml_update_state",
            "scaled_dot_product_attention",
            "tile",
        } <= op_types(m, f)
    print("prefill ops:", sorted(op_types(m, "prefill")))
    state = m.make_state("prefill")
    assert state["keyCache"].dtype == np.float16 and state["keyCache"].shape == (1, 1, 2, CTX, 16)
    torch.manual_seed(2)
    pos, results = 0, []
    for fname, S in (("prefill", CHUNK), ("prefill", CHUNK), ("decode", 1), ("decode", 1), ("decode", 1)):
        x = torch.randn(1, S, 64)
        mask = _mask(S, pos + S)
        cos, sin = _rope(range(pos, pos + S))
        out = m.predict({"embeds": x.numpy(), "causal_mask": mask, "cos": cos, "sin": sin}, function=fname, state=state)
        with torch.no_grad():
            ref = layer(x, torch.from_numpy(mask), torch.from_numpy(cos), torch.from_numpy(sin)).numpy()
        results.append(agree(out[m.output_names(fname)[0]], ref))
        pos += S
    # the cache carried in state matches the module's buffers, and nothing beyond pos was written
    agree(state["keyCache"][..., :pos, :], layer.keyCache[..., :pos, :].numpy())
    agree(state["valueCache"][..., :pos, :], layer.valueCache[..., :pos, :].numpy())
    assert not state["keyCache"][..., pos:, :].any()
    print("per-call (cosine, max abs err / scale):", [(round(c, 6), f"{r:.1e}") for c, r in results])


def test_state_is_required_and_checked(decoder_package):
    _, path = decoder_package
    m = MILModel(path)
    feeds = {
        "embeds": np.zeros((1, 1, 64), np.float32),
        "causal_mask": _mask(1, 1),
        "cos": np.ones((1, 8), np.float32),
        "sin": np.zeros((1, 8), np.float32),
    }
    with pytest.raises(ValueError, match="stateful"):
        m.predict(feeds, function="decode")
    bad = {k: v.astype(np.float32) for k, v in m.make_state("decode").items()}
    with pytest.raises(ValueError, match="keyCache"):
        m.predict(feeds, function="decode", state=bad)
    with pytest.raises(ValueError, match="causal_mask"):  # RangeDim upper bound is CTX
        m.predict({**feeds, "causal_mask": _mask(1, CTX + 1)}, function="decode", state=m.make_state("decode"))
    with pytest.raises(ValueError, match="embeds"):  # decode takes exactly one token
        m.predict(
            {**feeds, "embeds": np.zeros((1, 2, 64), np.float32)}, function="decode", state=m.make_state("decode")
        )
    with pytest.raises(KeyError, match="missing"):
        m.predict({k: v for k, v in feeds.items() if k != "sin"}, function="decode", state=m.make_state("decode"))
    with pytest.raises(KeyError, match="no function 'main'"):
        m.predict(feeds, function="main")


# ---------------------------------------------------------------- weight compression
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 96), nn.Linear(96, 32)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)))


@pytest.fixture(scope="module")
def mlp_models():
    torch.manual_seed(3)
    mlp = MLP().eval()
    x = torch.randn(5, 64)
    base = {t: convert(mlp, (x,), [f16("x", (5, 64))], target=getattr(ct.target, t)) for t in ("iOS18", "iOS17")}
    return mlp, x, base


def _dequantized_reference(mlmodel, mlp):
    """The torch MLP with the weights coremltools itself decompresses (its own implementation)."""
    prog = mlmodel._mil_program
    weights = []
    for op in prog.functions["main"].operations:
        if op.op_type == "linear":
            w_op = op.weight.op
            weights.append(
                w_op.materialized_val_inference() if w_op.op_type.startswith("constexpr_") else op.weight.val
            )
    ref = MLP()
    ref.load_state_dict(mlp.state_dict())
    with torch.no_grad():
        ref.fc1.weight.copy_(torch.from_numpy(weights[0].astype(np.float32)))
        ref.fc2.weight.copy_(torch.from_numpy(weights[1].astype(np.float32)))
    return ref


COMPRESSIONS = {
    "int4_block32_ios18": (
        "iOS18",
        "constexpr_blockwise_shift_scale",
        lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=32, weight_threshold=0
        ),
    ),
    "int8_channel_ios17": (
        "iOS17",
        "constexpr_affine_dequantize",
        lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
        ),
    ),
    "int8_asym_channel_ios18": (
        "iOS18",
        "constexpr_blockwise_shift_scale",
        lambda: ct.optimize.coreml.OpLinearQuantizerConfig(
            mode="linear", dtype="int8", granularity="per_channel", weight_threshold=0
        ),
    ),
    "palette4_ios17": (
        "iOS17",
        "constexpr_lut_to_dense",
        lambda: ct.optimize.coreml.OpPalettizerConfig(nbits=4, mode="kmeans", weight_threshold=0),
    ),
    "palette4_grouped_ios18": (
        "iOS18",
        "constexpr_lut_to_dense",
        lambda: ct.optimize.coreml.OpPalettizerConfig(
            nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=16, weight_threshold=0
        ),
    ),
}


@pytest.mark.parametrize("name", list(COMPRESSIONS))
def test_compressed_weights(name, mlp_models):
    mlp, x, base = mlp_models
    target, op, cfg = COMPRESSIONS[name]
    opt = ct.optimize.coreml.OptimizationConfig(global_config=cfg())
    if "palette" in name:
        q = ct.optimize.coreml.palettize_weights(base[target], opt)
    else:
        q = ct.optimize.coreml.linear_quantize_weights(base[target], opt)
    m = MILModel(q)
    assert op in op_types(m)
    print(f"{name}: {sorted(op_types(m))}")
    out = m.predict({"x": x.numpy()})
    (value,) = out.values()
    with torch.no_grad():
        same_weights = _dequantized_reference(q, mlp)(x).numpy()
        original = mlp(x).numpy()
    same = agree(value, same_weights)  # the interpreter decompresses exactly as coremltools does
    orig = agree(
        value, original, cos_min=0.99, rel_max=0.25
    )  # and the quantized model is still the model (int4 is coarse)
    print(f"{name}: vs same weights {same[0]:.6f}/{same[1]:.1e}, vs fp32 original {orig[0]:.6f}/{orig[1]:.1e}")


def test_int4_weights_cached_or_not_give_the_same_result(mlp_models):
    mlp, x, base = mlp_models
    cfg = COMPRESSIONS["int4_block32_ios18"][2]()
    q = ct.optimize.coreml.linear_quantize_weights(
        base["iOS18"], ct.optimize.coreml.OptimizationConfig(global_config=cfg)
    )
    a = MILModel(q).predict({"x": x.numpy()})
    b = MILModel(q, cache_weights=False).predict({"x": x.numpy()})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_lean_load_reads_a_saved_package_weights_from_its_file(mlp_models, tmp_path):
    """Lean (cache_weights=False) on a saved package: no weight is read at load, each call reads the
    ones it uses from the weight file, memory-mapped (int4 unpacked there), with the same results."""
    from autoglm_runtime.mil.interpreter import FileValue

    mlp, x, base = mlp_models
    for name in ("int4_block32_ios18", "int8_channel_ios17", "palette4_ios17"):
        target, _, cfg = COMPRESSIONS[name]
        opt = ct.optimize.coreml.OptimizationConfig(global_config=cfg())
        compress = (
            ct.optimize.coreml.palettize_weights if "palette" in name else ct.optimize.coreml.linear_quantize_weights
        )
        path = tmp_path / f"{name}.mlpackage"
        compress(base[target], opt).save(str(path))
        lean = MILModel(path, cache_weights=False)
        files = [v for f in lean._functions.values() for v in f.constants.values() if isinstance(v, FileValue)]
        assert files and all(
            not isinstance(v, np.ndarray) or v.size < 64 for v in lean._functions["main"].constants.values()
        )
        a = MILModel(path).predict({"x": x.numpy()})
        b = lean.predict({"x": x.numpy()})
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=name)


def _int4_package(module, examples, inputs, path):
    cfg = COMPRESSIONS["int4_block32_ios18"][2]()
    q = ct.optimize.coreml.linear_quantize_weights(
        convert(module, examples, inputs), ct.optimize.coreml.OptimizationConfig(global_config=cfg)
    )
    q.save(str(path))
    return path


def test_int4_linear_kernel_matches_the_op_by_op_path(mlp_models, tmp_path):
    """Lean with ``int4_linear``: each int4 linear runs as onnxruntime MatMulNBits over the package's packed
    codes. The weights are code * scale in fp32 instead of rounded to fp16 first, so the outputs agree with
    the op-by-op path to fp16 rounding, not bit for bit."""
    pytest.importorskip("onnxruntime")
    mlp, x, _ = mlp_models
    path = _int4_package(mlp, (x,), [f16("x", (5, 64))], tmp_path / "mlp.mlpackage")
    exact = MILModel(path, cache_weights=False).predict({"x": x.numpy()})
    fast = MILModel(path, cache_weights=False, int4_linear=True)
    assert fast.fused_steps == 2  # fc1 and fc2
    got = fast.predict({"x": x.numpy()})
    for k in exact:
        agree(got[k], exact[k], cos_min=0.99999, rel_max=2e-3)
        assert got[k].dtype == exact[k].dtype == np.float16
    with pytest.raises(ValueError, match="lean-mode kernel"):
        MILModel(path, int4_linear=True)


class _Lookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(300, 64)

    def forward(self, ids):
        return self.table(ids)


def test_int4_gather_reads_only_its_rows_with_the_same_result(tmp_path):
    """Lean: ``gather`` of an int4 table dequantizes only the rows asked for; exact (repeats and
    negative indices included)."""
    torch.manual_seed(5)
    ids = torch.tensor([[3, 299, 3, 0, 17]], dtype=torch.int32)
    path = _int4_package(
        _Lookup(), (ids,), [ct.TensorType(name="ids", shape=(1, 5), dtype=np.int32)], tmp_path / "t.mlpackage"
    )
    lean = MILModel(path, cache_weights=False)
    assert lean.fused_steps == 1
    for feed in (ids.numpy(), np.array([[-1, 5, 5, 298, -300]], np.int32)):
        want = MILModel(path).predict({"ids": feed})
        got = lean.predict({"ids": feed})
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


# ---------------------------------------------------------------- fp16 semantics and errors (MIL built directly)
def _program(fn, shape=(4,), dtype=None):
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    return mb.program(
        input_specs=[mb.TensorSpec(shape=shape, dtype=dtype or types.fp16)], opset_version=ct.target.iOS18
    )(fn)


def test_fp16_rounds_after_every_op():
    from coremltools.converters.mil import Builder as mb

    def prog(x):
        y = mb.add(x=x, y=np.float16(1e-3))  # 1e-3 is below half an ulp of 2048: rounds away
        z = mb.sub(x=y, y=x)
        big = mb.mul(x=x, y=np.float16(100.0))  # 2048 * 100 overflows fp16
        return z, big

    m = MILModel(_program(prog))
    x = np.array([2048.0, 1.0, -2048.0, 0.5], np.float16)
    z, big = m.predict({"x": x}).values()
    assert z.dtype == np.float16
    np.testing.assert_array_equal(z, (x + np.float16(1e-3)) - x)  # numpy's own fp16 arithmetic
    assert z[0] == 0 and z[1] == 2.0**-10  # float32 all the way would give fp16(1e-3) = 0.0010004 everywhere
    assert np.isposinf(big[0]) and np.isneginf(big[2])


def test_unknown_op_is_a_clear_error():
    from coremltools.converters.mil import Builder as mb

    def prog(x):
        return mb.avg_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", name="pooled")

    m = MILModel(_program(prog, shape=(1, 1, 4, 4)))
    assert m.unsupported_ops() == ["avg_pool"]
    with pytest.raises(
        NotImplementedError,
        match=r"MIL op 'avg_pool' \(in function main, output 'pooled'\) is not supported by the interpreter",
    ):
        m.predict({"x": np.zeros((1, 1, 4, 4), np.float32)})


def test_op_failure_names_the_op():
    from coremltools.converters.mil import Builder as mb

    def prog(x):
        return mb.reshape(x=x, shape=[2, 2], name="r")

    m = MILModel(_program(prog))
    m._functions["main"].steps[0].inputs["shape"] = m._functions["main"].steps[0].inputs["x"]  # break it on purpose
    with pytest.raises(MILRuntimeError, match="MIL op 'reshape'"):
        m.predict({"x": np.ones(4, np.float32)})


def test_missing_package_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mlpackage"):
        MILModel(tmp_path / "nope.mlpackage")
