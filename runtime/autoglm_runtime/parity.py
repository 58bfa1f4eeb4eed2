"""Parity metrics and thresholds: the one place that decides whether an exported model answers like
the original. numpy only.

Metrics (``compare_arrays(name, got, ref)``; ``got`` is the exported program's output, ``ref`` the
reference's; both are compared in float64):

- ``max_abs``      max |got - ref|
- ``ref_scale``    max |ref|
- ``rel_max_abs``  max_abs / max(ref_scale, 1e-6): the error as a fraction of the output's scale
- ``cosine``       cosine similarity of the flattened arrays (1.0 when both are all zeros)
- ``nonfinite``    count of NaN/inf in ``got``; any at all fails, whatever the thresholds
- logits only (last axis = vocab, every other axis = positions):
  ``top1_agreement`` fraction of *decisive* positions where argmax(got) == argmax(ref). A position
  is decisive when the reference's top-1 beats its runner-up by at least ``TIE_MARGIN`` of the
  logit scale; near-ties (common in random-weight test models) flip under any rounding and say
  nothing about faithfulness. ``top1_all`` is the plain agreement over every position and
  ``top1_positions`` how many positions were decisive (with none, agreement is 1.0 vacuously);
  ``kl_mean`` / ``kl_max`` KL(softmax(ref) || softmax(got)) per position, in nats.

Thresholds (``THRESHOLDS[(reference, quant_kind)]``), by what the export is compared with:

- reference ``quantized_eager``: the eager PyTorch model carrying the same quantization. The
  exported program must be *faithful* to it.
- reference ``fp32``: the unquantized original. This measures what quantization costs.

and by how the model is quantized:

- ``fp32``:         no quantization.
- ``int8_dynamic``: 8da4w / 8da8w, int8 activations quantized at run time. XNNPACK and torchao round
  activations differently, so even a faithful export is judged by cosine and top-1, not by 1e-5.
  (Measured: cosine 0.99978 for the tiny 8da4w decoder vs its eager torchao reference.)
- ``weight_only``:  int4/int8 weights with fp32 activations (ONNX): near float precision
  against its quantized eager reference.
- ``int8_activations``: the same weights, activations rounded to int8 per block at run time
  (ONNX ``--int8-activations``, MatMulNBits accuracy_level 4) against the fp32-activation twin.
- ``weight_only_fp16`` / ``fp16``: Core ML packages compute in fp16; their fp32-compute eager twin
  differs by fp16 activation rounding (~2e-3 of scale), so faithfulness allows 1e-2.

Two more kinds of row come from the exporter's gate for deep models (``autoglm_export.checks``):
``fp32_per_layer`` (the cost judged block by block, teacher-forced: ``layerwise.py``; the end-to-end
``fp32`` row is then kept with ``"gated": false``, shown as INFO and not part of the verdict) and a
``floor`` on ``int8_dynamic`` faithfulness rows (thresholds widened to a multiple of the twin's own
distance under float-level noise: ``floor.py``).

``max_kl`` bounds ``kl_mean`` (the mean over positions; the max is reported, not judged: one flat
position of a random-weight model should not fail a run). Encoders and the token embedding output
features, not distributions: ``thresholds_for`` drops top-1 and KL for them.

The ``fp32``-reference limits for quantized kinds are loose on purpose: the embedded tiny model has
random weights, so its logits are flat and quantization moves them a lot relative to their spread.
Tighten them when the tiny model is trained.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .spec import COMPONENTS

REFERENCES = ("quantized_eager", "fp32")
TIE_MARGIN = 0.01  # top-1 vs runner-up gap, as a fraction of the logit scale, below which a position is a tie
QUANT_KINDS = ("fp32", "int8_dynamic", "weight_only", "int8_activations", "weight_only_fp16", "fp16")
LOGIT_COMPONENTS = ("text_decoder",)


@dataclass(frozen=True)
class Thresholds:
    max_rel_abs: float | None = None  # rel_max_abs <= this
    min_cosine: float | None = None  # cosine >= this
    min_top1: float | None = None  # top1_agreement >= this (logits only)
    max_kl: float | None = None  # kl_mean <= this, in nats (logits only)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Thresholds:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})

    def features_only(self) -> Thresholds:
        """The same limits without the logits-only ones (for encoders and embeddings)."""
        return Thresholds(max_rel_abs=self.max_rel_abs, min_cosine=self.min_cosine)


FAITHFUL_FP32 = Thresholds(max_rel_abs=1e-4, min_cosine=0.99999)
QUANTIZATION_COST = Thresholds(min_cosine=0.95, max_kl=0.5)
# fp16-compute programs (Core ML) vs an fp32-compute twin: activation rounding alone gives ~2e-3 of scale.
# Measured through the MIL interpreter on the tiny models: cosine >= 0.999999, rel 1.1e-3..1.9e-3, top-1 100%.
FAITHFUL_FP16 = Thresholds(max_rel_abs=1e-2, min_cosine=0.9995, min_top1=0.95, max_kl=1e-3)
# int4 weights with int8 activations (ONNX MatMulNBits accuracy_level 4) vs the fp32-activation twin: the
# per-block activation rounding alone. Measured on the tiny models: rel 1.1e-2..1.8e-2, cosine >= 0.99990,
# top-1 100%, KL 1.2e-4 (the `small` decoder on random inputs: 2.1e-2 of scale); about 3x margin.
FAITHFUL_INT8_ACTIVATIONS = Thresholds(max_rel_abs=5e-2, min_cosine=0.9995, min_top1=0.95, max_kl=1e-3)

# (reference, quant kind) -> limits. Edit here; nothing else hard-codes a parity number.
THRESHOLDS: dict[tuple[str, str], Thresholds] = {
    # the exported program vs the eager model with the same quantization: must be faithful
    ("quantized_eager", "fp32"):         FAITHFUL_FP32,
    ("quantized_eager", "int8_dynamic"): Thresholds(min_cosine=0.999, min_top1=0.9),
    ("quantized_eager", "weight_only"):  Thresholds(max_rel_abs=1e-3, min_cosine=0.9999),
    ("quantized_eager", "int8_activations"): FAITHFUL_INT8_ACTIVATIONS,
    ("quantized_eager", "weight_only_fp16"): FAITHFUL_FP16,
    ("quantized_eager", "fp16"):         FAITHFUL_FP16,
    # the exported program vs the unquantized original: the cost of quantization
    ("fp32", "fp32"):                    FAITHFUL_FP32,
    ("fp32", "int8_dynamic"):            QUANTIZATION_COST,
    ("fp32", "weight_only"):             QUANTIZATION_COST,
    ("fp32", "int8_activations"):        QUANTIZATION_COST,
    ("fp32", "weight_only_fp16"):        QUANTIZATION_COST,
    ("fp32", "fp16"):                    FAITHFUL_FP16,
}  # fmt: skip


def thresholds_for(reference: str, quant_kind: str, component: str) -> Thresholds:
    for value, allowed, what in (
        (reference, REFERENCES, "reference"),
        (quant_kind, QUANT_KINDS, "quantization kind"),
        (component, COMPONENTS, "component"),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    th = THRESHOLDS[(reference, quant_kind)]
    return th if component in LOGIT_COMPONENTS else th.features_only()


@dataclass
class Metrics:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    ref_scale: float
    rel_max_abs: float
    cosine: float
    nonfinite: int = 0
    top1_agreement: float | None = None
    top1_all: float | None = None
    top1_positions: int | None = None
    kl_mean: float | None = None
    kl_max: float | None = None

    def check(self, th: Thresholds) -> list[str]:
        """Human-readable failures against ``th``; empty when every limit holds. NaN never passes."""
        out: list[str] = []
        if self.nonfinite:
            out.append(f"{self.nonfinite} non-finite values (NaN/inf) in the output")
        # `not (a <= b)` so that NaN fails
        if th.max_rel_abs is not None and not (self.rel_max_abs <= th.max_rel_abs):
            out.append(f"max abs diff {self.rel_max_abs:.3g} x scale > {th.max_rel_abs:g}")
        if th.min_cosine is not None and not (self.cosine >= th.min_cosine):
            out.append(f"cosine {self.cosine:.6f} < {th.min_cosine:g}")
        if th.min_top1 is not None:
            if self.top1_agreement is None:
                out.append("top-1 agreement needs logits but was not computed")
            elif not (self.top1_agreement >= th.min_top1):
                out.append(f"top-1 agreement {self.top1_agreement:.1%} < {th.min_top1:.1%}")
        if th.max_kl is not None:
            if self.kl_mean is None:
                out.append("KL needs logits but was not computed")
            elif not (self.kl_mean <= th.max_kl):
                out.append(f"mean KL {self.kl_mean:.3g} nats > {th.max_kl:g}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        kw = {f.name: d.get(f.name) for f in fields(cls) if f.name in d}
        kw["shape"] = tuple(d["shape"])
        return cls(**kw)

    def summary(self) -> str:
        s = f"cos {self.cosine:.6f}  rel {self.rel_max_abs:.2e}"
        if self.top1_agreement is not None:
            s += f"  top1 {self.top1_agreement:6.1%} of {self.top1_positions} (all {self.top1_all:.1%})  KL {self.kl_mean:.2e}/{self.kl_max:.2e}"
        return s


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # rows of all -inf stay -inf instead of NaN
    shifted = x - m
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


ROWS = 64  # rows of logits per step: a float64 temporary is ROWS x vocab, not positions x vocab (5 GB at 9B)


def _row_chunks(*arrays: np.ndarray):
    for i in range(0, arrays[0].shape[0], ROWS):
        yield tuple(a[i : i + ROWS] for a in arrays)


def kl_divergence(ref_logits: np.ndarray, got_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(got)) over the last axis, in nats, float64; one value per row
    (computed ``ROWS`` rows at a time: each row on its own, so the same numbers)."""
    ref_logits, got_logits = np.asarray(ref_logits), np.asarray(got_logits)
    if ref_logits.ndim == 2 and ref_logits.shape[0] > ROWS:
        return np.concatenate([kl_divergence(r, g) for r, g in _row_chunks(ref_logits, got_logits)])
    lp_ref = _log_softmax(np.asarray(ref_logits, dtype=np.float64))
    lp_got = _log_softmax(np.asarray(got_logits, dtype=np.float64))
    p_ref = np.exp(lp_ref)
    with np.errstate(invalid="ignore"):
        terms = np.where(p_ref > 0, p_ref * (lp_ref - lp_got), 0.0)  # 0 * log 0 = 0
    return np.maximum(terms.sum(axis=-1), 0.0)  # rounding can give -1e-17


