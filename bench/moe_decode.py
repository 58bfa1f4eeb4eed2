"""MoE decode against a dense decoder with the same active parameters, on ONNX Runtime, in one run.

    .venv/bin/python bench/moe_decode.py [--moe-bundle DIR --dense-bundle DIR] [--rounds 6] [--markdown]

1. ``onnx`` bundles (int4, block 32, validation off) of the ``small-moe`` preset (a Glm4vMoe decoder at
   ``small``'s widths: 16 routed experts of 704 run top-3, plus one shared expert; each layer's routed
   experts one ``QMoE`` node) and of ``small-moe-dense`` (the same decoder with a dense FFN of 2816 =
   4 x 704: the same active parameters per token). Each exported in a subprocess (``harness.bundles``),
   or given with ``--moe-bundle`` / ``--dense-bundle``.
2. ``--rounds`` rounds, each the MoE bundle then the dense one (ABAB...), both loaded in this process with the
   same onnxruntime threads and timed by ``harness.backend_timing.measure_backend`` (prefill, greedy decode
   with the ``token_embedding`` call, the same token counts).
   A third leg (``--no-all-experts`` skips it): the same MoE preset exported with every expert in the graph,
   as before QMoE (the eager layer's dense mix; the benchmark's export child turns QMoE off), to show what
   top-k dispatch saves.
3. Per round: decode ms/token of each and MoE / dense; median and min-max over the rounds; the decoder
   graphs' weight bytes, all of them and what one decode step reads (the chosen experts only).

Benchmarks assert nothing: the target (MoE decode <= 1.3x the dense one) is reported, not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path

from harness import results
from harness.backend_timing import measure_backend, workload
from harness.bundles import ExportFailed, add_worker_flag, dispatch, export_or_reuse
from harness.load import LoadMonitor, describe_load, wait_quiet
from harness.machine import machine_info
from harness.markdown import machine_line, markdown_table, section_head, span, update_markdown_section
from harness.paths import default_results, repo_relative
from harness.units import GB

TARGET = 1.3  # issue 13: MoE decode ms/token <= 1.3x the dense model's with the same active parameters


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small-moe", help="the MoE preset")
    p.add_argument("--dense-preset", default="small-moe-dense", help="its dense counterpart (same active parameters)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--max-seq-len", type=int, default=128, help="prefill chunk")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--prefill-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="timed prefill / encoder runs per round (median)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--moe-bundle", type=Path, default=None, help="time this existing MoE bundle (no export)")
    p.add_argument("--dense-bundle", type=Path, default=None, help="time this existing dense bundle (no export)")
    p.add_argument("--all-experts-bundle", type=Path, default=None, help="the every-expert MoE bundle (no export)")
    p.add_argument("--no-all-experts", action="store_true", help="skip the every-expert MoE leg")
    p.add_argument("--all-experts", action="store_true", help=argparse.SUPPRESS)  # the export child: QMoE off
    p.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/moe-<preset>.json)")
    p.add_argument("--markdown", action="store_true", help="write/replace this run's section in BENCHMARKS.md")
    p.add_argument("--from-json", type=Path, default=None, help="re-render from a results JSON; measures nothing")
    add_worker_flag(p)
    return p.parse_args(argv)


def request_and_options(out: Path, args: argparse.Namespace) -> tuple:
    """The export child: ``args.preset`` (the MoE or the dense preset), int4, validation off."""
    from autoglm_export.request import ModelRequest
    from autoglm_export.targets.onnx import experts
    from autoglm_export.targets.onnx.export import OnnxOptions
    from autoglm_export.targets.onnx.recipe import OnnxQuant

    if args.all_experts:  # the graph as before QMoE: every expert runs (benchmark only)
        experts.sparse_eligible = lambda moe, block_size: False

    options = OnnxOptions(
        out=out, quant=OnnxQuant("int4", args.block_size), max_seq_len=args.max_seq_len, validate=False, force=True
    )
    return ModelRequest(preset=args.preset), options


def decoder_bytes(bundle: Path) -> dict:
    """The text decoder graph's initializer bytes: all of them, and what one decode step reads (of each QMoE
    node's expert weights only its top-k experts' share)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(bundle / "text_decoder.onnx"), load_external_data=False)
    sizes = {i.name: _tensor_bytes(i) for i in model.graph.initializer}
    total = sum(sizes.values())
    idle = 0
    for node in model.graph.node:
        if node.op_type == "QMoE":
            k = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "k")
            experts = next(i for i in model.graph.initializer if i.name == node.input[2]).dims[0]
            weights = sum(sizes[n] for n in node.input[2:7] if n)
            idle += weights * (experts - k) / experts
    return {"all": total, "per_decode_step": total - idle}


