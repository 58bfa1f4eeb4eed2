"""ExecuTorch (Android) benchmark: export a preset with the real pipeline, then time the .pte against eager PyTorch.

    .venv/bin/python bench/android.py --preset small --out bench/results/android-small.json [--markdown]

In one run:

1. ``export_bundle("executorch", ...)`` (quantize with the recipe, swap the decoder attention for
   ExecuTorch's ``llama::update_cache`` + ``llama::custom_sdpa``, lower with XNNPACK, emit ``model.pte``)
   in a subprocess, so its wall time and peak RSS are its own (``harness.bundles``).
   Validation is off: presets without a tokenizer (``small``) cannot build parity probes.
2. Size: ``model.pte`` bytes, parameters per component (the manifest's ``model.parameters``), bits per
   weight, delegation per method (the manifest), and an estimate of the .pte from the recipe (checks
   the byte model the bandwidth floor uses; ``android_floor``).
3. Through ``ExecuTorchBackend``: prefill tokens/s (random embeddings, chunks of ``--max-seq-len``,
   fresh cache each run), decode ms/token (one token per step, with and without the
   ``token_embedding`` call), vision and audio encoder ms (``harness.backend_timing``).
4. The same through ``TorchBackend`` on the eager model: fp32, then quantized in place with the same
   recipe, then quantized with the ExecuTorch attention kernels (what was exported).
5. The decode bandwidth floor of the .pte (bytes of weights one decode step reads, in the packed
   formats XNNPACK runs, / the bandwidth measured in this run) and decode / floor (the peer: bench/android_peer.py, same run).
6. Where decode time goes: the decoder's quantized linears alone lowered as one static seq-1 program
   (``--no-linears-probe`` skips it), an ETDump of decode steps (``--no-profile``), and ``--rounds``
   paired rounds of decode + linears + bandwidth probes back to back (this VM's speed drifts);
   ``android_probes``, ``android_profile``.
7. With ``--with-onnx``: then the ONNX Runtime leg (``bench/onnx_runtime.py``) in the same process, with
   the same preset, threads, token counts and run id, and its own results JSON and section.

The tables and the BENCHMARKS.md section: ``android_report``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import onnx_runtime
from android_floor import TARGET_RATIO_TO_FLOOR, byte_model, kv_read_bytes
from android_probes import linears_probe, paired_rounds
from android_profile import profile_decode_step
from android_report import render
from harness import results
from harness.backend_timing import measure_backend, model_workload
from harness.bundles import ExportFailed, add_worker_flag, dispatch, export_or_reuse
from harness.load import LoadMonitor, wait_quiet
from harness.machine import machine_info, memory_bandwidth
from harness.memory import current_rss_bytes, peak_rss_bytes
from harness.paths import default_results, repo_relative
from harness.units import GB


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="model preset (tiny, small, ...)")
    p.add_argument(
        "--quant", default="8da4w", choices=["8da4w", "8da8w", "fp32"], help="text decoder linears (lm_head included)"
    )
    p.add_argument(
        "--quant-encoder", default="8da8w", choices=["8da4w", "8da8w", "fp32"], help="vision and audio tower linears"
    )
    p.add_argument("--quant-embedding", default="8", choices=["4", "8", "none"], help="token embedding")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size")
    p.add_argument("--max-seq-len", type=int, default=128, help="longest text_decoder chunk of the export")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads and the ExecuTorch threadpool size")
    p.add_argument("--prefill-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--runs", type=int, default=5, help="timed runs for prefill and the encoders (median reported)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="paired rounds at the end: decode, linears alone and the bandwidth probes interleaved (drift check)",
    )
    p.add_argument(
        "--slow-budget-s",
        type=float,
        default=20.0,
        help="an eager variant whose decode would take longer than this gets fewer decode steps (recorded)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before timing, wait up to this long for other processes to use < 0.25 cores over 10 s (shared machine)",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="measure this existing bundle instead of exporting (export time and RSS are then not measured)",
    )
    p.add_argument(
        "--keep-bundle", type=Path, default=None, help="export into this directory and keep it (default: a temp dir)"
    )
    p.add_argument("--no-eager", action="store_true", help="skip the eager PyTorch comparisons")
    p.add_argument("--no-profile", action="store_true", help="skip the ETDump profile of decode steps")
    p.add_argument(
        "--no-linears-probe",
        action="store_true",
        help="skip lowering and timing the decoder's linears alone (about 2 min of lowering)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON result path (default bench/results/android-<preset>.json)"
    )
    p.add_argument("--markdown", action="store_true", help="write/replace this run's section in BENCHMARKS.md")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the tables (and with --markdown the BENCHMARKS.md section) from a results JSON; measures nothing",
    )
    p.add_argument(
        "--with-onnx",
        action="store_true",
        help="after the ExecuTorch measurement, run the ONNX Runtime leg (bench/onnx_runtime.py) in the same run",
    )
    p.add_argument(
        "--onnx-out", type=Path, default=None, help="ONNX leg's JSON (default bench/results/onnx-<preset>.json)"
    )
    p.add_argument(
        "--onnx-bundle", type=Path, default=None, help="ONNX leg: time this existing ONNX bundle instead of exporting"
    )
    p.add_argument("--onnx-block-size", type=int, default=32, help="ONNX leg: int4 block size (MatMulNBits)")
    add_worker_flag(p)
    return p.parse_args(argv)


def recipe_of(args):
    from autoglm_export.quantize import QuantRecipe

    return QuantRecipe(
        linear=args.quant, group_size=args.group_size, encoder=args.quant_encoder, embedding=args.quant_embedding
    )


def request_and_options(out: Path, args: argparse.Namespace) -> tuple:
    """What the export child runs: the preset, this recipe, validation off."""
    from autoglm_export.request import ModelRequest
    from autoglm_export.targets.executorch.export import ExecuTorchOptions

    options = ExecuTorchOptions(
        out=out, recipe=recipe_of(args), max_seq_len=args.max_seq_len, validate=False, force=True
    )
    return ModelRequest(preset=args.preset), options


def main() -> int:
    args = parse_args()
    done, console = dispatch(args, "executorch", request_and_options, render)
    if console is None:
        return done
    out = args.out or default_results("android", args.preset)
    out_str = repo_relative(out)
    onnx_args = onnx_leg_args(args) if args.with_onnx else None
    run = results.new_run(["android", "onnx"] if onnx_args else ["android"])
    run["outputs"] = {"android": out_str, **({"onnx": repo_relative(onnx_args.out)} if onnx_args else {})}
    recipe = recipe_of(args)  # fail on a bad recipe before the export
    detail = f"{args.quant}, group {args.group_size}"
    try:
        with export_or_reuse(
            args.bundle,
            args.keep_bundle,
            script=Path(__file__),
            args=args,
            what="ExecuTorch",
            detail=detail,
            console=console,
        ) as bundle:
            quiet = wait_quiet(args.wait_quiet, console) if args.wait_quiet > 0 else None
            load = LoadMonitor()  # the timing part's load
            rc = measure_and_report(args, bundle.path, bundle.export, load, out, out_str, recipe, console, quiet, run)
    except ExportFailed:
        return 1
    if rc != 0 or onnx_args is None:
        return rc
    return run_onnx_leg(onnx_args, run, json.loads(out.read_text()), console)


def onnx_leg_args(args) -> argparse.Namespace:
    """bench/onnx_runtime.py's arguments for the ONNX leg: this run's preset, threads, token counts, chunk, rounds."""
    out = args.onnx_out or default_results("onnx", args.preset)
    argv = ["--preset", args.preset, "--threads", str(args.threads), "--max-seq-len", str(args.max_seq_len)]
    argv += ["--prefill-tokens", str(args.prefill_tokens), "--decode-tokens", str(args.decode_tokens)]
    argv += ["--warmup", str(args.warmup), "--runs", str(args.runs), "--rounds", str(args.rounds)]
    argv += ["--block-size", str(args.onnx_block_size), "--wait-quiet", str(args.wait_quiet), "--out", str(out)]
    if args.no_profile:
        argv.append("--no-profile")
    if args.onnx_bundle is not None:
        argv += ["--bundle", str(args.onnx_bundle)]
    if args.markdown:
        argv.append("--markdown")
    return onnx_runtime.parse_args(argv)


def run_onnx_leg(onnx_args: argparse.Namespace, run: dict, android: dict, console) -> int:
    """The ONNX Runtime leg of this run, in this process."""
    gc.collect()  # the ExecuTorch leg's programs and eager model are garbage by now: free them first
    console.rule("ONNX Runtime leg (same run)")
    return onnx_runtime.run(onnx_args, console, run=run, executorch=onnx_runtime.executorch_summary(android))


def time_pte(pte: Path, threads: int, kw: dict, console):
    """The .pte through ExecuTorchBackend: load time and RSS, then ``measure_backend``."""
    from executorch.extension.pybindings import portable_lib

    from autoglm_runtime.backends.executorch_backend import ExecuTorchBackend

    portable_lib._unsafe_reset_threadpool(threads)
    et_threads = portable_lib._threadpool_get_thread_count()
    console.print(f"ExecuTorch threadpool: {et_threads} threads; measuring {pte} ({pte.stat().st_size / 1e6:.1f} MB)")
    rss0 = current_rss_bytes()
    t0 = time.perf_counter()
    et = ExecuTorchBackend(pte)
    for name in ("token_embedding", "text_decoder", "vision_encoder", "audio_encoder", "reset_cache"):
        if et.program.has(name):
            et.program.method(name)
    load_s = time.perf_counter() - t0
    rss_loaded = current_rss_bytes()
    result = measure_backend(et, label="ExecuTorch .pte", budget_s=1e9, **kw)
    result["load_s"] = load_s
    result["rss_after_load_bytes"] = rss_loaded - rss0
    result["rss_after_runs_bytes"] = current_rss_bytes() - rss0
    return et, result, et_threads


def time_eager_and_linears(args, model, recipe, hidden: int, kw: dict, console) -> dict:
    """Eager fp32, then quantize in place (the byte model needs the per-layer schemes), the linears-alone
    probe on the quantized weights, eager quantized, and eager quantized with the ExecuTorch attention."""
    import torch

    from autoglm_export.quantize import apply_recipe
    from autoglm_runtime.backends.torch_backend import TorchBackend

    eager: dict[str, dict] = {}
    if not args.no_eager:
        console.print("eager PyTorch:")
        with torch.inference_mode():
            eager["fp32"] = measure_backend(
                TorchBackend(model), label="eager fp32", budget_s=args.slow_budget_s * 3, **kw
            )
    t0 = time.perf_counter()
    quant_report = apply_recipe(model, recipe)
    quantize_s = time.perf_counter() - t0
    probe, probe_run = None, None
    if not args.no_linears_probe:
        console.print("lowering the decoder's linears alone (seq 1, static) for the linears-only probe")
        try:
            probe, probe_run = linears_probe(model, hidden)
            if "error" in probe:
                console.print(f"[yellow]linears probe skipped: {probe['error']}[/yellow]")
            else:
                console.print(
                    f"  linears alone: {probe['ms']['median']:.2f} ms ({probe['subgraphs']} XNNPACK subgraphs)"
                )
        except Exception as e:  # a failed probe is recorded, not fatal
            probe = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]linears probe failed: {probe['error']}[/yellow]")
        gc.collect()
    if not args.no_eager:
        from autoglm_export.targets.executorch.attention import use_executorch_attention

        variants = (
            ("quantized", f"eager {args.quant}", None),
            ("quantized_et_attention", f"eager {args.quant} + ExecuTorch attention", use_executorch_attention),
        )
        for key, label, prepare in variants:
            try:
                if prepare is not None:
                    prepare(model)
                with torch.inference_mode():
                    eager[key] = measure_backend(TorchBackend(model), label=label, budget_s=args.slow_budget_s, **kw)
            except Exception as e:  # a failed probe is recorded, not fatal
                eager[key] = {"label": label, "error": f"{type(e).__name__}: {e}"}
                console.print(f"[yellow]{label} failed: {eager[key]['error']}[/yellow]")
    return {
        "eager": eager,
        "quant_report": quant_report,
        "quantize_s": quantize_s,
        "probe": probe,
        "probe_run": probe_run,
    }


def measure_and_report(
    args,
    bundle: Path,
    export: dict | None,
    load,
    out: Path,
    out_str: str,
    recipe,
    console,
    quiet: dict | None,
    run: dict,
) -> int:
    import torch

    from autoglm_export.source import open_source

    manifest = json.loads((bundle / "manifest.json").read_text())
    pte = bundle / manifest.get("program", "model.pte")
    pte_bytes = pte.stat().st_size
    params = dict(manifest["model"]["parameters"])
    total_params = sum(params.values())
    torch.set_num_threads(args.threads)

    # The eager model: the byte model needs its layer shapes, the eager runs need the model itself.
    model = open_source(preset=args.preset).model.eval()
    cfg, shape = model.cfg, model.shape
    hidden = cfg.text.hidden_size
    n_prefill, n_decode = args.prefill_tokens, args.decode_tokens
    if n_prefill + n_decode > shape.max_context:
        console.print(f"[red]--prefill-tokens + --decode-tokens must fit max_context {shape.max_context}[/red]")
        return 2
    kw = model_workload(args, model, console)

    et, pte_result, et_threads = time_pte(pte, args.threads, kw, console)
    gc.collect()
    profile = None
    if not args.no_profile:  # a second, ETDump-enabled load of the program
        try:
            profile = profile_decode_step(pte, hidden, n_prefill + n_decode // 2)
        except Exception as e:  # a profiling failure must not cost the benchmark
            profile = {"error": f"{type(e).__name__}: {e}"}
            console.print(f"[yellow]ETDump profile failed: {profile['error']}[/yellow]")
        gc.collect()
    eager = time_eager_and_linears(args, model, recipe, hidden, kw, console)

    bm = byte_model(model, eager["quant_report"].layers, args.group_size, args.quant_embedding)
    peak_rss = peak_rss_bytes()  # before the bandwidth probe's 1 GiB array
    console.print("paired rounds: decode, linears alone, bandwidth probes, interleaved")
    rounds = paired_rounds(et, eager["probe_run"], args.threads, n_prefill, bm, rounds=args.rounds)
    bandwidth = memory_bandwidth(args.threads)
    load_info = load.stop()

    decode_ms = pte_result["decode"]["ms_per_token_with_embedding"]["median"]
    decode_only_ms = pte_result["decode"]["ms_per_token_decoder_only"]["median"]
    per_token = bm["text"]["decode_read_bytes"]
    floor_ms = per_token / (bandwidth["best_gbps"] * GB) * 1e3
    mean_pos = n_prefill + n_decode / 2
    encoders_est = sum(bm[c]["stored_bytes"] for c in ("vision", "audio") if c in bm)
    toolchain = manifest.get("toolchain", {})
    machine = {
        **machine_info(args.threads),
        "executorch_threads": et_threads,
        "executorch": toolchain.get("executorch"),
        "torchao": toolchain.get("torchao"),
    }
    record = {
        **results.header(
            "android", args, out_str, machine=machine, load=load_info, run=run, after_export=True, wait_quiet=quiet
        ),
        "recipe": recipe.to_dict(),
        "export": None
        if export is None
        else {
            **{k: v for k, v in export.items() if k != "log"},
            "stage_seconds": manifest.get("stage_seconds"),
            "max_seq_len": manifest.get("max_seq_len"),
            "custom_ops": manifest.get("custom_ops"),
        },
        "model": {
            "preset": args.preset,
            "max_context": shape.max_context,
            "image_hw": list(shape.image_hw),
            "image_tokens": model.vision.num_tokens,
            "audio_frames": shape.audio_frames if model.audio else None,
            "audio_tokens": model.audio.num_tokens if model.audio else None,
            "params": {**params, "total": total_params},
        },
        "pte": {
            "bytes": pte_bytes,
            "bits_per_weight": 8 * pte_bytes / total_params,
            "estimated_bytes": bm["total_stored_bytes"],
            "estimate_error": pte_bytes / bm["total_stored_bytes"] - 1,
            "estimated_encoder_bytes": encoders_est,
            "text_only_estimate_bytes": pte_bytes - encoders_est,
            "byte_model": bm,
            "delegation": manifest.get("delegation"),
            "quantization": manifest.get("quantization"),
        },
        "executorch": pte_result,
        "eager": eager["eager"],
        "eager_quantize_s": eager["quantize_s"],
        "floor": {
            "decode_read_bytes": per_token,
            "decode_read_linear_bytes": bm["text"]["decode_read_linear_bytes"],
            "bandwidth_gbps": bandwidth["best_gbps"],
            "floor_ms": floor_ms,
            "ratio_to_floor": decode_ms / floor_ms,
            "ratio_to_floor_decoder_only": decode_only_ms / floor_ms,
            "target_ratio": TARGET_RATIO_TO_FLOOR,
            "kv_read_bytes_at_mean_position": kv_read_bytes(cfg, mean_pos),
            "mean_position": mean_pos,
        },
        "profile": profile,
        "linears_probe": eager["probe"],
        "paired_rounds": rounds,
        "memory": {"peak_rss_bytes": peak_rss},
        "bandwidth": bandwidth,
    }
    results.write_json(out, record)
    console.print(f"wrote {out}")
    return render(record, args.markdown, console)


if __name__ == "__main__":
    sys.exit(main())
