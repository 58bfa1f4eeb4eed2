"""One parity report across bundles: ``parity-report.md`` plus an HTML page with, per backend, a plot
of the decoder's logit error at every position (prefill then decode steps) against both references.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from autoglm_runtime.bundle import PARITY_NAME, open_bundle
from autoglm_runtime.errors import BundleError
from autoglm_runtime.parity import ParityReport

from ..errors import ExportError


@dataclass
class BundleResult:
    path: Path
    target: str | None
    report: ParityReport | None
    problem: str | None = None  # missing bundle, bad hashes, no parity.json

    @property
    def passed(self) -> bool:
        return self.problem is None and self.report is not None and self.report.passed


def read_bundle(path: Path) -> BundleResult:
    try:
        bundle = open_bundle(path)  # hashes first: a report on a modified bundle means nothing
    except BundleError as exc:
        return BundleResult(path, None, None, str(exc))
    if not bundle.has(PARITY_NAME):
        return BundleResult(path, bundle.target, None, f"{path}: no {PARITY_NAME} (exported with --no-validate?)")
    return BundleResult(path, bundle.target, ParityReport.read(bundle.path(PARITY_NAME)))


def _verdict(row: dict) -> str:
    if not row.get("gated", True):
        return "not gated" + (" (" + "; ".join(row["failures"]) + ")" if row["failures"] else "")
    return "PASS" if row["passed"] else "FAIL: " + "; ".join(row["failures"])


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown(results: list[BundleResult]) -> str:
    lines = ["# Parity report", ""]
    verdict = "PASS" if results and all(r.passed for r in results) else "FAIL"
    lines += [f"Overall: **{verdict}**", ""]
    for r in results:
        lines.append(f"## {r.target or '?'}: `{r.path}`")
        lines.append("")
        if r.problem:
            lines += [f"**FAIL**: {r.problem}", ""]
            continue
        lines.append("| component | reference | quant | cosine | max abs / scale | top-1 | mean KL | verdict |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in r.report.rows:
            m = row["metrics"]
            lines.append(
                f"| {row['component']} | {row['reference']} | {row.get('quant_kind', '')} | {_fmt(m.get('cosine'), '.6f')} | "
                f"{_fmt(m.get('rel_max_abs'), '.2e')} | {_fmt(m.get('top1_agreement'), '.1%')} | {_fmt(m.get('kl_mean'), '.2e')} | "
                f"{_verdict(row)} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def _plot_png(result: BundleResult) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result.report.rows if row.get("per_position")]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for row in rows:
        pp = row["per_position"]
        label = f"vs {row['reference']}"
        axes[0].semilogy([max(v, 1e-12) for v in pp["rel_max_abs"]], label=label, lw=1)
        axes[1].semilogy([max(v, 1e-16) for v in pp["kl"]], label=label, lw=1)
    axes[0].set(title=f"{result.target}: max |Δlogit| / logit scale", xlabel="position (probes concatenated)")
    axes[1].set(title=f"{result.target}: KL(ref || exported), nats", xlabel="position (probes concatenated)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def html_page(results: list[BundleResult], md: str) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>autoglm-export parity report</title>",
        "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto}pre{background:#f5f5f5;padding:1em;"
        "overflow-x:auto}</style>",
        "<h1>autoglm-export parity report</h1>",
    ]
    for r in results:
        parts.append(f"<h2>{html.escape(r.target or '?')}: {html.escape(str(r.path))}</h2>")
        if r.problem:
            parts.append(f"<p><b>FAIL</b>: {html.escape(r.problem)}</p>")
            continue
        png = _plot_png(r)
        if png:
            parts.append(
                f"<img alt='per-position logit error, {html.escape(r.target)}' src='data:image/png;base64,{png}'>"
            )
    parts.append(f"<h2>Numbers</h2><pre>{html.escape(md)}</pre>")
    return "\n".join(parts)


def write_report(bundles: list[Path], out_md: Path) -> list[BundleResult]:
    if not out_md.parent.is_dir():  # before reading the bundles: a typo in --out should not cost a run
        raise ExportError(f"--out {out_md}: the folder {out_md.parent} does not exist")
    results = [read_bundle(Path(b)) for b in bundles]
    md = markdown(results)
    out_md.write_text(md, encoding="utf-8")
    out_md.with_suffix(".html").write_text(html_page(results, md), encoding="utf-8")
    return results