def _tensor_bytes(t) -> int:
    import numpy as np
    from onnx import helper

    return int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def main() -> int:
    args = parse_args()
    done, console = dispatch(args, "onnx", request_and_options, render_console)
    if console is None:
        return done
    out = args.out or default_results("moe", args.preset)
    legs = {
        "moe": (args.moe_bundle, args),
        "dense": (args.dense_bundle, argparse.Namespace(**{**vars(args), "preset": args.dense_preset})),
    }
    if not args.no_all_experts:
        legs["all_experts"] = (args.all_experts_bundle, argparse.Namespace(**{**vars(args), "all_experts": True}))
    try:
        with contextlib.ExitStack() as stack:
            bundles = {
                label: stack.enter_context(
                    export_or_reuse(
                        existing, None, script=Path(__file__), args=a, what="ONNX", detail=label, console=console
                    )
                )
                for label, (existing, a) in legs.items()
            }
            quiet = wait_quiet(args.wait_quiet, console) if args.wait_quiet > 0 else None
            r = measure(args, bundles, console)
            r = {**results.header("moe_decode", args, repo_relative(out), **r.pop("header"), wait_quiet=quiet), **r}
    except ExportFailed:
        return 1
    results.write_json(out, r)
    render_console(r, args.markdown, console)
    return 0


def measure(args, bundles: dict, console) -> dict:
    from autoglm_runtime.backends.onnx_backend import OnnxBackend

    backends = {}
    for label, bundle in bundles.items():
        paths = {c: bundle.path / m["file"] for c, m in _manifest(bundle.path)["models"].items()}
        backends[label] = OnnxBackend(paths, threads=args.threads)
    dec = backends["moe"].models["text_decoder"]
    kw = workload(
        args,
        hidden=dec.inputs["inputs_embeds"].shape[-1],
        pixel_shape=tuple(_manifest(bundles["moe"].path)["models"]["vision_encoder"]["inputs"][0]["shape"]),
        mel_shape=None,
        console=console,
    )
    load = LoadMonitor()
    rounds = []
    for i in range(args.rounds):
        console.print(f"round {i + 1}/{args.rounds}")
        rounds.append({label: measure_backend(b, label=label, budget_s=120.0, **kw) for label, b in backends.items()})
    return {
        "header": {"machine": machine_info(args.threads), "load": load.stop(), "after_export": True},
        "presets": {"moe": args.preset, "dense": args.dense_preset},
        "exports": {label: b.export for label, b in bundles.items()},
        "manifests": {label: _model_summary(b.path) for label, b in bundles.items()},
        "decoder_bytes": {label: decoder_bytes(b.path) for label, b in bundles.items()},
        "rounds": rounds,
    }


def _manifest(bundle: Path) -> dict:
    import json

    return json.loads((bundle / "manifest.json").read_text())


def _model_summary(bundle: Path) -> dict:
    m = _manifest(bundle)
    return {"text": m["model"]["text"], "qmoe_layers": m["models"]["text_decoder"].get("qmoe_layers", 0)}


