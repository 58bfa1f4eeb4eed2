"""Bundle size estimates from the model's structure, and the free-space check that uses them."""

from __future__ import annotations

import shutil

import pytest

from autoglm_export.config import parse_model_config
from autoglm_export.disk import check_free_space, embedding_bytes, estimate_bundle_bytes, linear_bytes
from autoglm_export.errors import ExportError
from autoglm_export.presets import PRESETS
from autoglm_export.quantize import QuantRecipe
from autoglm_export.sizes import kv_cache_bytes, param_counts
from autoglm_export.source import open_source


def _9b():
    p = PRESETS["autoglm-phone-9b"]
    return parse_model_config(p.config), p.shape


def test_linear_bytes_per_scheme():
    assert linear_bytes(64, 128, "fp32", 32) == 64 * 128 * 4
    assert linear_bytes(64, 128, "8da8w", 32) == 64 * 128 + 64 * 4
    assert linear_bytes(64, 128, "8da4w", 32) == 64 * 128 // 2 + (64 * 128 // 32) * 4
    # 8da4w falls back to int8 per channel when the group does not divide the input (recipes.applied_scheme)
    assert linear_bytes(64, 100, "8da4w", 32) == linear_bytes(64, 100, "8da8w", 32)
    assert embedding_bytes(10, 64, "8", 32) == 640 + 40 and embedding_bytes(10, 64, "none", 32) == 2560


def test_fp32_estimate_is_every_parameter_in_fp32():
    cfg, shape = _9b()
    src = open_source(preset="autoglm-phone-9b", weights=False)
    est = estimate_bundle_bytes(cfg, shape, None)
    params = param_counts(src.model)["total"] * 4
    # plus the precomputed constants (vision position embedding and rotary tables at 672x308)
    assert params < est.total < params * 1.001
    assert est.kv_cache == kv_cache_bytes(cfg.text, 8192, 4) == 671_088_640


def test_9b_int4_estimate():
    cfg, shape = _9b()
    est = estimate_bundle_bytes(cfg, shape, QuantRecipe())  # 8da4w g32, encoder 8da8w, int8 embedding
    c = est.components
    assert set(c) == {"token_embedding", "text_decoder", "vision_encoder"}
    assert c["token_embedding"] == 151552 * 4096 + 151552 * 4
    # 8.78B decoder weights (layers + lm_head) at half a byte plus a 4-byte scale per 32
    assert 5.3e9 < c["text_decoder"] < 5.6e9
    assert 0.85e9 < c["vision_encoder"] < 0.95e9
    assert est.describe().startswith("7.02 GB (token_embedding")
    with_kv = estimate_bundle_bytes(cfg, shape, QuantRecipe(), include_kv_cache=True)
    assert with_kv.total == est.total + est.kv_cache


def test_check_free_space_names_dir_estimate_and_free(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    check_free_space(tmp_path / "not" / "yet", 1000)  # nearest existing parent is used
    with pytest.raises(ExportError) as err:
        check_free_space(tmp_path / "out", free * 2, what="the 9B bundle")
    msg = str(err.value)
    assert str(tmp_path / "out") in msg and "the 9B bundle" in msg and "free" in msg and "\n" not in msg


@pytest.mark.parametrize("command", ["android", "ios", "onnx"])
def test_export_checks_disk_before_loading(command, tmp_path, monkeypatch):
    """Every target's export refuses a destination without room for its estimated bundle, in one line,
    before any weight is read (``pipeline.check_disk``)."""
    from typer.testing import CliRunner

    from autoglm_export import disk, source
    from autoglm_export.cli import app

    monkeypatch.setattr(disk, "free_bytes", lambda path: (tmp_path, 1000))
    monkeypatch.setattr(source, "load_model", lambda *a, **k: pytest.fail("weights were read before the disk check"))
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, [command, "--out", str(out)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "not enough disk space" in lines[0] and "estimate" in lines[0], result.output
    assert f"the {command} bundle" in lines[0] and not out.exists()
