"""A backend's outputs judged against the references: one parity row per (component, reference),
with the thresholds of ``autoglm_runtime.parity`` (the one threshold table)."""

from __future__ import annotations

import numpy as np

from autoglm_runtime.parity import ParityReport, compare_arrays, kl_divergence, thresholds_for

from .floor import ROUNDED_AT_RUN_TIME, widened


def per_position_errors(got: np.ndarray, ref: np.ndarray) -> dict[str, list[float]]:
    """Max abs logit error (relative to the reference's scale) and KL, one value per decoder position."""
    scale = max(float(np.abs(ref).max()), 1e-6)
    rel = np.abs(got.astype(np.float64) - ref).max(axis=-1) / scale
    return {
        "rel_max_abs": [round(float(v), 8) for v in rel],
        "kl": [round(float(v), 10) for v in kl_divergence(ref, got)],
    }


def compare(
    target: str,
    got: dict[str, np.ndarray],
    references: dict[str, dict[str, np.ndarray]],
    quant_kinds: dict[str, str],
    floors: dict[str, np.ndarray] | None = None,
    informative: tuple[str, ...] = (),
) -> ParityReport:
    """references: {"quantized_eager": outputs, "fp32": outputs}; quant_kinds: component -> kind.

    ``floors``: component -> the quantized eager model's outputs under float-level noise (``floor.py``);
    those components' run-time-rounded faithfulness rows are then judged against that floor. ``informative``: components
    whose end-to-end ``fp32`` row is reported but not gated (their cost is gated per block: ``layerwise.py``)."""
    report = ParityReport(target=target, rows=[])
    for reference, ref_out in references.items():
        for comp, ref in ref_out.items():
            kind = quant_kinds[comp]
            if reference == "fp32" and kind == "fp32" and "quantized_eager" in references:
                continue  # unquantized component: the two references are the same model
            logits = comp == "text_decoder"
            metrics = compare_arrays(comp, got[comp], ref, logits=logits)
            th = thresholds_for(reference, kind, comp)
            row = {"component": comp, "reference": reference, "quant_kind": kind}
            if reference == "quantized_eager" and comp in (floors or {}) and kind in ROUNDED_AT_RUN_TIME:
                floor = compare_arrays(comp, floors[comp], ref, logits=logits)
                th = widened(th, floor)
                row["floor"] = floor.to_dict()
            failures = metrics.check(th)
            row.update(metrics=metrics.to_dict(), thresholds=th.to_dict(), passed=not failures, failures=failures)
            if reference == "fp32" and comp in informative:
                row["gated"] = False  # shown, not judged: see layerwise.py
            if comp == "text_decoder":  # per position, for the parity report's plots
                row["per_position"] = per_position_errors(got[comp], ref)
            report.rows.append(row)
    return report
