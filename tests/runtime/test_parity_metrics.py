"""Parity metrics against hand-computed values, thresholds, and the parity.json report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autoglm_runtime.parity import (
    QUANT_KINDS,
    THRESHOLDS,
    Metrics,
    ParityReport,
    Thresholds,
    compare_arrays,
    kl_divergence,
    thresholds_for,
)


def test_kl_of_known_distributions():
    ref, got = np.log([[0.5, 0.5]]), np.log([[0.25, 0.75]])
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
    assert kl_divergence(ref, got)[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert kl_divergence(ref, ref)[0] == 0.0
    # logits are only defined up to a constant; huge values must not overflow
    assert kl_divergence(ref + 1000.0, got - 1000.0)[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-9)
    # a token the reference rules out (p = 0) contributes nothing; one the export rules out is infinite
    assert kl_divergence([[0.0, -np.inf]], [[0.0, 3.0]])[0] == pytest.approx(math.log(1 + math.e**3))
    assert kl_divergence([[0.0, 0.0]], [[0.0, -np.inf]])[0] == np.inf


def test_logit_metrics():
    ref = np.eye(3)[[0, 1, 2, 0]][None] * 5.0  # [1, 4 positions, vocab 3]
    got = np.eye(3)[[0, 0, 2, 1]][None] * 5.0
    m = compare_arrays("text_decoder", got, ref, logits=True)
    assert m.shape == (1, 4, 3) and m.top1_agreement == 0.5
    per_row = kl_divergence(ref[0], got[0])
    assert per_row[0] == 0.0 and per_row[1] > 0
    assert m.kl_mean == pytest.approx(per_row.mean()) and m.kl_max == pytest.approx(per_row.max())
    assert compare_arrays("x", got, ref).top1_agreement is None


def test_abs_and_cosine():
    m = compare_arrays("v", np.array([2.5, -4.0]), np.array([2.0, -4.0]))
    assert (m.max_abs, m.ref_scale, m.rel_max_abs) == (0.5, 4.0, 0.125)
    assert compare_arrays("c", np.array([1.0, 1.0]), np.array([1.0, 0.0])).cosine == pytest.approx(1 / math.sqrt(2))
    assert compare_arrays("c", np.array([0.0, 1.0]), np.array([1.0, 0.0])).cosine == 0.0
    assert compare_arrays("c", np.zeros(3), np.zeros(3)).cosine == 1.0
    assert compare_arrays("c", np.zeros(3), np.ones(3)).cosine == 0.0
    # float32 inputs are compared in float64: a tiny difference is not rounded away
    ref = np.full(1000, 1.0, dtype=np.float32)
    assert compare_arrays("c", ref + np.float32(1e-7), ref).max_abs > 0
    with pytest.raises(ValueError, match=r"v: shape \(2,\) differs"):
        compare_arrays("v", np.zeros(2), np.zeros(3))


def test_checks():
    ref = np.linspace(-1, 1, 100)
    th = Thresholds(max_rel_abs=1e-4, min_cosine=0.99999)
    assert compare_arrays("ok", ref + 1e-6, ref).check(th) == []
    failures = compare_arrays("bad", -ref, ref).check(th)
    assert len(failures) == 2 and "x scale > 0.0001" in failures[0] and "cosine -1.000000 < 0.99999" in failures[1]

    nan = ref.copy()
    nan[3] = np.nan
    failures = compare_arrays("nan", nan, ref).check(Thresholds())  # no limits at all, still fails
    assert failures and "1 non-finite" in failures[0]

    logits_th = Thresholds(min_top1=0.9, max_kl=0.1)
    m = compare_arrays("d", np.eye(3)[[0, 0, 2, 1]], np.eye(3)[[0, 1, 2, 0]], logits=True)
    assert [f.split()[0] for f in m.check(logits_th)] == ["top-1", "mean"]
    assert "needs logits" in compare_arrays("e", ref, ref).check(logits_th)[0]


def test_threshold_table():
    assert set(THRESHOLDS) == {(r, q) for r in ("quantized_eager", "fp32") for q in QUANT_KINDS}
    dec = thresholds_for("quantized_eager", "int8_dynamic", "text_decoder")
    assert dec.min_cosine == 0.999 and dec.min_top1 == 0.9 and dec.max_rel_abs is None
    vis = thresholds_for("quantized_eager", "int8_dynamic", "vision_encoder")
    assert vis.min_cosine == 0.999 and vis.min_top1 is None and vis.max_kl is None
    assert thresholds_for("fp32", "fp32", "text_decoder") == thresholds_for("quantized_eager", "fp32", "text_decoder")
    assert thresholds_for("fp32", "weight_only", "text_decoder").max_kl == 0.5
    with pytest.raises(ValueError, match="unknown reference 'onnx'"):
        thresholds_for("onnx", "fp32", "text_decoder")
    with pytest.raises(ValueError, match="unknown component"):
        thresholds_for("fp32", "fp32", "decoder")


def test_report_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 6, 32))
    report = ParityReport(target="executorch", info={"quantization": "8da4w"})
    assert not report.passed  # nothing checked is not a pass
    th = thresholds_for("quantized_eager", "int8_dynamic", "text_decoder")
    report.add("text_decoder", "quantized_eager", compare_arrays("logits", ref + 1e-3, ref, logits=True), th)
    assert report.passed
    nan = ref.copy()
    nan[0, 0, 0] = np.nan
    report.add(
        "vision_encoder",
        "fp32",
        compare_arrays("emb", nan, ref),
        thresholds_for("fp32", "int8_dynamic", "vision_encoder"),
    )
    assert not report.passed and report.failures[0].startswith("vision_encoder vs fp32: 1 non-finite")

    path = tmp_path / "parity.json"
    report.write(path)
    raw = path.read_text()
    assert "NaN" in raw and json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    d = json.loads(raw)
    assert (
        d["passed"] is False and d["rows"][0]["thresholds"]["min_top1"] == 0.9 and d["info"]["quantization"] == "8da4w"
    )
    back = ParityReport.read(path)
    assert back.target == "executorch" and back.passed is False and len(back.rows) == 2
    assert math.isnan(back.rows[1]["metrics"]["max_abs"])
    assert Metrics.from_dict(back.rows[0]["metrics"]) == Metrics.from_dict(report.rows[0]["metrics"])

    lines = report.lines()
    assert len(lines) == 2 and lines[0].startswith("PASS  text_decoder") and "top1 100.0%" in lines[0]
    assert lines[1].startswith("FAIL  vision_encoder") and "non-finite" in lines[1]


def test_top1_ignores_near_ties_but_reports_them():
    from autoglm_runtime.parity import TIE_MARGIN, compare_arrays

    ref = np.array([[5.0, 1.0, 0.0], [1.0, 1.0 + TIE_MARGIN / 10, 0.0], [0.0, 4.0, 1.0]])
    got = np.array([[5.0, 1.0, 0.0], [1.0 + TIE_MARGIN / 5, 1.0, 0.0], [4.0, 0.0, 1.0]])
    m = compare_arrays("logits", got, ref, logits=True)
    assert m.top1_positions == 2  # the middle row is a tie at this scale
    assert m.top1_agreement == 0.5 and abs(m.top1_all - 1 / 3) < 1e-12


def test_an_ungated_row_is_shown_but_does_not_decide():
    m = compare_arrays("x", np.ones(4), np.ones(4))
    report = ParityReport(target="t", rows=[])
    report.add("vision_encoder", "quantized_eager", m, Thresholds(min_cosine=0.5))
    info = report.add("text_decoder", "fp32", m, Thresholds(min_cosine=1.5))  # fails...
    info["gated"] = False  # ...but is informative only
    assert report.passed and report.failures == []
    assert report.lines()[1].startswith("INFO") and "(not gated)" in report.lines()[1]
    assert ParityReport.from_json(json.loads(json.dumps(report.to_json()))).passed
    info["gated"] = True
    assert not report.passed and report.lines()[1].startswith("FAIL")
