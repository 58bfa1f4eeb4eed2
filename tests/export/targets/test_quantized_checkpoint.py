"""``--quantized-checkpoint`` for the ONNX and Core ML targets: the checkpoint's integers, exactly.

The checkpoint is made here without GPTQ: per group, the clipping ratio (of torchao's symmetric
grid scale) with the smallest squared error, so its codes and scales are *not* what round-to-nearest
gives (an exporter that re-rounded the weights, or exported the original ones, would not reproduce
them), and its int4 codes use -8, which coremltools' own ``linear_symmetric`` never produces. Two
linears are left out of it (they must stay unquantized). The recipe is calibrate's default: int4
groups of 32 in the decoder, int8 per-channel in the towers.

Two real exports (tiny model, small shapes), each through the parity gate:

- ONNX through the CLI: int4 layers as MatMulNBits, int8 ones as 8-bit MatMulNBits;
- Core ML for iOS 18 through the library: constexpr_blockwise_shift_scale (int4 and int8).

Then ``validate`` on both bundles, an iOS 17 encoder (constexpr_affine_dequantize), and the
refusals: a checkpoint of another model, int4 with --min-ios 17, a conflicting --block-size,
``--quant fp32``, a checkpoint changed after the export.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("coremltools")

from model_fixtures import AUDIO_FRAMES, IMAGE_HW
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from autoglm_export.cli import app
from autoglm_export.errors import CheckpointError
from autoglm_export.pipeline import (
    export_bundle,
    validate_bundle,
)
from autoglm_export.quantize import QuantRecipe, grid, qcheckpoint
from autoglm_export.request import ModelRequest
from autoglm_export.summary import model_summary
from autoglm_export.targets.coreml.convert import convert_audio_encoder, load_mil_program
from autoglm_export.targets.coreml.export import CoreMLOptions
from autoglm_export.targets.coreml.recipe import CoreMLRecipe
from autoglm_export.targets.onnx.convert import constant_matmuls
from autoglm_export.targets.onnx.twin import CHECKPOINT_FP32
from autoglm_runtime.bundle import MANIFEST_NAME, open_bundle
from autoglm_runtime.parity import ParityReport

runner = CliRunner()
CONTEXT = 128
REQUEST = ModelRequest(preset="tiny", max_context=CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES)
SHAPE_ARGS = [
    "--max-context-len",
    str(CONTEXT),
    "--image-size",
    f"{IMAGE_HW[0]}x{IMAGE_HW[1]}",
    "--audio-frames",
    str(AUDIO_FRAMES),
]
RECIPE = QuantRecipe(linear="8da4w", group_size=32, encoder="8da8w", embedding="8")
LEFT_FP32 = ("text.layers.1.self_attn.o_proj", "vision.blocks.0.mlp.up_proj")  # quantizable, left out of the checkpoint
PREFIX = {"text_decoder": "text.", "vision_encoder": "vision.", "audio_encoder": "audio."}
FAITHFUL = 2e-5  # onnxruntime vs the eager model with the same weights (measured ~1e-6)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny eager matmuls on a busy 2-core machine: one torch thread is faster (see test_coreml.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _error_line(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def clipped_codes(weight: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes on the checkpoint grid with, per group, the clip ratio of least squared error (not RTN)."""
    _, base = grid.round_to_nearest(weight, bits, group)
    best = None
    for ratio in (1.0, 0.95, 0.9, 0.85, 0.8):
        scales = base * ratio
        codes = grid.quantize_to_codes(weight, scales, bits)
        err = ((grid.dequantize_codes(codes, scales) - weight) ** 2).reshape(weight.shape[0], -1, group).sum(-1)
        if best is None:
            best = (err, codes, scales)
            continue
        better = err < best[0]
        best = (
            torch.where(better, err, best[0]),
            torch.where(better.repeat_interleave(group, 1), codes, best[1]),
            torch.where(better, scales, best[2]),
        )
    return best[1], best[2]


def write_quantized_checkpoint(out: Path, request: ModelRequest = REQUEST) -> Path:
    src = request.open()
    linears = {}
    for fqn, (mod, bits, group) in qcheckpoint.quantizable_linears(src.model, RECIPE).items():
        if fqn not in LEFT_FP32:
            linears[fqn] = qcheckpoint.QuantizedLinear(*clipped_codes(mod.weight.detach().float(), bits, group), bits)
    config = {"method": "test", "recipe": RECIPE.to_dict(), "model": model_summary(src), "source": request.to_dict()}
    return qcheckpoint.save(qcheckpoint.from_model(src.model, linears, config), out)