def _decode_ms(r: dict) -> float:
    return r["decode"]["ms_per_token_with_embedding"]["median"]


def _per_round(r: dict, label: str, get) -> list[float]:
    return [get(x[label]) / get(x["dense"]) for x in r["rounds"]]


def render(r: dict) -> str:
    legs = [label for label in ("moe", "all_experts", "dense") if label in r["rounds"][0]]
    names = {"moe": "MoE (QMoE, top-k)", "all_experts": "MoE, every expert (before QMoE)", "dense": "dense"}
    b = r["decoder_bytes"]

    def prefill(x):
        return x["prefill"]["tokens_per_s"]

    rows = []
    for label in legs:
        decode = [_decode_ms(x[label]) for x in r["rounds"]]
        rows.append(
            [
                names[label],
                f"{statistics.median(decode):.2f} ({span(decode, '{:.2f}')})",
                "1.00x" if label == "dense" else span_median(_per_round(r, label, _decode_ms)),
                f"{statistics.median([prefill(x[label]) for x in r['rounds']]):.0f}",
                f"{b[label]['all'] / GB:.3f} / {b[label]['per_decode_step'] / GB:.3f} GB",
                str(r["manifests"][label]["qmoe_layers"]),
            ]
        )
    ratio = _per_round(r, "moe", _decode_ms)
    moe_text = r["manifests"]["moe"]["text"]
    names = {**names, "moe": "MoE", "all_experts": "every-expert MoE"}  # in the text
    verdict = "met" if statistics.median(ratio) <= TARGET else "not met"
    lines = [
        *section_head(f"## MoE decode vs dense with the same active parameters, preset `{r['presets']['moe']}`", r),
        machine_line(r["machine"], "onnxruntime (CPUExecutionProvider)"),
        f"- Load while timing: {describe_load(r['load'])}",
        f"- `{r['presets']['moe']}`: {moe_text['moe']['experts']} routed experts top-{moe_text['moe']['top_k']}"
        f" + {moe_text['moe']['shared']} shared, in {r['manifests']['moe']['qmoe_layers']} QMoE layers;"
        f" `{r['presets']['dense']}`: the same decoder with a dense FFN of the same active width"
        + (
            f"; every-expert MoE: `{r['presets']['moe']}` exported with QMoE off (its graph before QMoE)"
            if "all_experts" in legs
            else ""
        )
        + ". All int4 (block 32), exported with validation off, timed in the same process with the same threads",
        f"- {len(r['rounds'])} rounds, each timing the bundles in this order: "
        + ", ".join(names[label] for label in legs)
        + "; median (min-max) over the rounds; ratios per round against the dense bundle",
        "",
        markdown_table(
            [
                "",
                "decode ms/token, median (min-max)",
                "decode / dense, per round",
                "prefill tokens/s (64)",
                "decoder weights: all / read per step",
                "QMoE layers",
            ],
            rows,
        ),
        "",
        f"- **MoE / dense decode (target <= {TARGET}x):** {statistics.median(ratio):.2f}x median: {verdict}."
        f" One step reads {b['moe']['per_decode_step'] / b['dense']['per_decode_step']:.2f}x the dense"
        " decoder's bytes (attention, shared expert, the chosen experts, lm_head).",
        f"- Prefill (64 tokens): MoE {statistics.median(_per_round(r, 'moe', prefill)):.2f}x the dense"
        " tokens/s: the tokens of a chunk spread over all experts, so a prefill reads every expert.",
        "- Only the ONNX graph dispatches top-k; ExecuTorch and Core ML bundles still run every expert"
        ' (README, "The four components").',
    ]
    return "\n".join(lines)


def span_median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({span(values, '{:.2f}x')})"


def render_console(r: dict, markdown: bool, console) -> int:
    body = render(r)
    console.print(body, markup=False, highlight=False)
    if markdown:
        update_markdown_section(f"moe:{r['presets']['moe']}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
