"""``autoglm-export ios`` end to end: Core ML packages, checked on Linux with our MIL interpreter.

Three real exports, shared by the module (each is ~30-60 s of coremltools conversion on two cores):

- ``dense18``: the embedded tiny model (dense decoder, image + audio), iOS 18, int4 per-block:
  state KV cache, multifunction ``prefill`` / ``decode`` decoder;
- ``dense17``: the same model for iOS 17, int8 per-channel: KV cache as inputs / outputs;
- ``moe18``: a Glm4vMoe checkpoint (dense layer 0 whose FFN width 48 int4 blocks of 32 don't divide,
  MoE layer 1) with a GlmAsr checkpoint attached, iOS 18 int4.

Each export has already passed the parity gate through the interpreter when the fixture returns
(``export_ios`` raises otherwise); the tests check the packages' specs, that the torch-side weight
rounding is coremltools' bit for bit, the decoder's chunking/padding, the refusals, and that a
wrong weight planted in a saved package is caught by ``autoglm-export validate``.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools")

from model_fixtures import AUDIO_FRAMES, IMAGE_HW, write_moe_checkpoints
from typer.testing import CliRunner

from autoglm_export.cli import app
from autoglm_export.errors import ExportError
from autoglm_export.pipeline import (
    export_bundle,
    validate_bundle,
)
from autoglm_export.request import ModelRequest
from autoglm_export.targets.coreml.convert import load_mil_program
from autoglm_export.targets.coreml.export import CoreMLOptions
from autoglm_export.targets.coreml.recipe import CoreMLRecipe
from autoglm_export.targets.coreml.twin import apply_coreml_quantization, dequantize, quantize_like_coreml
from autoglm_runtime.backends import backend_for_bundle
from autoglm_runtime.backends.coreml_backend import CoreMLBackend, causal_mask, default_engine
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.bundle import open_bundle, sha256_file
from autoglm_runtime.errors import BundleError
from autoglm_runtime.parity import (
    ParityReport,
    compare_arrays,
    thresholds_for,
)
from autoglm_runtime.trace import trace_request

CONTEXT = 128  # the calibration probes are up to 60 tokens + 6 decode steps
CHUNK = 16  # shorter than every probe: prefill runs in chunks, the last one padded
TINY = dict(preset="tiny", max_context=CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The eager references are tiny matmuls: on a busy 2-core machine torch's thread pool spins far
    longer than it computes (measured: 10-18 s vs 0.5 s for the three probes). One thread here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _export(out: Path, request: ModelRequest, package_params: int | None = None, **recipe) -> Path:
    options = CoreMLOptions(
        out=out, recipe=CoreMLRecipe(**recipe), prefill_chunk=CHUNK, engine="mil", decoder_package_params=package_params
    )
    path, report = export_bundle("coreml", request, options)
    assert report is not None and report.passed
    return path


@pytest.fixture(scope="module")
def dense18(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ios") / "dense18", ModelRequest(**TINY))


@pytest.fixture(scope="module")
def dense17(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ios") / "dense17", ModelRequest(**TINY), min_ios=17, weights="int8")


@pytest.fixture(scope="module")
def chained18(tmp_path_factory):
    """The decoder as a chain of packages (a layer each, then the head), as a 9B decoder is exported."""
    return _export(tmp_path_factory.mktemp("ios") / "chained18", ModelRequest(**TINY), package_params=1)


@pytest.fixture(scope="module")
def chained17(tmp_path_factory):
    request = ModelRequest(**TINY)
    return _export(tmp_path_factory.mktemp("ios") / "chained17", request, package_params=1, min_ios=17, weights="int8")


@pytest.fixture(scope="module")
def moe18(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    ckpt, asr = write_moe_checkpoints(root)
    request = ModelRequest(ckpt, asr, max_context=CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES)
    return _export(root / "bundle", request)


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _parity(bundle: Path) -> ParityReport:
    return ParityReport.read(bundle / "parity.json")


def _names(features: list[dict]) -> list[str]:
    return [f["name"] for f in features]


# ---------------------------------------------------------------- iOS 18


def test_ios18_bundle_layout_and_specs(dense18):
    m = _manifest(dense18)
    assert m["target"] == "coreml" and m["validated"] and m["validated_with"] == "mil"
    c = m["coreml"]
    assert c["min_ios"] == 18 and c["prefill_chunk"] == CHUNK
    pk = c["packages"]
    assert {p["file"] for p in pk.values()} == {
        "VisionEncoder.mlpackage",
        "AudioEncoder.mlpackage",
        "TokenEmbedding.mlpackage",
        "TextDecoder.mlpackage",
    }
    # every file inside every package is hashed in the manifest, and nothing else is there
    on_disk = {
        p.relative_to(dense18).as_posix() for p in dense18.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    assert set(m["files"]) == on_disk
    assert {
        "tokenizer.json",
        "parity.json",
        "TextDecoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
    } <= on_disk

    dec = pk["text_decoder"]
    assert set(dec["functions"]) == {"prefill", "decode"} and dec["kv_cache"] == "state"
    for fname, seq in (("prefill", CHUNK), ("decode", 1)):
        f = dec["functions"][fname]
        assert _names(f["inputs"]) == ["inputs_embeds", "position_ids", "causal_mask"]
        assert f["inputs"][0]["shape"] == [1, seq, 128] and f["inputs"][0]["dtype"] == "float16"
        assert f["inputs"][1] == {"name": "position_ids", "shape": [3, seq], "dtype": "int32"}
        assert f["inputs"][2]["shape_range"][-1] == [seq, CONTEXT]  # the mask's end: where the call writes
        assert _names(f["outputs"]) == ["logits"]
        assert [(s["name"], s["shape"], s["dtype"]) for s in f["states"]] == [
            (n, [4, 1, 2, CONTEXT, 32], "float16") for n in ("keyCache", "valueCache")
        ]
        ops = dec["ops"][fname]
        for op in (
            "constexpr_blockwise_shift_scale",
            "scaled_dot_product_attention",
            "read_state",
            "write_state",  # as saved (coremltools' reader shows the pair as coreml_update_state)
            "slice_update",
        ):
            assert ops.get(op), f"{fname} lacks {op}: {ops}"
        assert ops["constexpr_blockwise_shift_scale"] == ops["linear"]  # every linear is int4
    # the two functions share one copy of the weights: the package's weight file is no bigger than
    # one function converted on its own
    assert dec["weight_bytes"] <= min(dec["separate_function_bytes"].values())
    # the toolchain saw iOS 18: specification version 9
    assert all(p["specification_version"] == 9 for p in pk.values())
    assert pk["token_embedding"]["ops"]["main"]["constexpr_blockwise_shift_scale"] == 1
    assert m["quantization"]["kinds"]["text_decoder"] == "weight_only_fp16"
    assert m["quantization"]["fallbacks"] == ["vision.patch_embed.proj"]  # 1176 inputs: int8 per channel


def test_ios18_parity_report(dense18):
    report = _parity(dense18)
    assert report.passed and report.info["engine"] == "mil"
    rows = {(r["component"], r["reference"]): r for r in report.rows}
    assert set(rows) == {
        (c, ref)
        for c in ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder")
        for ref in ("quantized_eager", "fp32")
    }
    faithful = rows[("text_decoder", "quantized_eager")]["metrics"]
    assert faithful["cosine"] > 0.9999 and faithful["top1_agreement"] == 1.0
    # teacher-forced rows: 3 probes (60, 44, 31 prompt tokens) + 6 decode steps each
    assert faithful["shape"] == [60 + 44 + 31 + 18, 4096]


def test_torch_rounding_is_coremltools_rounding(dense18):
    """quantize_like_coreml (the eager reference's weights) == the integers and scales in the packages."""
    from coremltools.converters.mil.mil import types

    from autoglm_export.source import open_source

    model = open_source(max_context=CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES).model
    params = {}
    for name, p in model.named_parameters():
        params[name.replace(".", "_")] = p
        params["model_" + name.replace(".", "_")] = p
    checked = 0
    for pkg in ("TextDecoder", "VisionEncoder", "AudioEncoder", "TokenEmbedding"):
        prog = load_mil_program(dense18 / f"{pkg}.mlpackage")
        fn = next(iter(prog.functions.values()))
        for op in fn.operations:
            if op.op_type != "constexpr_blockwise_shift_scale":
                continue
            weight = params[op.outputs[0].name.removesuffix("_to_fp16_quantized")]
            data, scale = np.asarray(op.data.val), np.asarray(op.scale.val)
            scheme = types.builtin_to_string(op.data.dtype)  # "int4", or "int8" for the per-channel fallbacks
            q, s = quantize_like_coreml(weight, scheme, 32)
            np.testing.assert_array_equal(data.astype(np.int8), q.numpy(), err_msg=op.name)
            np.testing.assert_array_equal(scale, s.numpy(), err_msg=op.name)
            checked += 1
    assert checked == 25 + 16 + 14 + 1  # decoder linears (lm_head incl.), vision, audio, embedding table


def test_quantize_like_coreml_arithmetic():
    w = torch.tensor([[0.7, -0.35, 0.1, 0.0] * 8, [0.0] * 32])
    q, s = quantize_like_coreml(w, "int4", 32)
    assert s.dtype == torch.float16 and q.dtype == torch.int8
    assert q[0, :4].tolist() == [7, -4, 1, 0] and q[1].abs().sum() == 0  # -3.5 rounds to even; zero row stays 0
    np.testing.assert_allclose(dequantize(q, s)[0, 0], 0.7, rtol=1e-3)
    assert quantize_like_coreml(torch.zeros(2, 48), "int4", 32) is None  # 48 inputs: no int4 blocks of 32
    q8, s8 = quantize_like_coreml(torch.randn(3, 48), "int8", 32)
    assert s8.shape == (3, 1) and q8.abs().max() == 127


def test_constant_deduplication_compares_in_slices(monkeypatch):
    """Inside a conversion and a multifunction save, coremltools' constant deduplication compares candidates
    with the sliced allclose (its whole-array one made float64 temporaries of the 9B lm_head: 18 GB at 4
    real-width layers); the answer is numpy's own, NaNs, tolerances and broadcasting included."""
    import importlib

    from autoglm_export.targets.coreml import convert

    monkeypatch.setattr(convert, "SCAN_SLICE", 7)  # many slices, a ragged last one
    rng = np.random.default_rng(0)
    a = rng.standard_normal(50).astype(np.float16)
    cases = [(a, a.copy()), (a, a + np.float16(1e-3)), (a.astype(np.int8), a.astype(np.int8))]
    b = a.copy()
    b[49] = np.nan
    cases += [(b, b), (a.reshape(5, 10), a[:10])]
    sliced = convert._SlicedAllclose()
    for x, y in cases:
        for kw in ({}, {"rtol": 0.0, "atol": 1e-2}, {"equal_nan": True}):
            assert sliced.allclose(x, y, **kw) == np.allclose(x, y, **kw), (x.dtype, kw)
    module = importlib.import_module("coremltools.converters.mil.mil.passes.defs.cleanup.const_deduplication")
    with convert._lean_const_deduplication():
        assert isinstance(module.np, convert._SlicedAllclose) and module.np.ndarray is np.ndarray
    assert module.np is np


def test_backend_pads_chunks_and_falls_back_to_decode(dense18):
    """Odd chunk sizes and a chunk that would run past the context give the eager model's logits."""
    from autoglm_export.source import open_source

    src = open_source(max_context=CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES)
    apply_coreml_quantization(src.model, CoreMLRecipe())
    eager, coreml = TorchBackend(src.model), backend_for_bundle(open_bundle(dense18))
    assert isinstance(coreml, CoreMLBackend) and coreml.engine_name == "mil"
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4000, size=(1, 123))
    embeds = eager.token_embedding(ids)
    pos = np.broadcast_to(np.arange(123), (3, 123)).copy()
    got, ref = [], []
    # 37 tokens: 2 full prefills + 5 padded to 16; then 76 (prefill chunks, the last one padded);
    # then 10 tokens at slot 113: 113 + 16 > 128, so they go through `decode` one by one.
    for a, b in ((0, 37), (37, 113), (113, 123)):
        got.append(coreml.text_decoder(embeds[:, a:b], np.arange(a, b), pos[:, a:b]))
        ref.append(eager.text_decoder(embeds[:, a:b], np.arange(a, b), pos[:, a:b]))
    got, ref = np.concatenate(got, 1), np.concatenate(ref, 1)
    metrics = compare_arrays("text_decoder", got, ref, logits=True)
    assert metrics.check(thresholds_for("quantized_eager", "weight_only_fp16", "text_decoder")) == []
    with pytest.raises(BundleError, match="exceed the exported context"):
        coreml.text_decoder(embeds[:, :10], np.arange(123, 133), pos[:, :10])
    with pytest.raises(BundleError, match="consecutive"):
        coreml.text_decoder(embeds[:, :2], np.array([0, 2]), pos[:, :2])
    coreml.reset()  # a fresh state: slot 0 alone again
    eager.reset()
    one = compare_arrays(
        "text_decoder",
        coreml.text_decoder(embeds[:, 5:6], np.arange(1), pos[:, :1]),
        eager.text_decoder(embeds[:, 5:6], np.arange(1), pos[:, :1]),
        logits=True,
    )
    assert one.cosine > 0.9999


