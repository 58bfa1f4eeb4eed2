"""``autoglm-export android`` end to end: real exports, the bundle they publish, and the refusals.

Each export lowers every component with XNNPACK (about a minute each on two cores), so this module
shares three of them:

- ``tiny_bundle``: the embedded tiny model (image + audio), through the CLI, with ``--force`` over a
  stale bundle.
- ``moe_bundle``: a hand-made Glm4vMoe checkpoint (layer 0 dense with an FFN width that int4 groups
  of 32 don't divide, layer 1 MoE) with a GlmAsr checkpoint attached by ``--audio-checkpoint``,
  through the library.
- ``perturbed``: the same MoE export once more, in a separate Python process (started first, so it
  overlaps the in-process exports), with the ExecuTorch outputs perturbed before the parity gate.
  Its lowered program is kept for the reproducibility check.

The refusals (existing bundle, QNN without its SDK, refused quant schemes) must fail before any
model is loaded: ``ModelRequest.open`` is patched to raise if they get that far.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch")
# Expected while exporting: the KV cache's initial value is not serialized (reset_cache zeroes it).
pytestmark = pytest.mark.filterwarnings("ignore:Mutation on a buffer")

from model_fixtures import (
    AUDIO_FRAMES,
    GROUP_SIZE,
    IMAGE_HW,
    MAX_CONTEXT,
    MAX_SEQ_LEN,
    moe_options,
    moe_request,
    write_moe_checkpoints,
)
from typer.testing import CliRunner

from autoglm_export.calibration import (
    synthetic_screenshot,
    synthetic_speech,
)
from autoglm_export.cli import app
from autoglm_export.errors import ExportError
from autoglm_export.pipeline import export_bundle
from autoglm_export.presets import TINY_DIR
from autoglm_export.quantize import QuantRecipe, apply_recipe
from autoglm_export.request import ModelRequest
from autoglm_export.summary import chat_template
from autoglm_export.targets.executorch.attention import use_executorch_attention
from autoglm_export.targets.executorch.export import ExecuTorchOptions
from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend
from autoglm_runtime.backends.torch_backend import TorchBackend
from autoglm_runtime.bundle import MANIFEST_SCHEMA_VERSION, open_bundle, sha256_file
from autoglm_runtime.parity import Metrics, Thresholds, thresholds_for
from autoglm_runtime.prompt import Message, build_prompt
from autoglm_runtime.session import Session
from autoglm_runtime.tokenizer import Tokenizer

runner = CliRunner()
TESTS_DIR = Path(__file__).resolve().parents[2]  # model_fixtures.py
TINY_ARGS = [
    "--image-size",
    f"{IMAGE_HW[0]}x{IMAGE_HW[1]}",
    "--audio-frames",
    str(AUDIO_FRAMES),
    "--max-context-len",
    str(MAX_CONTEXT),
    "--max-seq-len",
    str(MAX_SEQ_LEN),
]
ENCODERS = ("vision_encoder", "audio_encoder")
METHODS = ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder", "text_decoder_step", "reset_cache")
LLM_RUNNER_KEYS = (
    "get_max_seq_len",
    "get_max_context_len",
    "get_bos_id",
    "get_eos_ids",
    "get_vocab_size",
    "use_kv_cache",
    "enable_dynamic_shape",
    "get_image_token_id",
    "get_image_tokens",
)


def _error_line(result) -> str:
    """The CLI's contract for user errors: exit 1 and exactly one 'error:' line on stderr."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one error line, got: {result.stderr!r}"
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def _leftovers(parent: Path) -> list[str]:
    """Hidden temp/backup folders a BundleWriter would leave behind."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory):
    return write_moe_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def background(request, tmp_path_factory):
    """Start the perturbed MoE export in its own process now (if a selected test needs it);
    ``perturbed`` waits for it.

    A separate process also makes the reproducibility check stronger: another interpreter, with
    another hash seed, must lower the same checkpoint to the same bytes.
    """
    if not any("perturbed" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    moe_checkpoint = request.getfixturevalue("moe_checkpoint")
    root = tmp_path_factory.mktemp("perturbed")
    ckpt, asr = moe_checkpoint
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    seed = env.get("PYTHONHASHSEED", "")
    env["PYTHONHASHSEED"] = str(int(seed) + 1) if seed.isdigit() else "1"
    log = open(root / "export.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import model_fixtures as f; f.perturbed_export_main()",
            str(ckpt),
            str(asr),
            str(root / "android"),
            str(root / "result.json"),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield SimpleNamespace(proc=proc, root=root, out=root / "android", log=root / "export.log")
    if proc.poll() is None:  # nobody waited for it (tests deselected): stop the process we started
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def perturbed(background):
    try:
        rc = background.proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        background.proc.kill()
        pytest.fail("the perturbed export did not finish in 15 minutes")
    tail = background.log.read_text(errors="replace")[-4000:]
    result_path = background.root / "result.json"
    assert rc == 0 and result_path.exists(), f"exit {rc}; log tail:\n{tail}"
    return SimpleNamespace(
        result=json.loads(result_path.read_text()), out=background.out, root=background.root, log_tail=tail
    )


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, background):
    """The default tiny model through ``autoglm-export android --force`` over a stale bundle."""
    out = tmp_path_factory.mktemp("tiny") / "android"
    out.mkdir()
    (out / "manifest.json").write_text('{"schema_version": 1}')
    (out / "stale.bin").write_bytes(b"from an earlier export")
    # --decode-step (off by default): this bundle covers the single-token method too
    result = runner.invoke(app, ["android", "--out", str(out), *TINY_ARGS, "--decode-step", "--force"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    request = ModelRequest(None, None, "tiny", MAX_CONTEXT, IMAGE_HW, AUDIO_FRAMES)
    return SimpleNamespace(
        name="tiny",
        out=out,
        cli=result,
        request=request,
        checkpoint=TINY_DIR,
        recipe=QuantRecipe(),
        report=None,
        records=[],
    )


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def moe_bundle(moe_checkpoint, tmp_path_factory, background):
    """The hand-made MoE + GlmAsr checkpoint through the library, with its log records captured
    (caplog is function-scoped; this export is shared)."""
    ckpt, asr = moe_checkpoint
    out = tmp_path_factory.mktemp("moe") / "android"
    handler, logger = _Records(), logging.getLogger("autoglm_export")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        path, report = export_bundle("executorch", moe_request(ckpt, asr), moe_options(out))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert path == out
    return SimpleNamespace(
        name="moe",
        out=out,
        request=moe_request(ckpt, asr),
        checkpoint=ckpt,
        recipe=moe_options(out).recipe,
        report=report,
        records=handler.records,
    )


@pytest.fixture(params=["tiny_bundle", "moe_bundle"])
def exported(request):
    return request.getfixturevalue(request.param)


_SOURCES: dict[str, object] = {}


def fp32_source(case):
    """The unquantized eager model the bundle was exported from (opened once per case)."""
    if case.name not in _SOURCES:
        _SOURCES[case.name] = case.request.open()
    return _SOURCES[case.name]


def _manifest(case) -> dict:
    return json.loads((case.out / "manifest.json").read_text(encoding="utf-8"))


def _config(case) -> dict:
    return json.loads((case.checkpoint / "config.json").read_text())


# --------------------------------------------------------------------------- 1. bundle contents


def test_cli_force_replaced_the_stale_bundle(tiny_bundle):
    assert "bundle written to" in tiny_bundle.cli.stderr
    assert not (tiny_bundle.out / "stale.bin").exists()
    assert _leftovers(tiny_bundle.out.parent) == []  # no temp or backup folders left next to it


def test_bundle_files_match_the_manifest(exported):
    out, manifest = exported.out, _manifest(exported)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == ["manifest.json", "model.pte", "parity.json", "tokenizer.json"]
    assert sorted(manifest["files"]) == [f for f in on_disk if f != "manifest.json"]
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}, name
    assert manifest["schema_version"] == MANIFEST_SCHEMA_VERSION and manifest["target"] == "executorch"
    assert manifest["program"] == "model.pte" and manifest["backend"] == "xnnpack" and manifest["validated"] is True
    # the tokenizer is the checkpoint's, byte for byte
    assert (out / "tokenizer.json").read_bytes() == (exported.checkpoint / "tokenizer.json").read_bytes()
    bundle = open_bundle(out)  # verifies every hash
    assert bundle.tokenizer_path == out / "tokenizer.json"


def test_manifest_describes_the_model(exported):
    manifest, cfg, src = _manifest(exported), _config(exported), fp32_source(exported)
    text_cfg = cfg["text_config"]
    assert manifest["source"] == {"label": src.label, **exported.request.to_dict()}
    assert manifest["export_shape"] == {
        "max_context": MAX_CONTEXT,
        "image_hw": list(IMAGE_HW),
        "audio_frames": AUDIO_FRAMES,
        "max_pixels": None,  # a fixed image size (--image-size): no buckets
        "image_buckets": [],
    }
    assert manifest["max_seq_len"] == MAX_SEQ_LEN
    model = manifest["model"]
    assert model["model_type"] == cfg["model_type"]
    assert model["parameters"] == {
        name: sum(p.numel() for p in m.parameters())
        for name, m in (("text", src.model.text), ("vision", src.model.vision), ("audio", src.model.audio))
    }
    for key, hf_key in (
        ("hidden_size", "hidden_size"),
        ("layers", "num_hidden_layers"),
        ("heads", "num_attention_heads"),
        ("kv_heads", "num_key_value_heads"),
        ("intermediate_size", "intermediate_size"),
        ("vocab_size", "vocab_size"),
    ):
        assert model["text"][key] == text_cfg[hf_key], key
    assert model["text"]["mrope_section"] == text_cfg["rope_parameters"]["mrope_section"]
    if cfg["model_type"] == "glm4v_moe":
        assert model["text"]["moe"] == {
            "experts": text_cfg["n_routed_experts"],
            "top_k": text_cfg["num_experts_per_tok"],
            "shared": text_cfg["n_shared_experts"],
            "first_k_dense_replace": text_cfg["first_k_dense_replace"],
        }
    else:
        assert model["text"]["moe"] is None
    assert model["vision"]["depth"] == cfg["vision_config"]["depth"]
    assert model["audio"] is not None and model["audio"]["mel_bins"] == manifest["runtime"]["audio"]["num_mel_bins"]


def test_manifest_runtime_tokens_and_template(exported):
    manifest, cfg = _manifest(exported), _config(exported)
    tok = Tokenizer(exported.out / "tokenizer.json")
    runtime = manifest["runtime"]
    assert runtime == fp32_source(exported).spec.to_dict()
    # preprocessing parameters an app needs to feed the fixed-shape towers
    image = runtime["image"]
    assert (image["height"], image["width"]) == IMAGE_HW
    assert (
        image["patch_size"] == cfg["vision_config"]["patch_size"]
        and image["merge_size"] == cfg["vision_config"]["spatial_merge_size"]
    )
    pre = exported.checkpoint / "preprocessor_config.json"
    if pre.exists():  # mean/std come from the checkpoint's processor config
        pre_cfg = json.loads(pre.read_text())
        assert image["image_mean"] == pytest.approx(pre_cfg["image_mean"]) and image["image_std"] == pytest.approx(
            pre_cfg["image_std"]
        )
    assert runtime["image_tokens"] == (IMAGE_HW[0] // 28) * (IMAGE_HW[1] // 28)
    assert runtime["audio"]["num_frames"] == AUDIO_FRAMES and runtime["audio"]["sampling_rate"] == 16000
    assert runtime["audio_tokens"] > 0 and runtime["audio_token_id"] == tok.token_to_id("<|audio|>")
    assert runtime["image_token_id"] == cfg["image_token_id"] == tok.token_to_id("<|image|>")
    assert runtime["eos_token_ids"] == cfg["eos_token_id"] and runtime["vocab_size"] == cfg["text_config"]["vocab_size"]
    assert runtime["max_context"] == MAX_CONTEXT

    assert manifest["special_tokens"] == tok.special_ids()
    for name in ("[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|image|>", "<|audio|>"):
        assert manifest["special_tokens"][name] == tok.token_to_id(name), name

    # the chat template as data renders exactly what the runtime's renderer builds
    t = manifest["chat_template"]
    assert t == json.loads(json.dumps(chat_template()))
    user = Message("user", [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "打开微信"}])
    by_hand = (
        t["prefix"]
        + t["turn"].format(role="system", content="你是助手")
        + t["turn"].format(role="user", content=t["image_placeholder"] + t["audio_placeholder"] + "打开微信")
        + t["generation_prompt"]
    )
    assert by_hand == build_prompt([Message("system", "你是助手"), user])
    assert by_hand + t["thinking_off_suffix"] == build_prompt(
        [Message("system", "你是助手"), user], enable_thinking=False
    )


def test_manifest_quantization(exported):
    manifest, src = _manifest(exported), fp32_source(exported)
    q = manifest["quantization"]
    recipe = exported.recipe
    assert q["recipe"] == recipe.to_dict()
    assert q["kinds"] == {
        c: recipe.kind(c) for c in ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder")
    }
    # what each component's linears should have become, from the fp32 model's own layers
    expected_fallbacks = [
        f"text.{fqn}"
        for fqn, m in src.model.text.named_modules()
        if isinstance(m, nn.Linear) and m.in_features % recipe.group_size
    ]
    assert q["fallbacks"] == expected_fallbacks
    n_text = sum(isinstance(m, nn.Linear) for m in src.model.text.modules())
    text = {"int8 embedding": 1, "8da4w": n_text - len(expected_fallbacks), "8da8w": len(expected_fallbacks)}
    expected = {"text": {k: v for k, v in text.items() if v}}
    for name, tower in (("vision", src.model.vision), ("audio", src.model.audio)):
        expected[name] = {"8da8w": sum(isinstance(m, nn.Linear) for m in tower.modules())}
    assert q["per_component"] == expected


def test_manifest_toolchain_and_stages(exported):
    manifest = _manifest(exported)
    tc = manifest["toolchain"]
    assert tc["python"] == platform.python_version()
    for key in ("torch", "executorch", "torchao", "numpy"):
        assert tc[key] == importlib.metadata.version(key), key
    assert tc["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert manifest["created_by"].startswith("autoglm-export ")
    stages = manifest["stage_seconds"]
    assert any(s.startswith("export + lower") for s in stages) and all(v >= 0 for v in stages.values())
    for name in ("vision_encoder", "audio_encoder", "text_decoder"):  # XNNPACK really took the compute
        assert manifest["delegation"][name]["delegated_nodes"] > 0, name


def test_decode_step_is_one_xnnpack_subgraph_per_layer(exported):
    """text_decoder_step leaves only the llama:: cache/attention kernels (and the position's int) outside
    XNNPACK: one delegated subgraph between two layers' attentions, plus one before the first and the
    rotary tables. Each extra non-delegated op in a layer would add a subgraph per layer. (A MoE layer's
    router, top-k and scatter, stays outside too: only dense decoders get the count bound.)"""
    manifest = _manifest(exported)
    cfg = _config(exported)
    if not manifest["decode_step"]:
        pytest.skip("exported without --decode-step")
    step = manifest["delegation"]["text_decoder_step"]
    if cfg["model_type"] == "glm4v":
        assert step["delegated_subgraphs"] <= cfg["text_config"]["num_hidden_layers"] + 2, step
    outside = set(step["top_non_delegated_ops"])
    assert not outside & {"aten_mean_dim", "aten_slice_copy_tensor", "aten_view_copy_default"}, outside
    assert not any(op.startswith("aten_split") for op in outside), outside


def _expected_methods(manifest: dict) -> dict:
    rt = manifest["runtime"]
    hidden, vocab, img = rt["hidden_size"], rt["vocab_size"], rt["image"]
    patches = (img["height"] // img["patch_size"]) * (img["width"] // img["patch_size"])
    patch_dim = 3 * img["temporal_patch_size"] * img["patch_size"] ** 2

    def t(name, shape, dtype="float32"):
        return {"name": name, "shape": shape, "dtype": dtype}

    expected = {
        "vision_encoder": {
            "inputs": [t("pixel_values", [patches, patch_dim])],
            "outputs": [t("image_embeds", [rt["image_tokens"], hidden])],
        },
        "audio_encoder": {
            "inputs": [t("input_features", [1, rt["audio"]["num_mel_bins"], rt["audio"]["num_frames"]])],
            "outputs": [t("audio_embeds", [rt["audio_tokens"], hidden])],
        },
        "token_embedding": {
            "inputs": [t("token_ids", [1, "seq"], "int64")],
            "outputs": [t("embeds", [1, "seq", hidden])],
        },
        "text_decoder": {
            "inputs": [
                t("inputs_embeds", [1, "seq", hidden]),
                t("cache_position", ["seq"], "int64"),
                t("position_ids", [3, "seq"], "int64"),
            ],
            "outputs": [t("logits", [1, "seq", vocab])],
        },
        # the single-token step: static shapes, the same inputs
        "text_decoder_step": {
            "inputs": [
                t("inputs_embeds", [1, 1, hidden]),
                t("cache_position", [1], "int64"),
                t("position_ids", [3, 1], "int64"),
            ],
            "outputs": [t("logits", [1, 1, vocab])],
        },
        "reset_cache": {"inputs": [], "outputs": [t("done", [1])]},
    }
    if not manifest["decode_step"]:  # without --decode-step (the MoE bundles)
        del expected["text_decoder_step"]
    return expected


def _sized(shape, seq):
    return tuple(seq if s == "seq" else s for s in shape)


def test_methods_in_the_manifest_match_the_program(exported):
    manifest = _manifest(exported)
    assert manifest["methods"] == _expected_methods(manifest)
    backend = ExecuTorchBackend.from_bundle(open_bundle(exported.out))
    program = backend.program
    methods = [m for m in METHODS if m in manifest["methods"]]
    assert manifest["decode_step"] == ("text_decoder_step" in methods) == exported.name.startswith("tiny")
    assert backend.has_step_method == manifest["decode_step"]
    assert program.method_names == set(methods) | set(manifest["constant_methods"])
    for name in methods:
        spec = manifest["methods"][name]
        # exported upper bounds: "seq" is max_seq_len
        assert program.input_bounds(name) == [_sized(i["shape"], MAX_SEQ_LEN) for i in spec["inputs"]], name
        # and the program really returns the documented shapes, at a sequence length below the bound
        inputs = [np.zeros(_sized(i["shape"], 5), dtype=i["dtype"]) for i in spec["inputs"]]
        if name == "text_decoder":
            inputs[1] = np.arange(5, dtype=np.int64)
        outs = program.run(name, *inputs)
        assert [o.shape for o in outs] == [_sized(o["shape"], 5) for o in spec["outputs"]], name
        assert all(np.isfinite(o).all() for o in outs), name
    backend.reset()


def test_constant_methods(exported):
    manifest, cfg = _manifest(exported), _config(exported)
    tok = Tokenizer(exported.out / "tokenizer.json")
    meta = manifest["constant_methods"]
    assert set(LLM_RUNNER_KEYS) <= set(meta)
    rt = manifest["runtime"]
    expected = {
        "get_max_seq_len": MAX_SEQ_LEN,
        "get_max_context_len": MAX_CONTEXT,
        "get_bos_id": tok.token_to_id("[gMASK]"),
        "get_eos_ids": cfg["eos_token_id"],
        "get_vocab_size": cfg["text_config"]["vocab_size"],
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_image_token_id": cfg["image_token_id"],
        "get_image_tokens": (IMAGE_HW[0] // 28) * (IMAGE_HW[1] // 28),
        "get_hidden_size": cfg["text_config"]["hidden_size"],
        "get_image_height": IMAGE_HW[0],
        "get_image_width": IMAGE_HW[1],
        "get_audio_token_id": tok.token_to_id("<|audio|>"),
        "get_audio_tokens": rt["audio_tokens"],
        "get_n_mels": rt["audio"]["num_mel_bins"],
        "get_audio_frames": AUDIO_FRAMES,
    }
    assert {k: meta.get(k) for k in expected} == expected


# --------------------------------------------------------------------------- 2. the program and parity.json


def test_program_metadata_equals_the_manifest(exported):
    manifest = _manifest(exported)
    backend = ExecuTorchBackend.from_bundle(open_bundle(exported.out))
    assert backend.metadata() == manifest["constant_methods"]
    assert backend.max_seq_len == MAX_SEQ_LEN and backend.has_reset_method


def test_parity_json(exported):
    manifest = _manifest(exported)
    parity = json.loads((exported.out / "parity.json").read_text(encoding="utf-8"))
    assert parity["target"] == "executorch" and parity["passed"] is True
    rows = parity["rows"]
    comps = ("vision_encoder", "audio_encoder", "token_embedding", "text_decoder")
    assert sorted((r["component"], r["reference"]) for r in rows) == sorted(
        (c, ref) for c in comps for ref in ("fp32", "quantized_eager")
    )
    for r in rows:
        what = f"{r['component']} vs {r['reference']}"
        assert r["passed"] is True and r["failures"] == [], what
        assert r["quant_kind"] == manifest["quantization"]["kinds"][r["component"]], what
        # judged with the project's thresholds for that reference and quantization, and the numbers hold
        th = thresholds_for(r["reference"], r["quant_kind"], r["component"])
        assert r["thresholds"] == th.to_dict(), what
        assert Metrics.from_dict(r["metrics"]).check(Thresholds.from_dict(r["thresholds"])) == [], what
        assert r["metrics"]["nonfinite"] == 0, what
    decoder = next(r for r in rows if r["component"] == "text_decoder")
    # teacher-forced over the calibration prompts: many positions, prefill in chunks of max_seq_len
    assert (
        decoder["metrics"]["shape"][0] > 2 * MAX_SEQ_LEN
        and decoder["metrics"]["shape"][1] == manifest["runtime"]["vocab_size"]
    )
    if exported.report is not None:  # the library's return value is what was written
        assert exported.report.to_json() == parity


# --------------------------------------------------------------------------- 3. generation through the bundle


@pytest.fixture(scope="module")
def quantized_eager_tiny(tiny_bundle):
    """The eager tiny model with the bundle's quantization and ExecuTorch's attention kernels: what
    the .pte should compute, run by torch."""
    src = tiny_bundle.request.open()
    apply_recipe(src.model, QuantRecipe(**_manifest(tiny_bundle)["quantization"]["recipe"]))
    use_executorch_attention(src.model)
    return src


@pytest.mark.parametrize("prompt", ["打开微信，给张三发消息：明天上午十点开会。", "Search Taobao for a phone case"])
def test_generation_through_the_bundle_matches_the_eager_quantized_model(tiny_bundle, quantized_eager_tiny, prompt):
    """Session.generate on the .pte vs the same loop on the eager quantized model.

    XNNPACK and torchao round int8 dynamic activations differently, so logits differ by ~1e-2 and a
    greedy pick between two logits closer than that may legitimately flip (random weights make
    such near-ties common). So: teacher-force the eager model on the bundle's tokens and require
    (a) every step's logits within the project's quantized_eager cosine threshold, (b) the same
    greedy pick wherever the eager model's margin exceeds twice the observed logit error, and
    (c) free-running eager generation to produce the same tokens up to the first near-tie.
    """
    bundle = open_bundle(tiny_bundle.out)
    src = quantized_eager_tiny
    image, audio, steps = synthetic_screenshot(seed=3), synthetic_speech(seed=3), 10
    et = Session(ExecuTorchBackend.from_bundle(bundle), bundle.tokenizer_path, bundle.spec, prefill_chunk=MAX_SEQ_LEN)
    got = et.generate(prompt, image=image, audio=audio, max_new_tokens=steps, keep_logits=True)
    assert got.prompt_tokens > MAX_SEQ_LEN  # prefill really ran in chunks on the .pte
    assert len(got.logits) == len(got.token_ids) >= 1

    eager = Session(TorchBackend(src.model), src.tokenizer_path, src.spec)
    prepared = eager.prepare(
        eager.messages_for(prompt, image=image, audio=audio, system=None), [image], [audio], max_new_tokens=steps
    )
    n = len(prepared.inputs.input_ids)
    assert n == got.prompt_tokens
    ref = [eager.prefill(prepared)[-1]]
    for i, token in enumerate(got.token_ids[:-1]):
        ref.append(eager.step(token, n + i, prepared.inputs.rope_delta))

    min_cos = thresholds_for(
        "quantized_eager", _manifest(tiny_bundle)["quantization"]["kinds"]["text_decoder"], "text_decoder"
    ).min_cosine
    first_tie, decisive = None, 0
    for i, (a, e) in enumerate(zip(got.logits, ref)):
        a, e = a.astype(np.float64), e.astype(np.float64)
        cos = float(a @ e / (np.linalg.norm(a) * np.linalg.norm(e)))
        assert cos >= min_cos, f"step {i}: cosine {cos:.6f} < {min_cos}"
        err, best = float(np.abs(a - e).max()), int(np.argmax(e))
        if e[best] - np.partition(e, -2)[-2] > 2 * err:
            decisive += 1
            assert got.token_ids[i] == best, (
                f"step {i}: bundle picked {got.token_ids[i]}, eager {best} (margin > 2x error {err:.3g})"
            )
        elif first_tie is None:
            first_tie = i
    assert decisive >= len(ref) // 4, f"only {decisive}/{len(ref)} decisive steps: the check would be vacuous"

    free = eager.generate(prompt, image=image, audio=audio, max_new_tokens=steps)
    agree = len(got.token_ids) if first_tie is None else first_tie + 1
    assert free.token_ids[:agree] == got.token_ids[:agree]


def test_cli_run_on_the_bundle(tiny_bundle):
    prompt, steps = "打开设置，把无线网络切换到 Office-5G", 6
    result = runner.invoke(app, ["run", str(tiny_bundle.out), "--prompt", prompt, "--max-new-tokens", str(steps)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    bundle = open_bundle(tiny_bundle.out)
    session = Session(
        ExecuTorchBackend.from_bundle(bundle), bundle.tokenizer_path, bundle.spec, prefill_chunk=MAX_SEQ_LEN
    )
    expected = session.generate(prompt, max_new_tokens=steps)
    assert result.stdout == expected.text + "\n"
    assert f"executorch: {expected.prompt_tokens} prompt tokens, {len(expected.token_ids)} generated" in result.stderr


# --------------------------------------------------------------------------- 4. autoglm-export validate BUNDLE


def test_validate_passes_on_the_fresh_bundle(tiny_bundle):
    result = runner.invoke(app, ["validate", str(tiny_bundle.out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert f"{tiny_bundle.out}: parity passed" in result.stderr
    rows = [l for l in result.stderr.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert len(rows) == 8 and all(l.startswith("PASS") for l in rows), result.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_validate_fails_on_a_modified_program(tiny_bundle, tmp_path, damage):
    copy = tmp_path / "android"
    shutil.copytree(tiny_bundle.out, copy)
    pte = copy / "model.pte"
    data = bytearray(pte.read_bytes())
    if damage == "flip":
        for i in range(len(data) // 2, len(data) // 2 + 4):
            data[i] ^= 0xFF
    else:
        data = data[: len(data) - 1000]
    pte.write_bytes(bytes(data))
    line = _error_line(runner.invoke(app, ["validate", str(copy)]))
    assert str(pte) in line
    assert ("sha256 mismatch" if damage == "flip" else "truncated") in line


# --------------------------------------------------------------------------- 5, 6, 10: refusals before any work


@pytest.fixture
def no_work(monkeypatch):
    """Loading the model is the first expensive step: a refusal must come before it."""

    def forbidden(self):
        raise AssertionError("the export loaded the model; it should have refused first")

    monkeypatch.setattr(ModelRequest, "open", forbidden)


def _old_bundle(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text('{"schema_version": 1, "target": "executorch"}')
    (path / "model.pte").write_bytes(b"old program")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_refuses_to_overwrite_without_force(tmp_path, no_work):
    out = tmp_path / "android"
    before = _old_bundle(out)
    t0 = time.perf_counter()
    line = _error_line(runner.invoke(app, ["android", "--out", str(out), *TINY_ARGS]))
    assert time.perf_counter() - t0 < 10
    assert str(out) in line and "--force" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _leftovers(tmp_path) == []
    with pytest.raises(ExportError, match="pass --force"):
        export_bundle("executorch", ModelRequest(), ExecuTorchOptions(out=out))


def test_qnn_without_sdk_fails_at_once(tmp_path, monkeypatch, no_work):
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    out = tmp_path / "qnn"
    line = _error_line(
        runner.invoke(app, ["android", "--out", str(out), "--backend", "qnn", "--soc", "SM8650", "--quant", "fp32"])
    )
    assert "QNN_SDK_ROOT" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option, value, hint",
    [("--quant", "4w", "8da4w"), ("--quant-encoder", "8w", "8da8w"), ("--quant", "int3", "expected one of")],
)
def test_unsupported_quant_is_refused(tmp_path, no_work, option, value, hint):
    out = tmp_path / "android"
    line = _error_line(runner.invoke(app, ["android", "--out", str(out), option, value]))
    assert f"{option} {value}" in line and hint in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 7. group size fallback


def test_group_size_fallback_is_applied_recorded_and_logged(moe_bundle):
    manifest = _manifest(moe_bundle)
    src = fp32_source(moe_bundle)
    odd = [
        f"text.{fqn}"
        for fqn, m in src.model.text.named_modules()
        if isinstance(m, nn.Linear) and m.in_features % GROUP_SIZE
    ]
    assert odd and all(name.endswith("down_proj") for name in odd)  # the fixture's dense FFN is 48 wide
    assert manifest["quantization"]["fallbacks"] == odd
    assert manifest["quantization"]["per_component"]["text"]["8da8w"] == len(odd)
    warnings = [r.getMessage() for r in moe_bundle.records if r.levelno >= logging.WARNING]
    for name in odd:
        assert any(name in w and "8da8w" in w and str(GROUP_SIZE) in w for w in warnings), (name, warnings)
    # the MoE layer's experts are 8da4w: only the odd layer fell back
    assert manifest["quantization"]["per_component"]["text"]["8da4w"] > 0
    assert manifest["model"]["text"]["moe"] is not None


# --------------------------------------------------------------------------- 8, 9: parity gate, reproducibility


def test_parity_gate_failure_publishes_nothing(perturbed):
    res, out = perturbed.result, perturbed.out
    assert res["error_type"] == ExportError.__name__ and res["error_module"] == ExportError.__module__, (
        perturbed.log_tail
    )
    assert "parity failed" in res["message"] and "nothing published" in res["message"]
    failed = out.parent / f"{out.name}.parity-failed.json"
    assert str(failed) in res["message"]
    assert not out.exists() and _leftovers(out.parent) == []
    report = json.loads(failed.read_text())
    assert report["passed"] is False
    bad = sorted((r["component"], r["reference"]) for r in report["rows"] if not r["passed"])
    assert bad == [("text_decoder", "fp32"), ("text_decoder", "quantized_eager")]
    assert all(r["failures"] for r in report["rows"] if not r["passed"])
    assert all(r["passed"] for r in report["rows"] if r["component"] != "text_decoder")


def test_same_checkpoint_lowers_to_the_same_program(perturbed, moe_bundle):
    """The perturbed run (another process, another hash seed) lowered the same checkpoint with the
    same options: the program must be byte-identical to the published one."""
    lowered = perturbed.result["lowered"]
    assert lowered is not None, perturbed.log_tail
    a, b = Path(lowered).read_bytes(), (moe_bundle.out / "model.pte").read_bytes()
    assert len(a) == len(b) and a == b, (
        f"{len(a)} vs {len(b)} bytes, first difference at byte "
        f"{next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))}"
    )