def compare_arrays(name: str, got: np.ndarray, ref: np.ndarray, *, logits: bool = False) -> Metrics:
    """The metrics of ``got`` against ``ref``, in float64 ``ROWS`` rows at a time: a whole float64 copy
    of a 9B run's logits is 0.65 GB per array, and the comparison made three."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        raise ValueError(f"{name}: shape {got.shape} differs from the reference's {ref.shape}")
    if got.size == 0:
        raise ValueError(f"{name}: empty output")
    width = got.shape[-1] if got.ndim else 1
    flat_got, flat_ref = got.reshape(-1, width), ref.reshape(-1, width)
    nonfinite, diffs, scales, dot, gg, rr = 0, [], [], 0.0, 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        for a, b in _row_chunks(flat_got, flat_ref):
            a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            nonfinite += int(a.size - np.count_nonzero(np.isfinite(a)))
            diffs.append(np.max(np.abs(a - b)))
            scales.append(np.max(np.abs(b)))
            dot, gg, rr = dot + float(a @ b), gg + float(a @ a), rr + float(b @ b)
        max_abs, ref_scale = float(np.max(diffs)), float(np.max(scales))
        ng, nr = math.sqrt(gg), math.sqrt(rr)
    if ng == 0.0 and nr == 0.0:
        cosine = 1.0
    elif ng == 0.0 or nr == 0.0:
        cosine = 0.0
    else:
        cosine = float(dot / (ng * nr))
    m = Metrics(name, tuple(got.shape), max_abs, ref_scale, max_abs / max(ref_scale, 1e-6), cosine, nonfinite)
    if logits:
        vocab = got.shape[-1]
        g2, r2 = got.reshape(-1, vocab), ref.reshape(-1, vocab)
        agree = np.argmax(g2, axis=-1) == np.argmax(r2, axis=-1)
        top2 = np.concatenate([np.sort(r, axis=-1)[:, -2:] for (r,) in _row_chunks(r2)]).astype(np.float64)
        decisive = (top2[:, 1] - top2[:, 0]) >= TIE_MARGIN * max(ref_scale, 1e-6)
        m.top1_all = float(np.mean(agree))
        m.top1_positions = int(np.count_nonzero(decisive))
        m.top1_agreement = float(np.mean(agree[decisive])) if decisive.any() else 1.0
        kl = kl_divergence(r2, g2)
        m.kl_mean, m.kl_max = float(np.mean(kl)), float(np.max(kl))
    return m


# ---- the report written to parity.json


def _finite_or_str(x: Any) -> Any:
    """Strict JSON has no NaN/inf: write them as the strings float() reads back."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _finite_or_str(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_str(v) for v in x]
    return x