def test_rms_norm_survives_fp16_outliers():
    """|x| ~ 1e3 squares to ~1e6, past fp16's 65504: the packages' RMSNorm must not overflow."""
    from autoglm_export.model.text import RMSNorm
    from autoglm_export.targets.coreml.convert import _convert, _tensor, _trace
    from autoglm_runtime.mil import MILModel

    torch.manual_seed(0)
    block = torch.nn.Sequential(RMSNorm(64, 1e-5))
    block[0].weight.data = torch.rand(64) + 0.5
    x = torch.randn(1, 3, 64) * 1000
    ml = _convert(
        _trace(block, (x,)),
        recipe=CoreMLRecipe(),
        inputs=[_tensor("x", (1, 3, 64), np.float16)],
        outputs=[_tensor("y", None, np.float16)],
    )
    ops = {op.op_type for op in ml._mil_program.functions["main"].operations}
    assert "layer_norm" in ops and "pow" not in ops
    got = MILModel(ml).predict({"x": x.numpy().astype(np.float16)})["y"]
    with torch.no_grad():
        ref = block(x).numpy()  # the model's own RMSNorm again (the trace override is gone), fp32
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.astype(np.float32), ref, rtol=5e-3, atol=5e-3)


def test_causal_mask_and_engine_choice(monkeypatch):
    m = causal_mask(3, 2)
    assert m.shape == (1, 1, 2, 5) and m.dtype == np.float16
    assert np.isneginf(m[0, 0, 0, 4]) and m[0, 0, 0, 3] == 0 and (m[0, 0, 1] == 0).all()
    monkeypatch.delenv("AUTOGLM_COREML_ENGINE", raising=False)
    import autoglm_runtime.backends.coreml_backend as cb

    monkeypatch.setattr(cb.sys, "platform", "linux")
    assert default_engine() == "mil"
    monkeypatch.setattr(cb.sys, "platform", "darwin")
    monkeypatch.setattr(cb.platform, "mac_ver", lambda: ("15.2", ("", "", ""), "arm64"))
    assert default_engine() == "mlmodel"
    monkeypatch.setattr(cb.platform, "mac_ver", lambda: ("14.6", ("", "", ""), "arm64"))
    assert default_engine() == "mil"  # states need macOS 15
    monkeypatch.setenv("AUTOGLM_COREML_ENGINE", "mil")
    assert default_engine() == "mil"
    monkeypatch.setenv("AUTOGLM_COREML_ENGINE", "tpu")
    with pytest.raises(BundleError, match="AUTOGLM_COREML_ENGINE"):
        default_engine()


