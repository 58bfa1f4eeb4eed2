"""INT4 quality on held-out text: fp32 vs round-to-nearest vs calibrated (GPTQ) vs QAT, eager and .pte.

    .venv/bin/python bench/quant_quality.py --markdown                  # tiny (trained) preset, ~10 min on 2 cores
    .venv/bin/python bench/quant_quality.py --gptq DIR --qat DIR        # reuse quantized checkpoints
    .venv/bin/python bench/quant_quality.py --from-json bench/results/quant-quality-tiny.json --markdown

For each variant, on two held-out text sets (never used for calibration, QAT or training):
``bench/data/tiny_heldout_{en,zh}.txt`` (the training corpus's held-out split) and
``calibration_data/text/heldout_{zh,en}.txt`` (phone-agent text), teacher-forced through the text decoder in one prefill chunk per window:
perplexity, KL(fp32 || variant) per token and top-1 agreement with fp32, first for the eager model
(torchao's 8da4w numerics: int8 dynamic activations, int4 group-32 weights) and then for the
exported ``model.pte`` run by ExecuTorch's runtime. The two must agree: the table shows both and the
largest perplexity difference. "Recovered" is the share of round-to-nearest's perplexity gap to fp32
that the method closes: (ppl_rtn - ppl_method) / (ppl_rtn - ppl_fp32).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import results
from harness.machine import machine_info
from harness.markdown import markdown_table
from harness.paths import BENCH_DIR, default_results

VARIANTS = ("fp32", "rtn", "gptq", "qat")
LABELS = {"fp32": "fp32", "rtn": "INT4 round-to-nearest", "gptq": "INT4 calibrated (GPTQ)", "qat": "INT4 QAT"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument(
        "--window", type=int, default=128, help="tokens per teacher-forced window (<= the export's max seq len)"
    )
    p.add_argument("--max-windows", type=int, default=64)
    p.add_argument("--gptq", type=Path, default=None, help="existing calibrated checkpoint (default: run calibrate)")
    p.add_argument("--qat", type=Path, default=None, help="existing QAT checkpoint (default: run qat)")
    p.add_argument("--qat-steps", type=int, default=300)
    p.add_argument("--qat-lr", type=float, default=3e-5)
    p.add_argument("--qat-seed", type=int, default=0)
    p.add_argument("--no-pte", action="store_true", help="eager only (skip the four ExecuTorch exports)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--from-json", type=Path, default=None)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data + metrics

DATA = BENCH_DIR / "data"
TEXT_SETS = {
    "corpus": "bench/data/tiny_heldout_{en,zh}.txt (held-out split of the training corpus: Python docs, Chinese reviews)",
    "phone_agent": "calibration_data/text/heldout_{zh,en}.txt (phone-agent instructions and replies)",
}


def text_sets() -> dict[str, dict[str, list[str]]]:
    from autoglm_export.calibration import load_heldout_text

    corpus = {
        lang: [l for l in (DATA / f"tiny_heldout_{lang}.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
        for lang in ("en", "zh")
    }
    return {"corpus": corpus, "phone_agent": load_heldout_text()}


def heldout_windows(
    tokenizer_path: Path, lines_by_lang: dict[str, list[str]], window: int, max_windows: int
) -> list[np.ndarray]:
    """Up to max_windows / 2 windows of ``window`` tokens per language, cut from the joined lines."""
    from autoglm_runtime.tokenizer import Tokenizer

    tok = Tokenizer(tokenizer_path)
    out = []
    for _, lines in sorted(lines_by_lang.items()):
        stream = np.asarray([i for line in lines for i in tok.encode(line + "\n")], dtype=np.int64)
        out += [stream[k * window : (k + 1) * window] for k in range(len(stream) // window)][: max_windows // 2]
    return out


def teacher_forced_logits(backend, windows: list[np.ndarray]) -> list[np.ndarray]:
    logits = []
    for ids in windows:
        backend.reset()
        n = len(ids)
        embeds = backend.token_embedding(ids[None])
        logits.append(
            np.asarray(backend.text_decoder(embeds, np.arange(n), np.tile(np.arange(n), (3, 1))))[0].astype(np.float64)
        )
    backend.reset()
    return logits


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def metrics(logits: list[np.ndarray], windows: list[np.ndarray], reference: list[np.ndarray] | None) -> dict:
    nll, kl, agree, n = 0.0, 0.0, 0, 0
    for i, (lg, ids) in enumerate(zip(logits, windows)):
        logp = _log_softmax(lg[:-1])
        nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
        n += len(ids) - 1
        if reference is not None:
            ref = _log_softmax(reference[i][:-1])
            kl += (np.exp(ref) * (ref - logp)).sum()
            agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
    out = {"ppl": float(np.exp(nll / n)), "tokens": n}
    if reference is not None:
        out.update({"kl_vs_fp32": float(kl / n), "top1_vs_fp32": agree / n})
    return out


# ----------------------------------------------------------------------------- variants


def open_variant(variant: str, preset: str, qckpts: dict):
    """The eager model of one variant (quantized in place), plus the request that exports it."""
    from autoglm_export.pipeline import open_quantized
    from autoglm_export.quantize import QuantRecipe, apply_recipe, qcheckpoint
    from autoglm_export.request import ModelRequest

    request = ModelRequest(preset=preset, quantized_checkpoint=qckpts.get(variant))
    src = request.open()
    if variant == "fp32":
        return src, request
    qc = open_quantized(request, src)
    if qc is not None:
        qcheckpoint.load_into_model(qc, src.model)
    apply_recipe(src.model, QuantRecipe(), fixed=qc.linears if qc is not None else None)
    return src, request


def export_pte(request, variant: str, out: Path, max_seq_len: int) -> Path:
    from autoglm_export.pipeline import export_bundle
    from autoglm_export.quantize import QuantRecipe
    from autoglm_export.targets.executorch.export import ExecuTorchOptions

    recipe = QuantRecipe(linear="fp32", encoder="fp32", embedding="none") if variant == "fp32" else QuantRecipe()
    path, _ = export_bundle(
        "executorch", request, ExecuTorchOptions(out=out, recipe=recipe, max_seq_len=max_seq_len, force=True)
    )
    return path / "model.pte"


def make_checkpoints(args, work: Path) -> tuple[dict[str, Path], dict[str, float]]:
    from autoglm_export.quantize.calibrate import CalibrateOptions, run_calibrate
    from autoglm_export.quantize.qat import QATOptions, run_qat
    from autoglm_export.request import ModelRequest

    out, seconds = {}, {}
    t0 = time.perf_counter()
    out["gptq"] = args.gptq or run_calibrate(ModelRequest(preset=args.preset), CalibrateOptions(out=work / "gptq"))
    seconds["gptq"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out["qat"] = args.qat or run_qat(
        ModelRequest(preset=args.preset),
        QATOptions(out=work / "qat", steps=args.qat_steps, lr=args.qat_lr, seed=args.qat_seed),
    )
    seconds["qat"] = time.perf_counter() - t0
    return out, seconds


def measure(args) -> dict:
    import torch

    from autoglm_export.request import ModelRequest
    from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend
    from autoglm_runtime.backends.torch_backend import TorchBackend

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="quant-quality-"))
    qckpts, qseconds = make_checkpoints(args, work)
    tok = ModelRequest(preset=args.preset).open().tokenizer_path
    sets = {name: heldout_windows(tok, lines, args.window, args.max_windows) for name, lines in text_sets().items()}
    scores: dict[str, dict] = {name: {} for name in sets}
    fp32_eager: dict[str, list] = {}
    for variant in VARIANTS:
        print(f"== {variant}", flush=True)
        src, request = open_variant(variant, args.preset, qckpts)
        eager = {name: teacher_forced_logits(TorchBackend(src.model), w) for name, w in sets.items()}
        del src
        pte = (
            None if args.no_pte else export_pte(request, variant, work / f"android-{variant}", max_seq_len=args.window)
        )
        for name, windows in sets.items():
            if variant == "fp32":
                fp32_eager[name] = eager[name]
            ref = None if variant == "fp32" else fp32_eager[name]
            row = {"eager": metrics(eager[name], windows, ref)}
            if pte is not None:
                got = teacher_forced_logits(ExecuTorchBackend(pte), windows)
                row["pte"] = metrics(got, windows, ref)
                row["pte_vs_eager"] = {
                    "max_abs_logit_diff": float(max(np.abs(a - b).max() for a, b in zip(got, eager[name]))),
                    "pte_size_bytes": pte.stat().st_size,
                }
            scores[name][variant] = row
            print(name, json.dumps(row), flush=True)
    cal = {v: json.loads((qckpts[v] / "quantization_config.json").read_text())["calibration"] for v in ("gptq", "qat")}
    for v in cal.values():
        v.pop("layers", None)
    return {
        "run": results.new_run(["quant_quality"]),
        "date": results.utc_now(),
        "machine": machine_info(args.threads),
        "preset": args.preset,
        "window": args.window,
        "text_sets": TEXT_SETS,
        "windows": {name: len(w) for name, w in sets.items()},
        "results": scores,
        "checkpoints": cal,
        "checkpoint_seconds": qseconds,
        "qat": {"steps": args.qat_steps, "lr": args.qat_lr, "seed": args.qat_seed},
    }


# ----------------------------------------------------------------------------- report


def recovered(res: dict, where: str, variant: str) -> float | None:
    fp, rtn, m = (res[v][where]["ppl"] for v in ("fp32", "rtn", variant))
    return (rtn - m) / (rtn - fp) if rtn != fp else None


def render(data: dict) -> str:
    lines = [
        f"### INT4 quality on held-out text ({data['preset']}, trained)",
        "",
        f"Measured {data['date']} with `{data['run']['command']}`.",
        "",
        (
            f"Teacher-forced windows of {data['window']} tokens; INT4 = torchao 8da4w (int8 dynamic activations, "
            "int4 weights in groups of 32, lm_head included; token embedding int8; vision/audio int8 per channel). "
            '"run by": the eager model, or the exported `model.pte` run by ExecuTorch\'s runtime.'
        ),
        "",
    ]
    for name, res in data["results"].items():
        lines += [
            (
                f"**{name}**: {data['text_sets'][name]}, {data['windows'][name]} windows "
                f"({res['fp32']['eager']['tokens']} scored tokens)."
            ),
            "",
            render_table(res),
            "",
        ]
    g, q = data["checkpoints"]["gptq"], data["checkpoints"]["qat"]
    lines += [
        "Targets: calibration recovers >= 50% of round-to-nearest's perplexity gap, QAT >= 70%.",
        "",
        (
            f"GPTQ: {g['samples']} samples ({g['with_image']} with a screenshot, {g['with_audio']} with speech), "
            f"{g['tokens']} tokens, {g['seconds']:.0f} s; summed layer output MSE {g['summed_output_mse']:.4g} vs "
            f"round-to-nearest {g['summed_rtn_output_mse']:.4g}."
        ),
        (
            f"QAT: {q['steps']} steps, lr {q['lr']}, seed {q['seed']}, {q['samples']} samples, distillation loss "
            f"{q['loss_first']:.4f} -> {q['loss_last']:.4f}, {q['seconds']:.0f} s."
        ),
    ]
    return "\n".join(lines)


def render_table(res: dict) -> str:
    rows = []
    for v in VARIANTS:
        r = res[v]
        for where in ("eager", "pte"):
            if where not in r:
                continue
            m = r[where]
            rec = recovered(res, where, v) if v in ("gptq", "qat") else None
            rows.append(
                [
                    LABELS[v],
                    "eager" if where == "eager" else "model.pte (ExecuTorch)",
                    f"{m['ppl']:.3f}",
                    f"{m['kl_vs_fp32']:.4f}" if "kl_vs_fp32" in m else "—",
                    f"{100 * m['top1_vs_fp32']:.1f}%" if "top1_vs_fp32" in m else "—",
                    f"{100 * rec:.0f}%" if rec is not None else "—",
                ]
            )
    table = markdown_table(
        ["variant", "run by", "perplexity", "KL vs fp32 (nats/token)", "top-1 vs fp32", "recovered of RTN's gap"], rows
    )
    gap = res["rtn"]["eager"]["ppl"] - res["fp32"]["eager"]["ppl"]
    table += f"\n\nRound-to-nearest's perplexity gap (eager): {gap:+.3f}."
    if "pte" in res["fp32"]:
        worst = max(abs(res[v]["pte"]["ppl"] - res[v]["eager"]["ppl"]) for v in VARIANTS)
        table += (
            f" Eager vs `.pte`: largest perplexity difference {worst:.4f}, largest logit difference "
            f"{max(res[v]['pte_vs_eager']['max_abs_logit_diff'] for v in VARIANTS):.2e}."
        )
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = json.loads(args.from_json.read_text()) if args.from_json else measure(args)
    out = args.out or default_results("quant-quality", data["preset"])
    results.publish(args, data, out, f"quant_quality:{data['preset']}", render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