def _floats_back(d: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if v in ("NaN", "Infinity", "-Infinity") else v for k, v in d.items()}


@dataclass
class ParityReport:
    """Rows of (component, reference, metrics, thresholds, verdict). Passes only if it has rows and all pass."""

    target: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # free-form context: quantization, prompt, ...

    def add(self, component: str, reference: str, metrics: Metrics, thresholds: Thresholds) -> dict[str, Any]:
        failures = metrics.check(thresholds)
        row = {
            "component": component,
            "reference": reference,
            "metrics": metrics.to_dict(),
            "thresholds": thresholds.to_dict(),
            "passed": not failures,
            "failures": failures,
        }
        self.rows.append(row)
        return row

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r["passed"] for r in self.gated_rows)

    @property
    def gated_rows(self) -> list[dict[str, Any]]:
        """The rows that decide the verdict (a row with ``"gated": false`` is shown, not judged)."""
        return [r for r in self.rows if r.get("gated", True)]

    @property
    def failures(self) -> list[str]:
        return [f"{r['component']} vs {r['reference']}: {f}" for r in self.gated_rows for f in r["failures"]]

    def to_json(self) -> dict[str, Any]:
        return _finite_or_str({"target": self.target, "passed": self.passed, "info": self.info, "rows": self.rows})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ParityReport:
        rows = [dict(r, metrics=_floats_back(r["metrics"])) for r in d.get("rows", [])]
        return cls(target=d["target"], rows=rows, info=dict(d.get("info", {})))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> ParityReport:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def lines(self) -> list[str]:
        """One console line per row: verdict, component, reference, key numbers, and why it failed."""
        out = []
        for r in self.rows:
            m = Metrics.from_dict(r["metrics"])
            verdict = "INFO" if not r.get("gated", True) else "PASS" if r["passed"] else "FAIL"
            line = f"{verdict}  {r['component']:<16} vs {r['reference']:<16} {m.summary()}"
            if r.get("worst_stage"):
                line += f"  (worst: {r['worst_stage']})"
            if r["failures"]:
                line += ("  (not gated) " if verdict == "INFO" else "  <- ") + "; ".join(r["failures"])
            out.append(line)
        return out
