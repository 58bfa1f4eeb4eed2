"""Calibration (GPTQ), QAT and the quantized checkpoint: grid, algorithm, commands, round trip, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autoglm_export.cli import app
from autoglm_export.errors import AutoglmError
from autoglm_export.quantize import QuantRecipe, apply_recipe, grid, qcheckpoint
from autoglm_export.quantize.calibrate import CalibrateOptions, run_calibrate
from autoglm_export.quantize.gptq import HessianAccumulator, gptq_quantize
from autoglm_export.quantize.qat import QATOptions, run_qat
from autoglm_export.request import ModelRequest

CALIBRATION = Path(__file__).resolve().parents[3] / "calibration_data"
FAST = dict(max_prompts=3, text_windows=2, seq_len=48)  # seconds, not minutes, on the tiny preset
runner = CliRunner()


# ----------------------------------------------------------------------------- grid + GPTQ


@pytest.mark.parametrize("bits,group", [(4, 32), (4, 64), (8, 128)])
def test_round_to_nearest_is_torchaos_grid(bits, group):
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine

    w = torch.randn(48, 128) * torch.linspace(0.1, 3, 128)
    qmin, qmax = grid.qrange(bits)
    scale, zp = choose_qparams_affine(
        w, MappingType.SYMMETRIC, (1, group), torch.int8, qmin, qmax, zero_point_dtype=torch.int8, keepdim=True
    )
    codes, scales = grid.round_to_nearest(w, bits, group)
    assert torch.equal(scales, scale.reshape(scales.shape).float())
    assert torch.equal(codes, quantize_affine(w, (1, group), scale, zp, torch.int8, qmin, qmax))


def test_int4_packing_round_trips():
    codes = torch.randint(-8, 8, (16, 64), dtype=torch.int8)
    packed = grid.pack_int4(codes)
    assert packed.shape == (16, 32) and packed.dtype == torch.uint8
    assert torch.equal(grid.unpack_int4(packed), codes)


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    x = torch.randn(4096, 128) @ torch.randn(128, 128) * 0.3  # correlated features: where GPTQ helps
    acc = HessianAccumulator(128)
    acc.add(x)
    r = gptq_quantize(w, acc, bits=4, group_size=32)
    assert r.codes.dtype == torch.int8 and int(r.codes.min()) >= -8 and int(r.codes.max()) <= 7

    def err(q):
        return ((x @ w.T - x @ q.T) ** 2).mean().item()

    gptq_err = err(grid.dequantize_codes(r.codes, r.scales))
    rtn_err = err(grid.dequantize_codes(*grid.round_to_nearest(w, 4, 32)))
    assert gptq_err < 0.8 * rtn_err, (gptq_err, rtn_err)
    assert r.loss == pytest.approx(gptq_err, rel=1e-3) and r.rtn_loss == pytest.approx(rtn_err, rel=1e-3)


def test_gptq_refuses_a_group_that_does_not_divide():
    acc = HessianAccumulator(96)
    acc.add(torch.randn(10, 96))
    with pytest.raises(ValueError, match="not a multiple of group size 64"):
        gptq_quantize(torch.randn(8, 96), acc, bits=4, group_size=64)


# ----------------------------------------------------------------------------- calibrate end to end


@pytest.fixture(scope="module")
def gptq_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "gptq"
    run_calibrate(ModelRequest(), CalibrateOptions(out=out, **FAST))
    return out


def test_calibrate_writes_a_checkpoint_that_beats_rtn(gptq_checkpoint):
    qc = qcheckpoint.load(gptq_checkpoint)
    cal = qc.config["calibration"]
    assert qc.method == "gptq" and cal["with_image"] >= 1 and cal["with_audio"] >= 1
    towers = {fqn.split(".")[0] for fqn in qc.linears}
    assert towers == {"text", "vision", "audio"}  # every tower saw its own modality's activations
    assert all(q.bits == 4 and q.group_size == 32 for fqn, q in qc.linears.items() if fqn.startswith("text."))
    assert all(
        q.bits == 8 and q.group_size == q.codes.shape[1] for fqn, q in qc.linears.items() if not fqn.startswith("text.")
    )
    assert cal["summed_output_mse"] < cal["summed_rtn_output_mse"]
    assert all(s["tokens"] > 0 for s in cal["layers"].values())


def test_quantized_checkpoint_loads_into_the_model_and_the_recipe(gptq_checkpoint):
    src = ModelRequest().open()
    qc = qcheckpoint.load(gptq_checkpoint)
    qcheckpoint.check_matches(qc, src)
    qcheckpoint.load_into_model(qc, src.model)
    modules = dict(src.model.named_modules())
    fqn = "text.layers.1.self_attn.q_proj"
    assert torch.equal(modules[fqn].weight, qc.linears[fqn].dequantize())
    report = apply_recipe(src.model, QuantRecipe(), fixed=qc.linears)
    assert sorted(report.calibrated) == sorted(qc.linears)
    for name in (fqn, "text.lm_head", "vision.blocks.0.attn.qkv"):
        w = modules[name].weight
        assert torch.equal(w.qdata, qc.linears[name].codes), name
        assert torch.equal(w.scale.float(), qc.linears[name].scales), name


def test_rtn_method_reproduces_the_plain_recipe(tmp_path):
    out = run_calibrate(ModelRequest(), CalibrateOptions(out=tmp_path / "rtn", method="rtn", **FAST))
    qc = qcheckpoint.load(out)
    src = ModelRequest().open()
    apply_recipe(src.model, QuantRecipe())
    w = dict(src.model.named_modules())["text.layers.0.mlp.down_proj"].weight
    assert torch.equal(w.qdata, qc.linears["text.layers.0.mlp.down_proj"].codes)


def test_recipe_mismatch_and_wrong_model_are_refused(gptq_checkpoint, tmp_path):
    qc = qcheckpoint.load(gptq_checkpoint)
    with pytest.raises(AutoglmError, match="group=64"):
        qcheckpoint.recipe_matches(qc, QuantRecipe(group_size=64))
    with pytest.raises(AutoglmError, match="merger=8da4w"):  # the merger's integers are int8 here
        qcheckpoint.recipe_matches(qc, QuantRecipe(group_size=qc.recipe["group_size"], merger="8da4w"))
    qcheckpoint.recipe_matches(qc, QuantRecipe(group_size=qc.recipe["group_size"], merger="8da8w"))  # = encoder
    other = tmp_path / "other"
    shutil.copytree(gptq_checkpoint, other)
    cfg = json.loads((other / qcheckpoint.CONFIG_NAME).read_text())
    cfg["model"]["text"]["hidden_size"] = 4096
    (other / qcheckpoint.CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(AutoglmError, match="different model .*text"):
        qcheckpoint.check_matches(qcheckpoint.load(other), ModelRequest().open())


def test_corrupt_quantized_checkpoint_is_refused(gptq_checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(gptq_checkpoint, bad)
    data = (bad / qcheckpoint.WEIGHTS_NAME).read_bytes()
    (bad / qcheckpoint.WEIGHTS_NAME).write_bytes(data[:-100] + bytes(100))
    result = runner.invoke(app, ["android", "--quantized-checkpoint", str(bad), "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and "sha256" in result.stderr and "model.safetensors" in result.stderr
    assert not (tmp_path / "a").exists()


def test_missing_or_empty_calibration_set_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app, ["calibrate", "--calibration-data", str(tmp_path / "nope"), "--out", str(tmp_path / "q")]
    )
    assert result.exit_code == 1 and str(tmp_path / "nope") in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "prompts.jsonl").write_text("")
    result = runner.invoke(app, ["qat", "--calibration-data", str(empty), "--out", str(tmp_path / "q")])
    assert result.exit_code == 1 and "no prompts" in result.stderr, result.stderr
    assert not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------- QAT

QAT_FAST = dict(max_prompts=1, text_windows=1, seq_len=48, top_k=16)


def test_qat_trains_converts_and_writes_the_same_format(tmp_path):
    out = run_qat(ModelRequest(), QATOptions(out=tmp_path / "qat", steps=12, lr=1e-4, save_every=100, **QAT_FAST))
    qc = qcheckpoint.load(out)
    cal = qc.config["calibration"]
    assert qc.method == "qat" and cal["steps"] == 12
    log = [json.loads(l) for l in (tmp_path / "qat.qat-log.jsonl").read_text().splitlines()]
    assert len(log) == 12
    by_sample: dict[int, list[float]] = {}
    for rec in log:
        by_sample.setdefault(rec["sample"], []).append(rec["loss"])
    for i, losses in by_sample.items():  # the same sample gets a lower loss later in training
        if len(losses) >= 3:
            assert losses[-1] < losses[0], (i, losses)
    assert {fqn.split(".")[0] for fqn in qc.linears} >= {"text"}
    src = ModelRequest().open()
    qcheckpoint.check_matches(qc, src)
    qcheckpoint.load_into_model(qc, src.model)
    apply_recipe(src.model, QuantRecipe(), fixed=qc.linears)


def test_qat_resumes_to_the_same_result(tmp_path, monkeypatch):
    import autoglm_export.quantize.qat as qat_mod

    opts = dict(steps=6, lr=1e-4, save_every=3, seed=7, **QAT_FAST)
    straight = qcheckpoint.load(run_qat(ModelRequest(), QATOptions(out=tmp_path / "straight", **opts)))

    real = qat_mod.distillation_loss
    calls = {"n": 0}

    def crash_at_step_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(qat_mod, "distillation_loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_qat(ModelRequest(), QATOptions(out=tmp_path / "resumed", **opts))
    assert (tmp_path / "resumed.qat-state" / "state.json").is_file() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(qat_mod, "distillation_loss", real)
    resumed = qcheckpoint.load(run_qat(ModelRequest(), QATOptions(out=tmp_path / "resumed", resume=True, **opts)))
    assert not (tmp_path / "resumed.qat-state").exists()
    for fqn, q in straight.linears.items():
        assert torch.equal(q.codes, resumed.linears[fqn].codes), fqn
        assert torch.allclose(q.scales, resumed.linears[fqn].scales), fqn


def test_resume_without_state_is_refused(tmp_path):
    with pytest.raises(AutoglmError, match="nothing to resume"):
        run_qat(ModelRequest(), QATOptions(out=tmp_path / "q", steps=2, resume=True, **QAT_FAST))


# ----------------------------------------------------------------------------- MoE + the ExecuTorch round trip


def test_calibrate_a_moe_checkpoint_with_audio(tmp_path):
    """Experts see only their routed tokens; one that sees none falls back to round-to-nearest (recorded)."""
    from model_fixtures import moe_request, write_moe_checkpoints

    ckpt, asr = write_moe_checkpoints(tmp_path)
    request = moe_request(ckpt, asr)
    out = run_calibrate(request, CalibrateOptions(out=tmp_path / "q", **FAST))
    qc = qcheckpoint.load(out)
    experts = [f for f in qc.linears if ".experts." in f]
    assert experts and all(qc.config["calibration"]["layers"][f]["method"] in ("gptq", "rtn") for f in experts)
    assert any(f.startswith("audio.") for f in qc.linears)
    src = request.open()
    qcheckpoint.check_matches(qc, src)
    qcheckpoint.load_into_model(qc, src.model)
    report = apply_recipe(src.model, QuantRecipe(), fixed=qc.linears)
    assert sorted(report.calibrated) == sorted(qc.linears)  # the 8da8w fallback layer too


def test_android_export_of_a_calibrated_checkpoint_round_trips(gptq_checkpoint, tmp_path):
    """export -> ExecuTorch runtime -> parity gate -> manifest -> `validate` rebuilds the same references
    (and refuses once the checkpoint has changed)."""
    ckpt = tmp_path / "gptq"
    shutil.copytree(gptq_checkpoint, ckpt)
    gptq_checkpoint = ckpt
    out = tmp_path / "android"
    result = runner.invoke(
        app, ["android", "--quantized-checkpoint", str(gptq_checkpoint), "--out", str(out), "--max-seq-len", "32"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["quantized_checkpoint"]["method"] == "gptq" and q["quantized_checkpoint"]["layers"] == len(
        qcheckpoint.load(gptq_checkpoint).linears
    )
    assert manifest["source"]["quantized_checkpoint"] == str(gptq_checkpoint)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"]
    result = runner.invoke(app, ["validate", str(out)])
    assert result.exit_code == 0, result.output
    qc = qcheckpoint.load(ckpt)
    qc.linears = dict(qc.linears)  # read into memory: a loaded checkpoint's layers are read when asked for
    q = qc.linears["text.lm_head"]
    q.codes[0, 0] = 0 if int(q.codes[0, 0]) else 1
    qcheckpoint.save(qc, ckpt, force=True)
    result = runner.invoke(app, ["validate", str(out)])
    assert result.exit_code == 1 and "changed since this bundle was exported" in result.stderr