def test_run_generates_through_the_interpreter(dense18):
    result = CliRunner().invoke(app, ["run", str(dense18), "-p", "打开微信", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "coreml (our MIL interpreter" in result.output and "4 generated" in result.output


def _blob(package: Path, function: str, op_name: str, arg: str) -> tuple[int, int]:
    """(data offset, bytes) in weight.bin of input ``arg`` of op ``op_name`` of a saved package."""
    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions[function]
    for op in fn.block_specializations[fn.opset].operations:
        if op.outputs and op.outputs[0].name == op_name:
            offset = op.inputs[arg].arguments[0].value.blobFileValue.offset
            raw = (package / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()[offset : offset + 24]
            sentinel, _, size, data_offset = struct.unpack("<IIQQ", raw)
            assert sentinel == 0xDEADBEEF
            return data_offset, size
    raise KeyError(op_name)


def test_planted_wrong_weight_is_caught(dense18, tmp_path):
    bundle = tmp_path / "tampered"
    shutil.copytree(dense18, bundle)
    pkg = bundle / "TextDecoder.mlpackage"
    offset, size = _blob(pkg, "decode", "text_layers_1_mlp_down_proj_weight_to_fp16_quantized", "scale")
    weights = pkg / "Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(weights.read_bytes())
    scales = np.frombuffer(bytes(data[offset : offset + size]), np.float16)
    data[offset : offset + size] = (-scales).tobytes()  # one layer's down_proj, sign-flipped
    weights.write_bytes(bytes(data))
    name = "TextDecoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    with pytest.raises(BundleError, match="sha256 mismatch"):
        open_bundle(bundle)  # the hash check catches the edit first ...
    manifest = _manifest(bundle)
    manifest["files"][name]["sha256"] = sha256_file(weights)  # ... so re-hash, as a careless rebuild would
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = validate_bundle(bundle)  # `autoglm-export validate`: fresh references, packages re-run
    assert not report.passed
    failed = {(r["component"], r["reference"]) for r in report.rows if not r["passed"]}
    assert ("text_decoder", "quantized_eager") in failed
    assert all(r["passed"] for r in report.rows if r["component"] != "text_decoder")


def test_validate_command_passes_on_an_untouched_bundle(dense18):
    result = CliRunner().invoke(app, ["validate", str(dense18)])
    assert result.exit_code == 0, result.output
    assert "parity passed" in result.output


# ---------------------------------------------------------------- iOS 17


def test_ios17_explicit_cache_int8(dense17):
    m = _manifest(dense17)
    c = m["coreml"]
    assert c["min_ios"] == 17 and _parity(dense17).passed
    dec = c["packages"]["text_decoder"]
    assert list(dec["functions"]) == ["main"] and dec["kv_cache"] == "inputs_outputs"
    f = dec["functions"]["main"]
    assert f["states"] == []
    assert _names(f["inputs"]) == ["inputs_embeds", "position_ids", "causal_mask", "key_cache", "value_cache"]
    assert f["inputs"][0]["shape_range"][1] == [1, CHUNK]  # 1..prefill_chunk tokens per call
    assert f["inputs"][3]["shape"] == [4, 1, 2, CONTEXT, 32]
    assert _names(f["outputs"]) == ["logits", "key_update", "value_update"]
    for pkg in c["packages"].values():
        assert pkg["specification_version"] == 8  # iOS 17
        ops = next(iter(pkg["ops"].values()))
        assert ops.get("constexpr_affine_dequantize") and "constexpr_blockwise_shift_scale" not in ops
        assert "read_state" not in ops and "scaled_dot_product_attention" not in ops  # fused SDPA is iOS 18
    assert m["quantization"]["fallbacks"] == []  # int8 per channel fits every width


# ---------------------------------------------------------------- the decoder as a chain of packages


@pytest.mark.parametrize("bundle", ["chained18", "chained17"])
def test_chained_decoder_packages_pass_the_gate(bundle, request, dense18):
    """Each package holds its layers' cache and hands hidden_states to the next; the gate ran the chain
    (export_bundle raised otherwise) and its logits are those of the one-package decoder."""
    path = request.getfixturevalue(bundle)
    dec = _manifest(path)["coreml"]["packages"]["text_decoder"]
    chunks = dec["chunks"]
    layers = dec["cache_shape"][0]
    assert [c["layers"] for c in chunks] == [[i, i + 1] for i in range(layers)] + [[layers, layers]]
    assert [c["head"] for c in chunks] == [False] * layers + [True]
    assert [c["file"] for c in chunks] == [
        f"TextDecoder-{i:02d}of{layers + 1:02d}.mlpackage" for i in range(1, layers + 2)
    ]
    assert not (path / "TextDecoder.mlpackage").exists() and dec["file"] == chunks[0]["file"]
    for c in chunks:
        fn = next(iter(c["functions"].values()))
        assert _names(fn["outputs"])[0] == c["output"] == ("logits" if c["head"] else "hidden_states")
        assert c["cache_shape"] == (None if c["head"] else [1, *dec["cache_shape"][1:]])
        assert (path / c["file"]).is_dir()
    assert dec["bytes"] == sum(c["bytes"] for c in chunks)
    if bundle == "chained18":
        ids = np.arange(1, 21)[None]
        pos = np.tile(np.arange(20), (3, 1))
        outs = []
        for b in (dense18, path):
            be = CoreMLBackend.from_bundle(open_bundle(b), engine="mil")
            outs.append(be.text_decoder(be.token_embedding(ids), np.arange(20), pos))
        np.testing.assert_allclose(outs[0], outs[1], atol=2e-2)


def test_trace_of_a_chained_decoder_names_each_package(chained18):
    """The golden trace (what the iOS app replays) records every decoder package under its own file."""
    b = open_bundle(chained18)
    trace = trace_request(b, CoreMLBackend.from_bundle(b, engine="mil"), "hi", max_new_tokens=2)
    files = [c["file"] for c in _manifest(chained18)["coreml"]["packages"]["text_decoder"]["chunks"]]
    decoder_calls = [c["method"] for c in trace["calls"] if c["method"].startswith("TextDecoder")]
    assert decoder_calls[: len(files)] == files and len(decoder_calls) % len(files) == 0


# ---------------------------------------------------------------- MoE


def test_moe18_parity_and_router_kept_fp16(moe18):
    report = _parity(moe18)
    assert report.passed
    dec = _manifest(moe18)["coreml"]["packages"]["text_decoder"]
    for fname in ("prefill", "decode"):
        ops = dec["ops"][fname]
        assert ops["topk"] == 1 and ops["sigmoid"] == 1
        # every linear compressed except the one MoE layer's router
        assert ops["constexpr_blockwise_shift_scale"] == ops["linear"] - 1
    # layer 0's down_proj (48 inputs) cannot take int4 blocks of 32: int8 per channel
    assert "text.layers.0.mlp.down_proj" in _manifest(moe18)["quantization"]["fallbacks"]


# ---------------------------------------------------------------- refusals (before any work)


def test_int4_on_ios17_is_refused_before_any_work(tmp_path, monkeypatch):
    def boom(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ModelRequest, "open", boom)
    with pytest.raises(ExportError, match="int4 needs --min-ios 18"):
        CoreMLRecipe(weights="int4", min_ios=17)
    out = tmp_path / "ios"
    result = CliRunner().invoke(app, ["ios", "--min-ios", "17", "--quant", "int4", "--out", str(out)])
    assert result.exit_code == 1 and "int4 needs --min-ios 18" in result.output
    assert not out.exists()
    for args, msg in (
        (["--min-ios", "16"], "expected 17 or 18"),
        (["--quant", "int2"], "expected one of"),
        (["--block-size", "24"], "--block-size 24"),
        (["--compute-units", "gpu"], "--compute-units gpu"),
    ):
        result = CliRunner().invoke(app, ["ios", "--out", str(out), *args])
        assert result.exit_code == 1 and msg in result.output, result.output
    (out / "x").parent.mkdir()
    (out / "x").write_text("mine")
    result = CliRunner().invoke(app, ["ios", "--out", str(out), "--force"])
    assert result.exit_code == 1 and "not an autoglm-export bundle" in result.output
