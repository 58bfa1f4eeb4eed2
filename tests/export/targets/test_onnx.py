"""``autoglm-export onnx`` end to end: real exports, their bundles, onnxruntime parity, and the gate.

ONNX export takes seconds, so the module makes four bundles:

- ``tiny_int4``: the embedded tiny model (dense decoder, image + audio), int4, through the CLI;
- ``tiny_fp32``: the same model in fp32 through the library, with external data forced on every
  file and a prefill chunk shorter than every calibration prompt;
- ``moe_int4``: a Glm4vMoe checkpoint (dense layer 0 whose FFN width int4 blocks of 32 don't
  divide, MoE layer 1) with a GlmAsr checkpoint attached by ``--audio-checkpoint``, int4;
- a dense checkpoint whose saved decoder gets one broken weight before the gate (must fail).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from model_fixtures import (
    AUDIO_FRAMES,
    IMAGE_HW,
    MAX_CONTEXT,
    MAX_SEQ_LEN,
    write_chat_checkpoint,
    write_moe_checkpoints,
)
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from autoglm_export.calibration import (
    synthetic_screenshot,
    synthetic_speech,
)
from autoglm_export.cli import app
from autoglm_export.errors import ExportError
from autoglm_export.pipeline import export_bundle, validate_bundle
from autoglm_export.request import ModelRequest
from autoglm_export.source import open_source
from autoglm_export.targets.onnx import convert as onnx_target
from autoglm_export.targets.onnx.convert import OnnxTextDecoder, cache_shape, quantize_int4
from autoglm_export.targets.onnx.export import OnnxOptions
from autoglm_export.targets.onnx.recipe import OnnxQuant
from autoglm_export.targets.onnx.twin import int4_block_fake_quant, int4_twin, linear_modules
from autoglm_runtime.backends import backend_for_bundle
from autoglm_runtime.backends.onnx_backend import OnnxBackend
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.bundle import MANIFEST_NAME, open_bundle, sha256_file
from autoglm_runtime.errors import BundleError
from autoglm_runtime.sampling import SamplingConfig
from autoglm_runtime.session import Session

runner = CliRunner()
FILES = ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder")
SMALL = dict(max_context=MAX_CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES)
# Measured faithfulness of onnxruntime to the eager reference with the same weights (int4 and fp32):
# about 1e-6 x scale; the shared thresholds allow 1e-3 (weight_only) and 1e-4 (fp32).
FAITHFUL = 2e-5


def _error_line(result) -> str:
    """Exit 1 and one 'error:' line, last on stderr (after the export's progress log, if it got that far)."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def _ops(model, op_type: str):
    """(node, its attributes, the graph's initializers as arrays) for every ``op_type`` node of a graph."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == op_type:
            yield node, {a.name: helper.get_attribute_value(a) for a in node.attribute}, inits


def _dequantized(model) -> list[np.ndarray]:
    """Every MatMulNBits weight of a graph, dequantized to the linear layout [N, K]."""
    out = []
    for node, attrs, inits in _ops(model, "MatMulNBits"):
        assert attrs["bits"] == 4 and len(node.input) == 3, "symmetric int4: no zero points"
        assert "accuracy_level" not in attrs, "fp32 compute: activations are not quantized"
        packed, scales = inits[node.input[1]], inits[node.input[2]]
        n, blocks, half = packed.shape
        out.append(_int4_rows(packed.reshape(n, -1), scales.reshape(n, blocks), half * 2)[:, : attrs["K"]])
    return out


def _int4_rows(packed: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """[N, K / 2] codes two a byte (zero point 8) and [N, K / block] scales -> [N, K] fp32."""
    nibbles = np.stack([packed & 0xF, packed >> 4], -1).reshape(packed.shape[0], -1).astype(np.float32)
    return (nibbles - 8) * np.repeat(scales, block, axis=1)


def _qmoe_dequantized(model) -> list[np.ndarray]:
    """Every QMoE node's expert weights, dequantized to the linears' layout: gate, up, down per expert."""
    out = []
    for node, attrs, inits in _ops(model, "QMoE"):
        assert attrs["expert_weight_bits"] == 4 and attrs["swiglu_fusion"] == 1 and "accuracy_level" not in attrs
        fc1, s1, fc2, s2 = (inits[node.input[i]] for i in (2, 3, 5, 6))
        for e in range(fc1.shape[0]):
            gate_up = _int4_rows(fc1[e], s1[e], attrs["block_size"])
            out += [gate_up[0::2], gate_up[1::2], _int4_rows(fc2[e], s2[e], attrs["block_size"])]
    return out


def _check_int4_graphs(bundle: Path, fresh_model) -> dict[str, int]:
    """Every constant-weight MatMul is MatMulNBits except MoE routers, and the int4 weights equal
    ``int4_block_fake_quant`` of the fp32 model's linears bit for bit."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    linears = linear_modules(fresh_model)
    counts = {}
    for comp, entry in manifest["models"].items():
        model = onnx.load(str(bundle / entry["file"]))
        inits = {i.name for i in model.graph.initializer}
        left = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
        assert len(left) == len(entry["fp32_matmuls"]) and all("router" in r for r in entry["fp32_matmuls"]), (
            comp,
            left,
        )
        got = _dequantized(model)
        experts = _qmoe_dequantized(model)  # an MoE layer's routed experts: one QMoE node
        assert len(got) == entry["matmul_nbits"] and len(got) + len(experts) == len(linears[comp]), comp
        expected = {int4_block_fake_quant(m.weight, 32).numpy().tobytes() for _, m in linears[comp]}
        assert {w.astype(np.float32).tobytes() for w in got + experts} == expected, (
            f"{comp}: int4 weights differ from the eager rounding"
        )
        counts[comp] = len(got)
    return counts


def _rows(bundle: Path) -> dict[tuple[str, str], dict]:
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["passed"] and parity["target"] == "onnx"
    return {(r["component"], r["reference"]): r for r in parity["rows"]}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_int4(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_int4") / "dist" / "onnx"
    out.parent.mkdir()
    stale = out.parent / "onnx.parity-failed.json"  # from an earlier failed export: a passing one removes it
    stale.write_text("{}")
    result = runner.invoke(app, ["onnx", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert not stale.exists() and sorted(p.name for p in out.parent.iterdir()) == ["onnx"]  # no temp folders left
    return out, result


@pytest.fixture(scope="module")
def tiny_int8_activations(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_a4") / "onnx"
    result = runner.invoke(app, ["onnx", "--int8-activations", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_fp32") / "onnx"
    opts = OnnxOptions(out=out, quant=OnnxQuant("fp32"), max_seq_len=24, external_data_threshold=0)
    path, report = export_bundle("onnx", ModelRequest(), opts)
    return path, report


@pytest.fixture(scope="module")
def moe_checkpoints(tmp_path_factory):
    return write_moe_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def moe_int4(moe_checkpoints, tmp_path_factory):
    ckpt, asr = moe_checkpoints
    out = tmp_path_factory.mktemp("moe") / "onnx"
    request = ModelRequest(ckpt, asr, max_context=MAX_CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES)
    return export_bundle("onnx", request, OnnxOptions(out=out, max_seq_len=MAX_SEQ_LEN))


# --------------------------------------------------------------------------- torch-side building blocks


@pytest.mark.parametrize("which", ["tiny", "moe"])
def test_explicit_cache_decoder_equals_eager_decoder(which, moe_checkpoints):
    """The exported wrapper (cache in, cache out) computes what the eager buffered decoder does."""
    src = open_source() if which == "tiny" else open_source(moe_checkpoints[0], **SMALL)
    model = src.model.eval()
    wrapper = OnnxTextDecoder(model.text)
    caches = [torch.zeros(cache_shape(model)) for _ in range(2 * len(model.text.layers))]
    torch.manual_seed(0)
    hidden = model.cfg.text.hidden_size
    model.reset_cache()
    with torch.no_grad():
        for start, n in ((0, 7), (7, 5), (12, 1), (13, 1)):  # two prefill chunks, then decode steps
            x, pos = torch.randn(1, n, hidden), torch.arange(start, start + n)
            ids = torch.stack([pos, pos // 2, pos % 3])  # 3 distinct planes, as image tokens have
            ref = model.text_decoder(x, pos, ids)
            logits, *caches = wrapper(x, pos, ids, caches)
            # GQA without repeating the cache: same math, other summation order
            assert (logits - ref).abs().max() <= 2e-6 * ref.abs().max()
        for i, (layer, k, v) in enumerate(zip(model.text.layers, caches[::2], caches[1::2])):
            eager_k, eager_v = layer.self_attn.kv_cache.k_cache, layer.self_attn.kv_cache.v_cache
            if i == 0:  # same inputs: the written slots are bit for bit the eager cache's
                assert torch.equal(k, eager_k) and torch.equal(v, eager_v)
            assert (k - eager_k).abs().max() <= 1e-5 * eager_k.abs().max() and not k[0, :, 14:].any()


def test_int4_rounding_matches_onnxruntime_quantizer_bit_for_bit():
    """Our eager int4 rounding vs MatMulNBitsQuantizer on bf16-valued, fp32 and degenerate weights,
    with an input width that blocks of 32 don't divide (padded last block)."""
    torch.manual_seed(0)
    weights = [
        torch.randn(48, 100).to(torch.bfloat16).float(),
        torch.randn(64, 96),
        torch.randint(-16, 16, (32, 64)) / 4.0,
        torch.zeros(16, 32),
    ]
    inits, nodes, _prev = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w.T.contiguous().numpy(), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"in{i}", f"w{i}"], [f"out{i}"], name=f"mm{i}"))
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info(f"in{i}", onnx.TensorProto.FLOAT, [1, w.shape[1]])
            for i, w in enumerate(weights)
        ],
        [
            helper.make_tensor_value_info(f"out{i}", onnx.TensorProto.FLOAT, [1, w.shape[0]])
            for i, w in enumerate(weights)
        ],
        inits,
    )
    model = quantize_int4(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), 32, [])
    got = _dequantized(model)
    assert len(got) == len(weights)
    for w, g in zip(weights, got):
        np.testing.assert_array_equal(int4_block_fake_quant(w, 32).numpy(), g)
    # round half to even would disagree with onnxruntime on bf16 weights: the rounding rule matters
    w = weights[0]
    blocks = torch.nn.functional.pad(w, (0, 28)).view(48, -1, 32)
    hi, lo = blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True)
    scale = torch.where(hi.abs() > lo.abs(), hi, lo) / -8
    half_even = ((blocks / scale).round().clamp(-8, 7) * scale).view(48, -1)[:, :100]
    assert not torch.equal(half_even, int4_block_fake_quant(w, 32))


# --------------------------------------------------------------------------- the tiny int4 bundle (CLI)


def test_tiny_int4_bundle(tiny_int4):
    out, result = tiny_int4
    assert "bundle written to" in result.stderr
    bundle = open_bundle(out)  # every file's size and sha256 against the manifest
    m = bundle.manifest
    assert m["target"] == "onnx" and m["validated"] and m["reference_check"]["passed"]
    assert set(m["models"]) == set(FILES)
    assert sorted(bundle.files) == sorted([f"{c}.onnx" for c in FILES] + ["parity.json", "tokenizer.json"])
    assert m["quantization"]["recipe"] == {"scheme": "int4", "block_size": 32}
    assert m["quantization"]["kinds"] == {
        "vision_encoder": "weight_only",
        "audio_encoder": "weight_only",
        "token_embedding": "fp32",
        "text_decoder": "weight_only",
    }
    assert m["opset"] == {"ai.onnx": 18, "com.microsoft": 1}
    dec = m["models"]["text_decoder"]
    layers = m["model"]["text"]["layers"]
    assert [i["name"] for i in dec["inputs"]][:3] == ["inputs_embeds", "cache_position", "position_ids"]
    assert (
        [i["name"] for i in dec["inputs"]][3:]
        == m["kv_cache"]["inputs"]
        == [f"past_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    )
    assert [o["name"] for o in dec["outputs"]] == ["logits"] + m["kv_cache"]["outputs"]
    assert dec["inputs"][0]["shape"] == [1, "seq", m["model"]["text"]["hidden_size"]]
    assert dec["inputs"][3]["shape"] == m["kv_cache"]["shape"] == [1, 2, 512, 32]
    assert m["models"]["token_embedding"]["inputs"] == [{"name": "token_ids", "shape": [1, "seq"], "dtype": "int64"}]

    rows = _rows(out)
    for comp in FILES:
        faithful = rows[(comp, "quantized_eager")]["metrics"]
        assert faithful["rel_max_abs"] <= FAITHFUL, (comp, faithful)
    assert rows[("text_decoder", "quantized_eager")]["metrics"]["top1_agreement"] == 1.0
    assert ("token_embedding", "fp32") not in rows  # unquantized: the two references are one model
    for comp in ("vision_encoder", "audio_encoder", "text_decoder"):
        assert rows[(comp, "fp32")]["metrics"]["cosine"] > 0.95  # what int4 costs this random-weight model
    counts = _check_int4_graphs(out, open_source().model)
    assert counts["text_decoder"] == layers * 6 + 1  # q k v o gate_up down per layer, plus lm_head


def test_int8_activations_bundle(tiny_int8_activations, tiny_int4):
    """--int8-activations: every MatMulNBits of every graph carries accuracy_level 4, the manifest says so, and the
    gate judged it by the int8_activations thresholds, which it passed while really differing from fp32 compute."""
    from autoglm_runtime.parity import thresholds_for

    out = tiny_int8_activations
    m = open_bundle(out).manifest
    assert m["quantization"]["recipe"] == {"scheme": "int4", "block_size": 32, "accuracy_level": 4}
    assert m["quantization"]["kinds"] == {
        "vision_encoder": "int8_activations",
        "audio_encoder": "int8_activations",
        "token_embedding": "fp32",
        "text_decoder": "int8_activations",
    }
    for comp in ("vision_encoder", "audio_encoder", "text_decoder"):
        nodes = [n for n in onnx.load(out / f"{comp}.onnx").graph.node if n.op_type == "MatMulNBits"]
        levels = {a.i for n in nodes for a in n.attribute if a.name == "accuracy_level"}
        assert nodes and levels == {4} and all(any(a.name == "accuracy_level" for a in n.attribute) for n in nodes)
    rows = _rows(out)
    int4_rows = _rows(tiny_int4[0])
    for comp in ("vision_encoder", "audio_encoder", "text_decoder"):
        row = rows[(comp, "quantized_eager")]
        assert row["thresholds"] == thresholds_for("quantized_eager", "int8_activations", comp).to_dict()
        # int8 activations really ran: far from the fp32-compute graph's ~1e-6
        assert row["metrics"]["rel_max_abs"] > 10 * int4_rows[(comp, "quantized_eager")]["metrics"]["rel_max_abs"]
    with pytest.raises(ExportError, match="needs --quant int4"):
        OnnxQuant("fp32", 32, 4)


def test_int4_token_embedding(tmp_path, tiny_int4):
    """--quant-embedding int4: the table becomes one GatherBlockQuantized whose codes and scales are exactly
    MatMulNBits' rounding of the eager table (the twin's), under a third of the stored table's file, and the gate judged
    the lookups against that twin (to float precision) and reported their cost against fp32."""
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["onnx", "--quant-embedding", "int4", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    m = open_bundle(out).manifest
    assert m["quantization"]["recipe"] == {"scheme": "int4", "block_size": 32, "embedding": "int4"}
    assert m["quantization"]["kinds"]["token_embedding"] == "weight_only"
    assert m["quantization"]["layers"]["text.embed_tokens"].startswith("int4 (GatherBlockQuantized")
    graph = onnx.load(out / "token_embedding.onnx").graph
    (node,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    assert not [n for n in graph.node if n.op_type == "Gather"]
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    data, scales = inits[node.input[0]], inits[node.input[2]]
    nibbles = np.stack([data & 15, data >> 4], -1).reshape(data.shape[0], -1).astype(np.float32) - 8
    got = (nibbles.reshape(*scales.shape, -1) * scales[..., None]).reshape(data.shape[0], -1)
    table = open_source().model.text.embed_tokens.weight
    assert got.tobytes() == int4_block_fake_quant(table, 32).float().numpy().tobytes()
    stored_file = (tiny_int4[0] / "token_embedding.onnx").stat().st_size
    # tiny_int4 writes the table as stored (bf16: 2 bytes a value); int4 at block 32 is 0.625 bytes a value
    assert (out / "token_embedding.onnx").stat().st_size < 0.33 * stored_file
    rows = _rows(out)
    assert rows[("token_embedding", "quantized_eager")]["metrics"]["rel_max_abs"] <= FAITHFUL
    assert 0.95 < rows[("token_embedding", "fp32")]["metrics"]["cosine"] < 1.0  # the int4 table's cost, measured
    with pytest.raises(ExportError, match="--quant-embedding"):
        OnnxQuant("int4", 32, 0, "int8")


def test_graphs_carry_no_paths_of_the_exporting_checkout(tiny_int4):
    """Reproducible across checkouts: no exporter stack traces (absolute source paths) in the files."""
    out, _ = tiny_int4
    checkout = str(Path(__file__).resolve().parents[3]).encode()
    for comp in FILES:
        assert checkout not in (out / f"{comp}.onnx").read_bytes(), comp
        graph = onnx.load(out / f"{comp}.onnx", load_external_data=False).graph
        assert not [n.name for n in graph.node if any(p.key == "pkg.torch.onnx.stack_trace" for p in n.metadata_props)]


def test_run_bundle_generates_with_onnxruntime(tiny_int4, tmp_path):
    out, _ = tiny_int4
    image = tmp_path / "shot.png"
    synthetic_screenshot(seed=3).save(image)
    wav = tmp_path / "note.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((synthetic_speech(seed=3) * 32767).astype("<i2").tobytes())
    args = [
        "run",
        str(out),
        "-p",
        "打开微信给张三发消息",
        "--image",
        str(image),
        "--audio",
        str(wav),
        "--max-new-tokens",
        "6",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "onnxruntime:" in result.stderr and "generated" in result.stderr

    # greedy tokens through onnxruntime == through the eager model with the same int4 weights
    bundle = open_bundle(out)
    src = open_source()
    int4_twin(src.model, 32)
    kw = dict(image=image, audio=wav, max_new_tokens=6, sampling=SamplingConfig(temperature=0.0))
    ort_tokens = Session(backend_for_bundle(bundle), bundle.tokenizer_path, bundle.spec, prefill_chunk=16).generate(
        "打开微信", **kw
    )
    torch_tokens = Session(TorchBackend(src.model), src.tokenizer_path, src.spec).generate("打开微信", **kw)
    assert ort_tokens.token_ids == torch_tokens.token_ids and ort_tokens.prompt_tokens > 16


def test_backend_holds_and_resets_the_cache(tiny_int4):
    bundle = open_bundle(tiny_int4[0])
    backend = backend_for_bundle(bundle)
    assert isinstance(backend, OnnxBackend) and backend.max_context == bundle.spec.max_context
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, 9, bundle.spec.hidden_size)).astype(np.float32)
    pos = np.arange(9)
    whole = backend.text_decoder(embeds, pos, np.stack([pos] * 3))
    assert any(c.any() for c in backend.cache.values())
    backend.reset()
    assert not any(c.any() for c in backend.cache.values())
    first = backend.text_decoder(embeds[:, :4], pos[:4], np.stack([pos[:4]] * 3))
    rest = backend.text_decoder(embeds[:, 4:], pos[4:], np.stack([pos[4:]] * 3))
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), whole, atol=1e-5 * np.abs(whole).max())
    # a new prefill from 0 after reset ignores everything the previous conversation left behind
    backend.reset()
    np.testing.assert_array_equal(backend.text_decoder(embeds, pos, np.stack([pos] * 3)), whole)
    with pytest.raises(BundleError, match="outside the KV cache"):
        backend.text_decoder(embeds[:, :1], np.array([bundle.spec.max_context]), np.zeros((3, 1), np.int64))
    with pytest.raises(BundleError, match="an ONNX one"):
        OnnxBackend.from_bundle(type(bundle)(bundle.root, bundle.manifest, bundle.spec, "executorch"))


def test_existing_bundle_and_bad_options_fail_before_loading(tiny_int4, monkeypatch):
    def boom(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ModelRequest, "open", boom)
    out = tiny_int4[0]
    assert "pass --force" in _error_line(runner.invoke(app, ["onnx", "--out", str(out)]))
    assert "--quant int8" in _error_line(runner.invoke(app, ["onnx", "--out", str(out), "--quant", "int8", "--force"]))
    assert "--block-size 48" in _error_line(
        runner.invoke(app, ["onnx", "--out", str(out), "--block-size", "48", "--force"])
    )


# --------------------------------------------------------------------------- fp32 with external data


def test_tiny_fp32_bundle_with_external_data_and_chunked_prefill(tiny_fp32):
    out, report = tiny_fp32
    bundle = open_bundle(out)
    m = bundle.manifest
    assert m["quantization"]["kinds"] == dict.fromkeys(FILES, "fp32") and m["max_seq_len"] == 24
    for comp in FILES:
        entry = m["models"][comp]
        assert entry["external_data"] == f"{comp}.onnx.data" and entry["external_data"] in bundle.files
        assert entry["matmul_nbits"] == 0
        assert bundle.files[entry["external_data"]]["bytes"] > bundle.files[entry["file"]]["bytes"]
    rows = _rows(out)
    assert set(rows) == {(c, "quantized_eager") for c in FILES}  # fp32: one reference
    for r in rows.values():
        assert r["quant_kind"] == "fp32" and r["metrics"]["rel_max_abs"] <= FAITHFUL, r
    assert report.passed and rows[("text_decoder", "quantized_eager")]["metrics"]["top1_agreement"] == 1.0


# --------------------------------------------------------------------------- MoE + GlmAsr checkpoints


def test_moe_with_audio_checkpoint_int4(moe_int4, moe_checkpoints):
    out, report = moe_int4
    assert report.passed
    m = open_bundle(out).manifest
    assert m["model"]["text"]["moe"]["experts"] == 4 and m["source"]["audio_checkpoint"]
    assert m["reference_check"]["passed"]
    assert len(m["models"]["text_decoder"]["fp32_matmuls"]) == 1  # the one MoE layer's router
    assert m["models"]["text_decoder"]["qmoe_layers"] == 1  # its 4 routed experts: one QMoE node, top-2 run
    rows = _rows(out)
    for comp in FILES:
        assert rows[(comp, "quantized_eager")]["metrics"]["rel_max_abs"] <= FAITHFUL
    src = open_source(*moe_checkpoints, **SMALL)
    _check_int4_graphs(out, src.model)  # includes down_proj (in 48: a padded last block) and the experts


def test_moe_int8_activations_reach_the_experts(moe_checkpoints, tmp_path):
    """--int8-activations on an MoE model: the QMoE node carries accuracy_level 4 like every MatMulNBits,
    and the gate passes the decoder by the int8_activations thresholds."""
    from autoglm_runtime.parity import thresholds_for

    ckpt, asr = moe_checkpoints
    request = ModelRequest(ckpt, asr, max_context=MAX_CONTEXT, image_hw=IMAGE_HW, audio_frames=AUDIO_FRAMES)
    options = OnnxOptions(out=tmp_path / "onnx", max_seq_len=MAX_SEQ_LEN, quant=OnnxQuant("int4", accuracy_level=4))
    out, report = export_bundle("onnx", request, options)
    assert report.passed
    model = onnx.load(str(out / "text_decoder.onnx"), load_external_data=False)
    (qmoe,) = [n for n in model.graph.node if n.op_type == "QMoE"]
    assert {a.name: a.i for a in qmoe.attribute}["accuracy_level"] == 4
    assert (
        _rows(out)[("text_decoder", "quantized_eager")]["thresholds"]
        == thresholds_for("quantized_eager", "int8_activations", "text_decoder").to_dict()
    )


# --------------------------------------------------------------------------- the gate


def test_gate_catches_a_broken_weight(tmp_path, monkeypatch):
    """One output channel of the decoder's first int4 MatMul zeroed in the saved file: nothing published."""
    ckpt = write_chat_checkpoint(tmp_path / "dense")
    real_save = onnx_target.save_model

    def save_broken(model, path, threshold=onnx_target.EXTERNAL_DATA_THRESHOLD):
        if Path(path).name == "text_decoder.onnx":
            node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
            init = next(i for i in model.graph.initializer if i.name == node.input[2])
            scales = numpy_helper.to_array(init).copy()
            scales[0] = 0.0
            init.CopyFrom(numpy_helper.from_array(scales, init.name))
        return real_save(model, path, threshold)

    monkeypatch.setattr(onnx_target, "save_model", save_broken)
    out = tmp_path / "dist" / "onnx"
    args = [
        "onnx",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--max-context-len",
        str(MAX_CONTEXT),
        "--image-size",
        f"{IMAGE_HW[0]}x{IMAGE_HW[1]}",
    ]
    line = _error_line(runner.invoke(app, args))
    failed = tmp_path / "dist" / "onnx.parity-failed.json"
    assert "parity failed" in line and str(failed) in line
    assert not out.exists() and [p.name for p in (tmp_path / "dist").iterdir()] == [failed.name]  # no temp dirs left
    report = json.loads(failed.read_text())
    assert not report["passed"]
    bad = {(r["component"], r["reference"]) for r in report["rows"] if not r["passed"]}
    assert ("text_decoder", "quantized_eager") in bad and all(c == "text_decoder" for c, _ in bad)

    with pytest.raises(ExportError, match="exists"):
        export_bundle(
            "onnx", ModelRequest(ckpt), OnnxOptions(out=tmp_path / "dist")
        )  # not a bundle: refused even before loading


def test_revalidation_catches_a_tampered_weight_with_rehashed_manifest(tiny_int4, tmp_path):
    """`validate` on a published bundle: it passes as exported; with one int4 weight block of the
    decoder changed and the manifest's hashes recomputed (so the hash check cannot notice), it fails."""
    import shutil

    assert validate_bundle(tiny_int4[0]).passed
    out = tmp_path / "onnx"
    shutil.copytree(tiny_int4[0], out)
    path = out / "text_decoder.onnx"
    model = onnx.load(str(path))
    node = [n for n in model.graph.node if n.op_type == "MatMulNBits"][-1]  # lm_head
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    packed = numpy_helper.to_array(init).copy()
    packed[7, 0] ^= 0x88  # flip the sign bit of two nibbles of one vocab row
    init.CopyFrom(numpy_helper.from_array(packed, init.name))
    onnx.save_model(model, str(path))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"]["text_decoder.onnx"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = validate_bundle(out)
    assert not report.passed
    assert {(r["component"], r["reference"]) for r in report.rows if not r["passed"]} == {
        ("text_decoder", "quantized_eager")
    }
