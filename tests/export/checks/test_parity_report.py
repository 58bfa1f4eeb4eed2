"""The combined parity report: numbers per bundle, plots from per-position errors, exit code."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from autoglm_export.bundle import BundleWriter
from autoglm_export.checks.against_references import compare
from autoglm_export.cli import app
from autoglm_runtime.preprocess import ImageSpec
from autoglm_runtime.spec import ModelSpec

SPEC = ModelSpec(
    max_context=32,
    vocab_size=16,
    hidden_size=8,
    eos_token_ids=(1,),
    image_token_id=15,
    image=ImageSpec(height=28, width=28),
)


def _bundle(path, target: str, noise: float):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((12, 16))
    got = ref + noise * rng.standard_normal(ref.shape)
    report = compare(
        target, {"text_decoder": got}, {"quantized_eager": {"text_decoder": ref}}, {"text_decoder": "fp32"}
    )
    with BundleWriter(path) as w:
        w.write_json("parity.json", report.to_json())
        w.finish({"target": target, "runtime": SPEC.to_dict()})
    return report


def test_report_passes_plots_and_fails_on_a_bad_or_missing_bundle(tmp_path):
    assert _bundle(tmp_path / "good", "executorch", 1e-7).passed
    assert not _bundle(tmp_path / "bad", "onnx", 1e-1).passed
    runner = CliRunner()
    out = tmp_path / "parity-report.md"

    ok = runner.invoke(app, ["parity-report", str(tmp_path / "good"), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    html = out.with_suffix(".html").read_text()
    assert "data:image/png;base64," in html and "Overall: **PASS**" in out.read_text()

    bad = runner.invoke(
        app,
        ["parity-report", str(tmp_path / "good"), str(tmp_path / "bad"), str(tmp_path / "missing"), "--out", str(out)],
    )
    assert bad.exit_code == 1
    md = out.read_text()
    assert "Overall: **FAIL**" in md and "FAIL: max abs diff" in md and "no such bundle directory" in md