@pytest.fixture(scope="module")
def qckpt(tmp_path_factory):
    path = write_quantized_checkpoint(tmp_path_factory.mktemp("qc") / "quantized")
    return path, qcheckpoint.load(path)


@pytest.fixture(scope="module")
def onnx_bundle(qckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "onnx"
    result = runner.invoke(
        app, ["onnx", "--quantized-checkpoint", str(qckpt[0]), "--out", str(out), "--max-seq-len", "32", *SHAPE_ARGS]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return out


@pytest.fixture(scope="module")
def ios_bundle(qckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("ios") / "ios"
    request = replace(REQUEST, quantized_checkpoint=qckpt[0])
    opts = CoreMLOptions(out=out, recipe=CoreMLRecipe(block_size=None), prefill_chunk=16, engine="mil")
    path, report = export_bundle("coreml", request, opts)
    assert report is not None and report.passed
    return path


def _fp32_matmul_weights(model) -> list[np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    return [numpy_helper.to_array(inits[n.input[1]]) for n in constant_matmuls(model)]


def _graph_codes(model) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """fqn -> (bits, codes [N, K] int, scales [N, blocks]) read back from every MatMulNBits of a graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert "accuracy_level" not in attrs, "fp32 compute: activations are not quantized"
        assert len(node.input) == 3, "symmetric: the default zero point (8 / 128), no zero-point input"
        bits, k, n = attrs["bits"], attrs["K"], attrs["N"]
        raw = inits[node.input[1]].reshape(n, -1)
        if bits == 4:
            codes = np.stack([raw & 0xF, raw >> 4], -1).reshape(n, -1).astype(np.int16) - 8
        else:
            codes = raw.astype(np.int16) - 128
        fqn = node.input[1].rsplit(".qweight_int", 1)[0]
        out[fqn] = (bits, codes[:, :k], inits[node.input[2]].reshape(n, -1))
    return out


# --------------------------------------------------------------------------- the checkpoint itself


def test_checkpoint_codes_are_not_round_to_nearest(qckpt):
    _, qc = qckpt
    model = REQUEST.open().model
    weights = dict(model.named_parameters())
    changed = total = 0
    for fqn, q in qc.linears.items():
        rtn, _ = grid.round_to_nearest(weights[f"{fqn}.weight"].detach().float(), q.bits, q.group_size)
        changed += int((rtn != q.codes).sum())
        total += rtn.numel()
    assert changed > 0.01 * total, "the test checkpoint must not be round-to-nearest"
    int4 = [q for q in qc.linears.values() if q.bits == 4]
    assert int4 and all(q.group_size == 32 for q in int4) and any(int(q.codes.min()) == -8 for q in int4)
    assert {f.split(".", 1)[0] for f, q in qc.linears.items() if q.bits == 8} == {"vision", "audio"}
    assert not set(LEFT_FP32) & set(qc.linears)


# --------------------------------------------------------------------------- ONNX


def test_onnx_bundle_holds_the_checkpoint_integers(onnx_bundle, qckpt):
    path, qc = qckpt
    bundle = open_bundle(onnx_bundle)
    m = bundle.manifest
    assert m["source"]["quantized_checkpoint"] == str(path)
    info = m["quantization"]["quantized_checkpoint"]
    assert info["path"] == str(path) and info["method"] == "test" and info["layers"] == len(qc.linears)
    assert info["sha256"] == qc.config["files"]
    assert m["quantization"]["recipe"] == {"scheme": "int4", "block_size": 32}  # the checkpoint's group size
    layers = m["quantization"]["layers"]
    assert all(layers[f] == CHECKPOINT_FP32 for f in LEFT_FP32)
    assert layers["text.layers.0.self_attn.q_proj"].startswith("int4 (MatMulNBits")
    assert layers["vision.blocks.0.attn.qkv"].startswith("int8 per-channel")
    assert m["quantization"]["kinds"] == {
        "vision_encoder": "weight_only",
        "audio_encoder": "weight_only",
        "token_embedding": "fp32",
        "text_decoder": "weight_only",
    }

    parity = ParityReport.read(onnx_bundle / "parity.json")
    assert parity.passed
    for row in parity.rows:
        if row["reference"] == "quantized_eager":
            assert row["metrics"]["rel_max_abs"] <= FAITHFUL, row  # the eager twin has exactly these weights

    found = {}
    for comp, entry in m["models"].items():
        model = onnx.load(str(onnx_bundle / entry["file"]))
        codes = _graph_codes(model)
        want = {f: q for f, q in qc.linears.items() if f.startswith(PREFIX.get(comp, "-"))}
        assert set(codes) == set(want), comp
        assert entry["matmul_nbits"] == len(want) and entry.get("matmul_nbits_int8", 0) == sum(
            q.bits == 8 for q in want.values()
        )
        found.update(codes)
        # the linears the checkpoint leaves fp32 are plain fp32 MatMuls with the checkpoint's weights
        left = [f for f in LEFT_FP32 if f.startswith(PREFIX.get(comp, "-"))]
        assert len(entry["fp32_matmuls"]) == len(left) and all(any(f in r for r in entry["fp32_matmuls"]) for f in left)
        weights = _fp32_matmul_weights(model)
        for f in left:
            w = qc.params[f"{f}.weight"].T.numpy()
            assert any(b.shape == w.shape and np.array_equal(b, w) for b in weights), f
    assert set(found) == set(qc.linears)
    for fqn, (bits, codes, scales) in found.items():
        q = qc.linears[fqn]
        assert bits == q.bits and np.array_equal(codes, q.codes.numpy()), fqn
        if bits == 4:
            np.testing.assert_array_equal(scales, q.scales.numpy(), err_msg=fqn)
        else:  # per channel: the row's scale in every block
            np.testing.assert_array_equal(scales, np.repeat(q.scales.numpy(), scales.shape[1], axis=1), err_msg=fqn)


def test_onnx_validate_rebuilds_references_with_the_checkpoint(onnx_bundle, qckpt, tmp_path):
    result = runner.invoke(app, ["validate", str(onnx_bundle)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "parity passed" in result.stderr

    # the checkpoint the manifest names was re-saved with other weights: refused, not silently compared
    path, qc = qckpt
    changed = tmp_path / "changed"
    shutil.copytree(path, changed)
    fqn = "text.lm_head"
    q = qc.linears[fqn]
    linears = {**qc.linears, fqn: qcheckpoint.QuantizedLinear(q.codes.flip(0), q.scales.flip(0), q.bits)}
    qcheckpoint.save(qcheckpoint.QuantizedCheckpoint(dict(qc.config), linears, qc.params), changed, force=True)
    copy = tmp_path / "bundle"
    shutil.copytree(onnx_bundle, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["source"]["quantized_checkpoint"] = str(changed)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert "changed since this bundle was exported" in _error_line(runner.invoke(app, ["validate", str(copy)]))


# --------------------------------------------------------------------------- Core ML


def _constexpr_values(package: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per function: (integer data, fp16 scale) of every constexpr op feeding a linear."""
    prog = load_mil_program(package)
    out = {}
    for fname, fn in prog.functions.items():
        vals = []
        for op in fn.operations:
            if op.op_type == "linear" and op.weight.op is not None and op.weight.op.op_type.startswith("constexpr"):
                c = op.weight.op
                assert c.op_type == "constexpr_blockwise_shift_scale" and c.offset is None, c
                vals.append((np.asarray(c.data.val).astype(np.int16), np.asarray(c.scale.val)))
        out[fname] = vals
    return out


def _plain_linear_weights(package: Path) -> list[np.ndarray]:
    prog = load_mil_program(package)
    return [
        np.asarray(op.weight.val)
        for fn in prog.functions.values()
        for op in fn.operations
        if op.op_type == "linear" and op.weight.op is not None and op.weight.op.op_type == "const"
    ]


def test_ios_packages_hold_the_checkpoint_integers(ios_bundle, qckpt):
    path, qc = qckpt
    m = open_bundle(ios_bundle).manifest
    assert m["source"]["quantized_checkpoint"] == str(path)
    assert m["quantization"]["quantized_checkpoint"]["layers"] == len(qc.linears)
    assert m["quantization"]["recipe"]["block_size"] == 32  # from the checkpoint (CoreMLRecipe(block_size=None))
    layers = m["quantization"]["layers"]
    assert layers["text.layers.0.self_attn.q_proj"] == "int4/b32 (quantized checkpoint)"
    assert layers["vision.blocks.0.attn.qkv"] == "int8 (quantized checkpoint)"
    assert all(layers[f].startswith("fp16 (fp32 in the quantized checkpoint") for f in LEFT_FP32)
    parity = ParityReport.read(ios_bundle / "parity.json")
    assert parity.passed and all(r["passed"] for r in parity.rows)

    for comp, entry in m["coreml"]["packages"].items():
        if comp == "token_embedding":
            continue
        want = {f: q for f, q in qc.linears.items() if f.startswith(PREFIX[comp])}
        package = ios_bundle / entry["file"]
        for fname, vals in _constexpr_values(package).items():
            assert len(vals) == len(want), (comp, fname)
            for fqn, q in want.items():  # the checkpoint's codes exactly, its scales in fp16
                hits = [s for d, s in vals if d.shape == tuple(q.codes.shape) and np.array_equal(d, q.codes.numpy())]
                assert len(hits) == 1, (comp, fname, fqn)
                np.testing.assert_array_equal(hits[0], q.scales.to(torch.float16).numpy(), err_msg=fqn)
        plain = _plain_linear_weights(package)
        for f in LEFT_FP32:
            if f.startswith(PREFIX[comp]):
                w = qc.params[f"{f}.weight"].to(torch.float16).numpy()
                assert any(p.shape == w.shape and np.array_equal(p, w) for p in plain), f


def test_ios_validate_rebuilds_references_with_the_checkpoint(ios_bundle):
    report = validate_bundle(ios_bundle)
    assert report.passed, report.lines()


def test_ios17_int8_checkpoint_layers_are_affine_dequantize(qckpt, tmp_path):
    """iOS 17 has no blockwise op: int8 per-channel checkpoint layers become constexpr_affine_dequantize."""
    _, qc = qckpt
    src = REQUEST.open()
    qcheckpoint.load_into_model(qc, src.model)
    package = tmp_path / "AudioEncoder.mlpackage"
    convert_audio_encoder(src.model, CoreMLRecipe(weights="int8", min_ios=17), package, fixed=qc.linears)
    want = {f: q for f, q in qc.linears.items() if f.startswith("audio.")}
    ops = [
        op.weight.op
        for fn in load_mil_program(package).functions.values()
        for op in fn.operations
        if op.op_type == "linear" and op.weight.op is not None and op.weight.op.op_type != "const"
    ]
    assert len(ops) == len(want) and {op.op_type for op in ops} == {"constexpr_affine_dequantize"}
    for fqn, q in want.items():
        hits = [op for op in ops if np.array_equal(np.asarray(op.quantized_data.val), q.codes.numpy())]
        assert len(hits) == 1, fqn
        op = hits[0]
        assert int(op.axis.val) == 0 and not np.asarray(op.zero_point.val).any()
        np.testing.assert_array_equal(
            np.asarray(op.scale.val).reshape(-1), q.scales.to(torch.float16).numpy().reshape(-1)
        )


# --------------------------------------------------------------------------- refusals


def test_option_conflicts_are_refused_before_loading(qckpt, tmp_path, monkeypatch):
    def boom(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ModelRequest, "open", boom)
    qc_args = ["--quantized-checkpoint", str(qckpt[0])]
    line = _error_line(runner.invoke(app, ["ios", "--out", str(tmp_path / "a"), "--min-ios", "17", *qc_args]))
    assert "--min-ios 17" in line and "int4" in line and "iOS 18" in line
    for cmd in ("onnx", "ios"):
        line = _error_line(runner.invoke(app, [cmd, "--out", str(tmp_path / "b"), "--block-size", "64", *qc_args]))
        assert "--block-size 64" in line and "groups of 32" in line
    line = _error_line(runner.invoke(app, ["onnx", "--out", str(tmp_path / "c"), "--quant", "fp32", *qc_args]))
    assert "--quant fp32" in line and "--quantized-checkpoint" in line
    assert not any(tmp_path.iterdir())


def test_checkpoint_of_another_model_is_refused(qckpt, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(qckpt[0], other)
    cfg_path = other / qcheckpoint.CONFIG_NAME
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["text"]["layers"] += 1  # made for a 5-layer model
    cfg_path.write_text(json.dumps(cfg))
    line = _error_line(
        runner.invoke(app, ["onnx", "--quantized-checkpoint", str(other), "--out", str(tmp_path / "onnx"), *SHAPE_ARGS])
    )
    assert "different model (text:" in line and qcheckpoint.CONFIG_NAME in line
    request = replace(REQUEST, quantized_checkpoint=other)
    with pytest.raises(CheckpointError, match=r"different model \(text:"):
        export_bundle("coreml", request, CoreMLOptions(out=tmp_path / "ios", engine="mil"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
